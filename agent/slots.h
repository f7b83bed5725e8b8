/*
 * slots.h: the router's table of workers, one slot per channel in use: the
 * router's end of the worker's socket, the frames coming from it, the queue
 * going to it, and how the worker ended.
 */
#ifndef PROVIUM_SLOTS_H
#define PROVIUM_SLOTS_H

#include "frame.h"
#include "outq.h"

#include <stdint.h>
#include <sys/types.h>

#define MAX_WORKERS 64

struct wslot {
	int used;
	uint16_t chan;
	pid_t pid;  /* 0 until a spawned worker reports it */
	int child;  /* the router's own child (the main worker): reaped here */
	int thread; /* a thread worker: it cannot be killed, only disconnected */
	int killed; /* ended by kill_worker: the host knows, no worker_exit event */
	int fd;     /* router end of the socketpair (non-blocking); -1 after EOF */
	int exited; /* reaped: status is valid */
	int status;
	struct frame_reader rd; /* frames from the worker */
	struct outq q;          /* frames to the worker */
};

struct slots {
	struct wslot w[MAX_WORKERS];
	uint16_t next_chan; /* where the search for a free channel starts */
};

struct wslot *slot_of_chan(struct slots *t, uint16_t chan);
/* A slot not in use, or NULL. */
struct wslot *slot_unused(struct slots *t);
/* A free channel number >= 2, or 0 when every one is taken. */
uint16_t slot_free_channel(struct slots *t);

/* Take the unused slot s for chan, served through fd (made non-blocking). 0, or -1 (ENOMEM; fd stays the caller's). */
int slot_open(struct wslot *s, uint16_t chan, int fd);
/* The worker's socket is gone (EOF, or killed): close it, drop its queue, see whether it has exited. */
void slot_disconnect(struct wslot *s);
/* Mark s exited if it has: reaped (the router's child) or disconnected (any other). */
void slot_check_exit(struct wslot *s);
/* Free s without reporting it. */
void slot_forget(struct wslot *s);
/* SIGKILL and reap every worker still running (leaving in host mode). */
void slots_kill_all(struct slots *t);

#endif
