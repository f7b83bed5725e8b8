/*
 * reply.c: replies and argument access for the ops (see reply.h). Replies go
 * back on the channel of the request.
 */
#define _GNU_SOURCE
#include "reply.h"
#include "frame.h"
#include "message.h"
#include "proto.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- replies ---- */

/* Write all of p[0..len) to fd (one write() on the port; loops on partial writes, as in host mode). 0, or -1. */
static int write_whole(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Write the frame in one write() to the port, if it fits and nothing of c's is still with the router. 0, or -1. */
static int send_direct(struct conn *c, uint16_t chan, const struct mp_buf *b)
{
	uint8_t frame[PORT_WRITE_MAX];
	int ret = -1;

	struct pollfd router = { .fd = c->fd, .events = 0 };

	if (!c->share || chan == CHAN_ROUTER || b->len > sizeof(frame) - FRAME_HEADER)
		return -1;
	/* The router is gone (the agent restarts): the frame goes its way and fails, and the worker ends */
	if (poll(&router, 1, 0) != 0)
		return -1;
	frame_header(frame, chan, (uint32_t)b->len);
	memcpy(frame + FRAME_HEADER, b->data, b->len);
	port_lock(c->share);
	if (c->share->forwarded[c->slot] == c->routed)
		ret = write_whole(c->port_fd, frame, FRAME_HEADER + b->len);
	port_unlock(c->share);
	return ret;
}

void conn_send(struct conn *c, uint16_t chan, const struct mp_buf *b)
{
	if (c->dead || b->failed || b->len == 0 || send_direct(c, chan, b) == 0)
		return;
	if (frame_write(c->fd, chan, b->data, b->len) < 0)
		c->dead = 1;
	else
		c->routed++;
}

void reply_send(struct conn *c)
{
	if (c->out.failed) /* out of memory: try a short error reply instead */
		msg_error(&c->out, c->id, ENOMEM, "reply could not be encoded (out of memory)");
	conn_send(c, c->chan, &c->out);
}

void reply_error(struct conn *c, int err, const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	msg_error(&c->out, c->id, err, "%s", text);
	reply_send(c);
}

void reply_begin(struct conn *c, struct mp_map *m)
{
	mp_buf_reset(&c->out);
	mp_map_begin(m, &c->out);
	mp_map_uint(m, "id", c->id);
}

void reply_empty(struct conn *c)
{
	struct mp_map m;

	reply_begin(c, &m);
	mp_map_end(&m);
	reply_send(c);
}

void reply_errno(struct conn *c, const char *op, const char *what, int err)
{
	char eb[128];

	reply_error(c, err, "%s %s: %s", op, what, msg_strerror(err, eb, sizeof(eb)));
}

void reply_partial(struct conn *c, const char *field, const void *p, size_t len)
{
	struct mp_map m;

	reply_begin(c, &m);
	mp_map_bool(&m, "more", 1);
	mp_map_bin(&m, field, p, len);
	mp_map_end(&m);
	reply_send(c);
}

/* ---- argument access ---- */

/*
 * A str or a bin is taken byte for byte (commands and paths need not be
 * UTF-8), but an embedded NUL is refused.
 */
char *arg_cstr(struct conn *c, const struct mp_value *req, const char *op, const char *field)
{
	const struct mp_value *v = mp_map_get(req, field);
	char *s;

	if (!v || (v->type != MP_STR && v->type != MP_BIN)) {
		reply_error(c, 0, "%s: field '%s' must be a string", op, field);
		return NULL;
	}
	if (memchr(v->v.bytes, 0, v->len)) {
		reply_error(c, 0, "%s: field '%s' must not contain NUL bytes", op, field);
		return NULL;
	}
	s = malloc((size_t)v->len + 1);
	if (!s) {
		reply_error(c, ENOMEM, "%s: out of memory", op);
		return NULL;
	}
	memcpy(s, v->v.bytes, v->len);
	s[v->len] = 0;
	return s;
}

const struct mp_value *arg_opt(const struct mp_value *req, const char *field)
{
	const struct mp_value *v = mp_map_get(req, field);

	return v && v->type != MP_NIL ? v : NULL;
}

int arg_int(struct conn *c, const struct mp_value *v, const char *op, const char *field, uint64_t *out)
{
	if (!v || (v->type != MP_UINT && v->type != MP_INT)) {
		reply_error(c, 0, "%s: field '%s' must be an integer", op, field);
		return -1;
	}
	*out = v->type == MP_UINT ? v->v.u : (uint64_t)v->v.i;
	return 0;
}
