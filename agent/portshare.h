/*
 * portshare.h: the port to the host, shared by the router and every worker.
 * Workers write their reply frames straight to the port instead of through
 * the router, so frames from different writers must not interleave: a frame
 * of at most PORT_WRITE_MAX bytes is one write() (the virtio console makes
 * each write() one buffer, at most 32 KiB, so it cannot be split or cut by a
 * writer dying), and every write to the port happens under one lock, which
 * the router also holds while it writes a larger frame in pieces. The lock
 * is a robust process-shared mutex in a shared page made before the first
 * fork, so a worker killed holding it does not wedge the agent.
 *
 * A worker sends through the router what the router must see (channel 0:
 * the spawn handshake) and frames too large for one write. Its later frames
 * may go straight to the port only once the router has written all of those
 * (forwarded[slot] counts them), so a worker's frames keep their order.
 */
#ifndef PROVIUM_PORTSHARE_H
#define PROVIUM_PORTSHARE_H

#include "slots.h"

#include <pthread.h>
#include <stdint.h>

#define PORT_WRITE_MAX (32 * 1024) /* virtio_console: one write() is at most one 32 KiB buffer */
#define PORT_FD 4                  /* where a worker process holds the port */

struct port_share {
	pthread_mutex_t lock;
	uint64_t forwarded[MAX_WORKERS]; /* frames the router has written to the port for slot i */
};

/* The shared page, or NULL (errno) when it cannot be made. */
struct port_share *port_share_new(void);
void port_lock(struct port_share *ps);
void port_unlock(struct port_share *ps);

#endif
