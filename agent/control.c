/*
 * control.c: channel 0, answered by the router itself. The table below holds
 * its ops, one row each: hello, spawn, kill_worker, set_clock, ping, poweroff.
 */
#define _GNU_SOURCE
#include "router_int.h"
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

/*
 * A channel-0 op: leaves its reply (or error reply) in r->out and returns 1,
 * or returns 0 when the reply comes from elsewhere (spawn: the main worker).
 */
typedef int control_fn(struct router *r, const struct request *rq);

/* The reply {id}. */
static int ok(struct router *r, const struct request *rq)
{
	struct mp_map m;

	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_uint(&m, "id", rq->id);
	mp_map_end(&m);
	return 1;
}

/* hello {proto}: check the host speaks our protocol. */
static int ctl_hello(struct router *r, const struct request *rq)
{
	const struct mp_value *v = mp_map_get(rq->map, "proto");
	struct mp_map m;

	if (!v || (v->type != MP_UINT && v->type != MP_INT)) {
		msg_error(&r->out, rq->id, 0, "hello: field 'proto' must be an int");
	} else if (v->type != MP_UINT || v->v.u != PROTO_VERSION) {
		msg_error(&r->out, rq->id, 0, "hello: the host speaks proto %lld, this agent speaks %d",
			  v->type == MP_UINT ? (long long)v->v.u : (long long)v->v.i, PROTO_VERSION);
	} else {
		mp_buf_reset(&r->out);
		mp_map_begin(&m, &r->out);
		mp_map_uint(&m, "id", rq->id);
		mp_map_uint(&m, "proto", PROTO_VERSION);
		mp_map_cstr(&m, "agent", AGENT_NAME);
		mp_map_end(&m);
	}
	return 1;
}

/* spawn {thread}: through the main worker (handshake.c), which replies. */
static int ctl_spawn(struct router *r, const struct request *rq)
{
	return spawn_start(r, rq) < 0;
}

/* kill_worker {channel}: end a spawned worker (a thread worker is disconnected). */
static int ctl_kill_worker(struct router *r, const struct request *rq)
{
	const struct mp_value *c = mp_map_get(rq->map, "channel");
	struct wslot *s = c && c->type == MP_UINT && c->v.u <= 65535 ? slot_of_chan(&r->slots, (uint16_t)c->v.u)
								      : NULL;

	if (!c || c->type != MP_UINT) {
		msg_error(&r->out, rq->id, 0, "kill_worker: field 'channel' must be an integer");
		return 1;
	}
	if (!s || s->chan == CHAN_MAIN || s->fd < 0) {
		msg_error(&r->out, rq->id, 0, "kill_worker: no spawned worker on channel %llu",
			  (unsigned long long)c->v.u);
		return 1;
	}
	if (s->pid > 0 && !s->thread)
		kill(s->pid, SIGKILL);
	s->killed = 1;
	shutdown(s->fd, SHUT_RDWR); /* a thread worker sees EOF and ends */
	slot_disconnect(s);
	return ok(r, rq);
}

/* set_clock {realtime_ns}: set the guest's wall clock (after a resume it is the snapshot's). */
static int ctl_set_clock(struct router *r, const struct request *rq)
{
	const struct mp_value *v = mp_map_get(rq->map, "realtime_ns");
	struct timespec ts;

	if (!v || v->type != MP_UINT) {
		msg_error(&r->out, rq->id, 0, "set_clock: field 'realtime_ns' must be a non-negative integer");
		return 1;
	}
	ts.tv_sec = (time_t)(v->v.u / 1000000000u);
	ts.tv_nsec = (long)(v->v.u % 1000000000u);
	if (!r->host_mode && clock_settime(CLOCK_REALTIME, &ts) < 0) { /* the host's clock is not ours to set */
		msg_error(&r->out, rq->id, errno, "set_clock: %s", strerror(errno));
		return 1;
	}
	return ok(r, rq);
}

/* poweroff: reply, then power the guest off (host mode: exit). */
static int __attribute__((noreturn)) ctl_poweroff(struct router *r, const struct request *rq)
{
	ok(r, rq);
	port_send_out(r, CHAN_ROUTER);
	if (r->host_mode)
		host_exit(r, 0);
	sync();
	for (;;) {
		reboot(RB_POWER_OFF);
		fprintf(stderr, "provium-agent: poweroff failed: %s\n", strerror(errno));
		sleep_ms(1000);
	}
}

static const struct {
	const char *name;
	control_fn *run;
} control_ops[] = {
	{ "hello", ctl_hello },
	{ "spawn", ctl_spawn },
	{ "kill_worker", ctl_kill_worker },
	{ "set_clock", ctl_set_clock },
	{ "ping", ok },
	{ "poweroff", ctl_poweroff },
};

void control(struct router *r, const struct frame *f)
{
	struct request rq;
	const char *why;

	switch (req_parse(f->payload, f->len, r->nodes, MP_MAX_NODES, &rq, &why)) {
	case REQ_NO_ID:
		msg_event_error(&r->out, why);
		port_send_out(r, f->chan);
		return;
	case REQ_NO_OP:
		msg_error(&r->out, rq.id, 0, "%s", why);
		port_send_out(r, f->chan);
		return;
	case REQ_OK:
		break;
	}
	for (size_t i = 0; i < sizeof(control_ops) / sizeof(control_ops[0]); i++) {
		if (req_op_is(&rq, control_ops[i].name)) {
			if (control_ops[i].run(r, &rq))
				port_send_out(r, f->chan);
			return;
		}
	}
	msg_error(&r->out, rq.id, 0, "unknown op '%.*s' on channel 0",
		  (int)(rq.op_len > 64 ? 64 : rq.op_len), (const char *)rq.op);
	port_send_out(r, f->chan);
}
