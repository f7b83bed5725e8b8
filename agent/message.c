/*
 * message.c: request parsing, error replies and error events on top of
 * frames and msgpack (see message.h).
 */
#define _GNU_SOURCE
#include "message.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum req_status req_parse(const uint8_t *payload, size_t len, struct mp_value *nodes,
			  size_t cap, struct request *rq, const char **why)
{
	const struct mp_value *root = mp_decode(payload, len, nodes, cap), *v;

	memset(rq, 0, sizeof(*rq));
	if (!root) {
		*why = "payload is not valid msgpack (or uses unsupported types)";
		return REQ_NO_ID;
	}
	if (root->type != MP_MAP) {
		*why = "payload is not a map";
		return REQ_NO_ID;
	}
	rq->map = root;
	v = mp_map_get(root, "id");
	if (!v || v->type != MP_UINT) {
		*why = "request has no 'id' (an unsigned int)";
		return REQ_NO_ID;
	}
	rq->id = v->v.u;
	v = mp_map_get(root, "op");
	if (!v || v->type != MP_STR) {
		*why = "request: field 'op' must be a string";
		return REQ_NO_OP;
	}
	rq->op = v->v.bytes;
	rq->op_len = v->len;
	return REQ_OK;
}

int req_op_is(const struct request *rq, const char *name)
{
	size_t n = strlen(name);

	return rq->op_len == n && memcmp(rq->op, name, n) == 0;
}

void msg_error(struct mp_buf *b, uint64_t id, int err, const char *fmt, ...)
{
	char text[8192];
	struct mp_map m;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	msg_sanitize_utf8(text);

	mp_buf_reset(b);
	mp_map_begin(&m, b);
	mp_map_uint(&m, "id", id);
	mp_map_cstr(&m, "error", text);
	if (err)
		mp_map_int(&m, "errno", err);
	mp_map_end(&m);
}

void msg_event_error(struct mp_buf *b, const char *message)
{
	char text[1024];
	struct mp_map m;

	snprintf(text, sizeof(text), "%s", message);
	msg_sanitize_utf8(text);
	mp_buf_reset(b);
	mp_map_begin(&m, b);
	mp_map_cstr(&m, "event", "error");
	mp_map_cstr(&m, "message", text);
	mp_map_end(&m);
}

/* Length of the valid UTF-8 sequence starting at s, or 0 if it is not one. */
static size_t utf8_seq(const unsigned char *s)
{
	unsigned char c = s[0];
	size_t n;
	uint32_t cp, min;

	if (c < 0x80)
		return 1;
	if ((c & 0xe0) == 0xc0) {
		n = 2; cp = c & 0x1f; min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3; cp = c & 0x0f; min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		n = 4; cp = c & 0x07; min = 0x10000;
	} else {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

void msg_sanitize_utf8(char *s)
{
	unsigned char *p = (unsigned char *)s;

	while (*p) {
		size_t n = utf8_seq(p);

		if (n == 0) {
			*p++ = '?';
		} else {
			p += n;
		}
	}
}

const char *msg_strerror(int err, char *buf, size_t len)
{
	return strerror_r(err, buf, len); /* the GNU variant: returns the text */
}
