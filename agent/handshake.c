/*
 * handshake.c: the router's side of spawn. The router makes a socketpair for
 * a new channel and passes one end to the main worker with the request
 * (SCM_RIGHTS); the main worker starts the new worker (spawn.c) and replies
 * on channel 0, which tells the router the new worker's pid. One spawn is in
 * progress at a time.
 */
#define _GNU_SOURCE
#include "router_int.h"
#include "outq.h"
#include "proto.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Whether a spawn can start now: 0, or -1 with an error reply in r->out. */
static int spawn_check(struct router *r, const struct request *rq, const struct wslot *main)
{
	const struct mp_value *thread = mp_map_get(rq->map, "thread");

	if (thread && thread->type != MP_BOOL && thread->type != MP_NIL) {
		msg_error(&r->out, rq->id, 0, "spawn: field 'thread' must be a bool");
		return -1;
	}
	if (!main || main->fd < 0 || r->spawning) {
		msg_error(&r->out, rq->id, EAGAIN, "spawn: %s",
			  r->spawning ? "another spawn is in progress" : "the main worker is not running");
		return -1;
	}
	return 0;
}

/* A slot for the new worker, holding one end of a new socketpair; the other in *peer. NULL after an error reply. */
static struct wslot *spawn_slot(struct router *r, const struct request *rq, int *peer)
{
	struct wslot *s = slot_unused(&r->slots);
	uint16_t chan = s ? slot_free_channel(&r->slots) : 0;
	int sv[2];

	if (!chan) {
		msg_error(&r->out, rq->id, EAGAIN, "spawn: too many workers (%d)", MAX_WORKERS - 1);
		return NULL;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		msg_error(&r->out, rq->id, errno, "spawn: socketpair: %s", strerror(errno));
		return NULL;
	}
	if (slot_open(s, chan, sv[0]) < 0) {
		close(sv[0]);
		close(sv[1]);
		msg_error(&r->out, rq->id, ENOMEM, "spawn: out of memory");
		return NULL;
	}
	port_slot_opened(r, s);
	*peer = sv[1];
	return s;
}

int spawn_start(struct router *r, const struct request *rq)
{
	const struct mp_value *thread = mp_map_get(rq->map, "thread");
	struct wslot *main = slot_of_chan(&r->slots, CHAN_MAIN), *s;
	struct mp_map m;
	int peer;

	if (spawn_check(r, rq, main) < 0 || !(s = spawn_slot(r, rq, &peer)))
		return -1;
	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_uint(&m, "id", rq->id);
	mp_map_cstr(&m, "op", "spawn");
	mp_map_bool(&m, "thread", thread && thread->type == MP_BOOL && thread->v.b);
	mp_map_uint(&m, "channel", s->chan);
	mp_map_uint(&m, "slot", (uint64_t)(s - r->slots.w));
	mp_map_end(&m);
	if (r->out.failed || outq_push_frame(&main->q, CHAN_ROUTER, r->out.data, r->out.len, peer) < 0) {
		close(peer);
		slot_forget(s);
		msg_error(&r->out, rq->id, ENOMEM, "spawn: out of memory");
		return -1;
	}
	r->spawning = 1;
	r->spawn_id = rq->id;
	r->spawn_chan = s->chan;
	outq_flush(&main->q, main->fd);
	return 0;
}

void spawn_replied(struct router *r, const struct frame *f)
{
	const struct mp_value *root = mp_decode(f->payload, f->len, r->nodes, MP_MAX_NODES);
	const struct mp_value *id = mp_map_get(root, "id");
	const struct mp_value *pid = mp_map_get(root, "pid");
	const struct mp_value *tid = mp_map_get(root, "tid");
	struct wslot *s;

	if (!id || id->type != MP_UINT || id->v.u != r->spawn_id)
		return;
	r->spawning = 0;
	s = slot_of_chan(&r->slots, r->spawn_chan);
	if (!s)
		return;
	if (pid && pid->type == MP_UINT && tid && tid->type == MP_UINT) {
		s->pid = (pid_t)pid->v.u;
		s->thread = tid->v.u != pid->v.u;
	} else {
		slot_forget(s);
	}
}

void spawn_abort(struct router *r)
{
	struct wslot *pending;

	if (!r->spawning)
		return;
	r->spawning = 0;
	pending = slot_of_chan(&r->slots, r->spawn_chan);
	if (pending)
		slot_forget(pending);
}
