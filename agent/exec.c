/*
 * exec.c: the exec op. Runs `sh -c cmd` (process.c) and streams its stdout
 * and stderr as partial replies until the shell exits, then replies with its
 * exit code.
 */
#define _GNU_SOURCE
#include "ops.h"
#include "process.h"
#include "worker.h"

#include <stdlib.h>

void op_exec(struct worker *w, const struct mp_value *req)
{
	char *cmd = arg_cstr(&w->conn, req, "exec", "cmd");
	struct child ch;
	struct mp_map m;
	int started;

	if (!cmd)
		return;
	started = child_start(&ch, &w->conn, "exec", cmd, 1) == 0;
	free(cmd);
	if (!started)
		return;
	child_wait(&ch, w->chunk, -1);
	child_reap(&ch, w->chunk, 1); /* only after an unexpected poll error */
	child_release(&ch);
	reply_begin(&w->conn, &m);
	mp_map_int(&m, "exit_code", child_exit_code(&ch));
	mp_map_end(&m);
	reply_send(&w->conn);
}
