/*
 * router_int.h: the router's state, shared by the files that make up the
 * router (router.c, port.c, control.c, handshake.c; slots.c and outq.c have
 * headers of their own). Not for the rest of the agent: see router.h.
 */
#ifndef PROVIUM_ROUTER_INT_H
#define PROVIUM_ROUTER_INT_H

#include "frame.h"
#include "message.h"
#include "msgpack.h"
#include "portshare.h"
#include "slots.h"

#include <stdint.h>
#include <time.h>

struct router {
	int in_fd, out_fd; /* the port: guest both the same fd, host mode stdin/stdout */
	int host_mode;
	int sig_fd;        /* signalfd for SIGCHLD */
	int need_main;     /* the main worker could not be started: retry */
	struct timespec last_eof;
	int spawning;           /* a spawn is on its way through the main worker */
	uint64_t spawn_id;      /* ... the host's request id */
	uint16_t spawn_chan;    /* ... and the channel it will get */
	struct frame_reader rd; /* frames from the host */
	struct mp_buf out;      /* the router's own replies */
	struct slots slots;
	struct port_share *share; /* the port's lock, shared with the workers; NULL: they write through us */
	struct mp_value nodes[MP_MAX_NODES];
};

/* ---- port.c: the port to the host ---- */

/* Called for each frame from the host. */
typedef void port_frame_fn(struct router *r, const struct frame *f);

/* Read from the host once and hand each complete frame to deliver; handle errors and EOF. */
void port_receive(struct router *r, port_frame_fn *deliver);
/* Write one frame to the host (in host mode, leave if that fails). */
void port_send(struct router *r, uint16_t chan, const void *payload, size_t len);
/* Write one frame from the worker of s to the host, counting it for the worker (portshare.h). */
void port_forward(struct router *r, const struct wslot *s, const struct frame *f);
/* The slot s is taken by a new worker: nothing of it is forwarded yet. */
void port_slot_opened(struct router *r, const struct wslot *s);
/* Send the map encoded in r->out. */
void port_send_out(struct router *r, uint16_t chan);
/* The event {event: "hello", proto, agent}: sent at start and whenever the host comes back. */
void port_hello(struct router *r);
/* Answer an undeliverable frame: an error reply if it has an id, else an error event. */
void port_reject(struct router *r, const struct frame *f, const char *text);
/* Host mode: kill the workers and exit. */
void host_exit(struct router *r, int code) __attribute__((noreturn));
/* The router's back-off after an error. */
void sleep_ms(long ms);

/* ---- control.c: channel 0 ---- */

/* Answer a request on channel 0. */
void control(struct router *r, const struct frame *f);

/* ---- handshake.c: spawning a worker through the main worker ---- */

/* Hand a spawn request to the main worker. 0, or -1 with an error reply in r->out. */
int spawn_start(struct router *r, const struct request *rq);
/* A frame from the main worker on channel 0: its reply to the spawn in progress. */
void spawn_replied(struct router *r, const struct frame *f);
/* The main worker ended during a spawn: drop the new worker's slot. */
void spawn_abort(struct router *r);

#endif
