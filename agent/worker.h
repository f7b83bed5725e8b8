/*
 * worker.h: a worker serves ops on one connection to the router. All of its
 * state lives in struct worker, so several workers can run in one process
 * (thread workers) or in forked copies (fork workers). The reply helpers
 * declared here are shared by the files that implement ops (worker.c,
 * process.c, syscall.c, spawn.c).
 */
#ifndef PROVIUM_WORKER_H
#define PROVIUM_WORKER_H

#include "frame.h"
#include "msgpack.h"

#include <poll.h>
#include <stdint.h>

#define MAX_JOBS 64

struct job;

struct worker {
	int fd;                  /* connection to the router (blocking) */
	int dead;                /* writing to the router failed: stop serving */
	int pending_fd;          /* a socket passed by the router for the next spawn, or -1 */
	struct frame_reader rd;
	struct mp_buf out;       /* the reply being encoded */
	uint8_t *chunk;          /* CHUNK bytes of I/O buffer */
	uint16_t chan;           /* channel of the request being served */
	uint64_t id;             /* id of the request being served */
	uint64_t next_job;       /* id of the next background job */
	struct job *jobs[MAX_JOBS];
	struct mp_value nodes[MP_MAX_NODES];
};

/* Prepare w to serve fd. 0, or -1 (errno). */
int worker_init(struct worker *w, int fd);

/* Serve requests until the connection ends. */
void worker_loop(struct worker *w);

/* Kill w's jobs and free what worker_init allocated (does not close fd). */
void worker_destroy(struct worker *w);

/* ---- for ops ---- */

/* Start a reply map {id, ...} in w->out; send it with worker_send. */
void worker_begin(struct worker *w, struct mp_map *m);
void worker_send(struct worker *w);
void worker_reply_empty(struct worker *w);
/* {id, error: formatted text [, errno]} */
void worker_error(struct worker *w, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* {id, error: "OP WHAT: strerror", errno} */
void worker_errno(struct worker *w, const char *op, const char *what, int err);
/* A partial reply {id, more: true, field: bin}. */
void worker_partial(struct worker *w, const char *field, const void *p, size_t len);

/* A required str argument as a malloc'd C string, or NULL after an error reply. */
char *worker_arg_cstr(struct worker *w, const struct mp_value *req, const char *op, const char *field);
/* An optional argument: NULL when absent or nil. */
const struct mp_value *worker_arg_opt(const struct mp_value *req, const char *field);
/* An integer argument (either sign) as its 64-bit pattern: 0, or -1 after an error reply. */
int worker_arg_int(struct worker *w, const struct mp_value *v, const char *op, const char *field, uint64_t *out);

/* ---- ops implemented outside worker.c ---- */
void op_exec(struct worker *w, const struct mp_value *req);
void op_background(struct worker *w, const struct mp_value *req);
void op_job_wait(struct worker *w, const struct mp_value *req);
void op_job_kill(struct worker *w, const struct mp_value *req);
void op_syscall(struct worker *w, const struct mp_value *req);
void op_spawn(struct worker *w, const struct mp_value *req);

/* Background jobs (process.c): poll slots for the worker loop, service what is ready, cleanup. */
int jobs_pollfds(struct worker *w, struct pollfd *pfd, int max);
void jobs_service(struct worker *w, const struct pollfd *pfd, int n);
/* Kill and free every job; with forget, only free them (a fork worker drops its parent's). */
void jobs_destroy(struct worker *w, int forget);

#endif
