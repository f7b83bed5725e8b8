/*
 * reply.h: replying to the request being served. A struct conn is a worker's
 * connection to the router and the id and channel of the request it serves;
 * every op replies through it with these helpers, and reads its arguments
 * with arg_* (which reply with the error themselves). Frames go straight to
 * the port when they can (portshare.h), else through the router. Depends
 * only on the message, msgpack, frame and portshare layers.
 */
#ifndef PROVIUM_REPLY_H
#define PROVIUM_REPLY_H

#include "msgpack.h"
#include "portshare.h"

#include <stddef.h>
#include <stdint.h>

struct conn {
	int fd;            /* connection to the router (blocking) */
	int dead;          /* writing to the router failed: stop serving */
	int port_fd;       /* the port to the host, shared with the router */
	struct port_share *share; /* NULL: every frame goes through the router */
	int slot;          /* this connection's slot in share->forwarded */
	uint64_t routed;   /* frames sent through the router so far */
	uint16_t chan;     /* channel of the request being served */
	uint64_t id;       /* id of the request being served */
	struct mp_buf out; /* the reply being encoded */
};

/* Send the map in b as one frame on chan: straight to the port when it may, else through the router. */
void conn_send(struct conn *c, uint16_t chan, const struct mp_buf *b);
/* Start a reply map {id, ...} in c->out; send it with reply_send. */
void reply_begin(struct conn *c, struct mp_map *m);
/* Send the map encoded in c->out (a short error reply if encoding ran out of memory). */
void reply_send(struct conn *c);
/* {id} */
void reply_empty(struct conn *c);
/* {id, error: formatted text [, errno]} */
void reply_error(struct conn *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* {id, error: "OP WHAT: strerror", errno} */
void reply_errno(struct conn *c, const char *op, const char *what, int err);
/* A partial reply {id, more: true, field: bin}. */
void reply_partial(struct conn *c, const char *field, const void *p, size_t len);

/* A required str argument as a malloc'd C string, or NULL after an error reply. */
char *arg_cstr(struct conn *c, const struct mp_value *req, const char *op, const char *field);
/* An optional argument: NULL when absent or nil. */
const struct mp_value *arg_opt(const struct mp_value *req, const char *field);
/* An integer argument (either sign) as its 64-bit pattern: 0, or -1 after an error reply. */
int arg_int(struct conn *c, const struct mp_value *v, const char *op, const char *field, uint64_t *out);

#endif
