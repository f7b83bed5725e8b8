/*
 * worker.h: a worker serves ops on one connection to the router. All of its
 * state lives in struct worker, so several workers can run in one process
 * (thread workers) or in forked copies (fork workers). The ops (ops.h) get
 * the struct; only the worker's owners (the router, spawn.c) call the
 * functions declared here.
 */
#ifndef PROVIUM_WORKER_H
#define PROVIUM_WORKER_H

#include "frame.h"
#include "jobs.h"
#include "msgpack.h"
#include "pty.h"
#include "reply.h"

#include <stdint.h>

struct worker {
	struct conn conn;        /* the router connection and the request being served */
	int pending_fd;          /* a socket passed by the router for the next spawn, or -1 */
	struct frame_reader rd;
	uint8_t *chunk;          /* CHUNK bytes of I/O buffer */
	struct jobs jobs;        /* background jobs */
	struct pty *pty;         /* the terminal session, or NULL */
	struct mp_value nodes[MP_MAX_NODES];
};

/*
 * Prepare w to serve the router connection fd, writing what it can straight
 * to the port port_fd under share (NULL: everything through the router) as
 * the worker of slot. 0, or -1 (errno).
 */
int worker_init(struct worker *w, int fd, int port_fd, struct port_share *share, int slot);

/* Serve requests until the connection ends. */
void worker_loop(struct worker *w);

/* Kill w's jobs and terminal session and free what worker_init allocated (does not close fd). */
void worker_destroy(struct worker *w);

#endif
