/*
 * ops.c: the table of the worker's ops, one row each (see ops.h). The worker
 * loop dispatches every request through it.
 */
#include "ops.h"
#include "message.h"

#include <stddef.h>

static const struct op ops[] = {
	{ "ping", op_ping },
	{ "exec", op_exec },
	{ "read_file", op_read_file },
	{ "write_file", op_write_file },
	{ "syscall", op_syscall },
	{ "background", op_background },
	{ "job_wait", op_job_wait },
	{ "job_kill", op_job_kill },
	{ "spawn", op_spawn },
	{ "pty_open", op_pty_open },
	{ "pty_write", op_pty_write },
	{ "pty_resize", op_pty_resize },
};

const struct op *ops_find(const struct request *rq)
{
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (req_op_is(rq, ops[i].name))
			return &ops[i];
	return NULL;
}
