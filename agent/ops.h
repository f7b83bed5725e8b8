/*
 * ops.h: the worker's ops. An op serves one request: it reads its arguments
 * from req and replies on w->conn (reply.h), with partial replies first if it
 * streams. ops.c holds the table of every op, one row each; adding an op is
 * its function in an op file, its declaration here and its row there (and
 * its entry in docs/protocol.md).
 */
#ifndef PROVIUM_OPS_H
#define PROVIUM_OPS_H

struct mp_value;
struct request;
struct worker;

typedef void op_fn(struct worker *w, const struct mp_value *req);

struct op {
	const char *name;
	op_fn *run;
};

/* The op named by rq, or NULL. */
const struct op *ops_find(const struct request *rq);

op_fn op_ping, op_read_file, op_write_file;   /* file.c */
op_fn op_exec;                                /* exec.c */
op_fn op_syscall;                             /* syscall.c */
op_fn op_background, op_job_wait, op_job_kill; /* jobs.c */
op_fn op_spawn;                               /* spawn.c */
op_fn op_pty_open, op_pty_write, op_pty_resize; /* pty.c */

#endif
