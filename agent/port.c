/*
 * port.c: the router's end of the port to the host (the virtio port, or
 * stdin/stdout in host mode): reading frames, writing frames and messages,
 * the hello event, rejecting undeliverable frames, and leaving in host mode.
 */
#define _GNU_SOURCE
#include "router_int.h"
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

void host_exit(struct router *r, int code)
{
	slots_kill_all(&r->slots);
	exit(code);
}

/* ---- writing ---- */

/* Write one frame under the port's lock; forwarded_by: the worker's slot it came from, or NULL. */
static void send_locked(struct router *r, uint16_t chan, const void *payload, size_t len, const struct wslot *forwarded_by)
{
	int ret, err;

	if (r->share)
		port_lock(r->share);
	ret = frame_write(r->out_fd, chan, payload, len);
	err = errno;
	if (r->share && forwarded_by)
		r->share->forwarded[forwarded_by - r->slots.w]++;
	if (r->share)
		port_unlock(r->share);
	if (ret == 0)
		return;
	fprintf(stderr, "provium-agent: cannot write to the host: %s\n", strerror(err));
	if (r->host_mode)
		host_exit(r, 1);
}

void port_send(struct router *r, uint16_t chan, const void *payload, size_t len)
{
	send_locked(r, chan, payload, len, NULL);
}

void port_forward(struct router *r, const struct wslot *s, const struct frame *f)
{
	send_locked(r, f->chan, f->payload, f->len, s);
}

void port_slot_opened(struct router *r, const struct wslot *s)
{
	if (r->share)
		r->share->forwarded[s - r->slots.w] = 0; /* no write of a worker of s can be waiting: it has none yet */
}

void port_send_out(struct router *r, uint16_t chan)
{
	if (r->out.failed) {
		fprintf(stderr, "provium-agent: out of memory encoding a message\n");
		return;
	}
	port_send(r, chan, r->out.data, r->out.len);
}

void port_hello(struct router *r)
{
	struct mp_map m;

	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_cstr(&m, "event", "hello");
	mp_map_uint(&m, "proto", PROTO_VERSION);
	mp_map_cstr(&m, "agent", AGENT_NAME);
	mp_map_end(&m);
	port_send_out(r, CHAN_ROUTER);
}

void port_reject(struct router *r, const struct frame *f, const char *text)
{
	struct request rq;
	const char *why;

	if (req_parse(f->payload, f->len, r->nodes, MP_MAX_NODES, &rq, &why) == REQ_NO_ID)
		msg_event_error(&r->out, text);
	else
		msg_error(&r->out, rq.id, 0, "%s", text);
	port_send_out(r, f->chan);
}

/* ---- reading ---- */

/* EOF: the host went away. In the guest, wait for it to come back and greet it. */
static void host_gone(struct router *r)
{
	struct timespec now;

	if (r->host_mode)
		host_exit(r, 0);
	frame_reader_reset(&r->rd); /* drop a partially received frame */
	/* If EOFs come back to back (the port does not block while the host is
	 * away, contrary to what was measured), do not spin. */
	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((now.tv_sec - r->last_eof.tv_sec) * 1000 + (now.tv_nsec - r->last_eof.tv_nsec) / 1000000 < 20)
		sleep_ms(20);
	r->last_eof = now;
	port_hello(r); /* blocks until the host is back */
}

void port_receive(struct router *r, port_frame_fn *deliver)
{
	ssize_t n = frame_fill(&r->rd, r->in_fd, NULL);
	struct frame f;

	if (n > 0) {
		while (frame_next(&r->rd, &f))
			deliver(r, &f);
		return;
	}
	if (n == 0) {
		host_gone(r);
		return;
	}
	if (errno == EINTR || errno == EAGAIN)
		return;
	fprintf(stderr, "provium-agent: cannot read from the host: %s\n", strerror(errno));
	if (r->host_mode)
		host_exit(r, 1);
	sleep_ms(100);
}
