/*
 * message.h: the message layer between frames and ops, shared by the router
 * and the workers: parsing a request's id and op, encoding error replies and
 * error events. Error texts are made valid UTF-8 (they may quote paths and
 * op names sent by the host).
 */
#ifndef PROVIUM_MESSAGE_H
#define PROVIUM_MESSAGE_H

#include "msgpack.h"

#include <stddef.h>
#include <stdint.h>

struct request {
	const struct mp_value *map;
	uint64_t id;
	const uint8_t *op; /* not NUL-terminated */
	uint32_t op_len;
};

enum req_status {
	REQ_OK,    /* map, id and op are set */
	REQ_NO_ID, /* nothing to reply to: send an error event */
	REQ_NO_OP, /* id is set: reply with an error */
};

/* Parse a request payload using nodes[0..cap); *why explains a failure. */
enum req_status req_parse(const uint8_t *payload, size_t len, struct mp_value *nodes,
			  size_t cap, struct request *rq, const char **why);

int req_op_is(const struct request *rq, const char *name);

/* Encode {id, error: formatted text [, errno: err if err != 0]} into b (replacing its content). */
void msg_error(struct mp_buf *b, uint64_t id, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Encode the event {event: "error", message} into b (replacing its content). */
void msg_event_error(struct mp_buf *b, const char *message);

/* Replace every byte of s that is not part of valid UTF-8 with '?', in place. */
void msg_sanitize_utf8(char *s);

/* strerror, thread-safe. */
const char *msg_strerror(int err, char *buf, size_t len);

#endif
