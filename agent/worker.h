/*
 * worker.h: a worker serves ops (ping, exec, read_file, write_file) on one
 * connection to the router. All of its state lives in struct worker, so
 * several workers can run in one process (as threads) or in forked copies.
 */
#ifndef PROVIUM_WORKER_H
#define PROVIUM_WORKER_H

#include "frame.h"
#include "msgpack.h"

#include <stdint.h>

struct worker {
	int fd;                  /* connection to the router (blocking) */
	int dead;                /* writing to the router failed: stop serving */
	struct frame_reader rd;
	struct mp_buf out;       /* the reply being encoded */
	uint8_t *chunk;          /* CHUNK bytes of I/O buffer */
	uint16_t chan;           /* channel of the request being served */
	uint64_t id;             /* id of the request being served */
	struct mp_value nodes[MP_MAX_NODES];
};

/* Prepare w to serve fd. 0, or -1 (errno). */
int worker_init(struct worker *w, int fd);

/* Serve requests until the connection ends. */
void worker_loop(struct worker *w);

/* Free what worker_init allocated (does not close fd). */
void worker_destroy(struct worker *w);

#endif
