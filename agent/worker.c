/*
 * worker.c: the worker loop: requests, background jobs and the terminal
 * session in one poll, each request dispatched through the ops table
 * (ops.c). No mutable globals: everything is in struct worker.
 */
#define _GNU_SOURCE
#include "worker.h"
#include "message.h"
#include "ops.h"
#include "proto.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int worker_init(struct worker *w, int fd, int port_fd, struct port_share *share, int slot)
{
	memset(w, 0, sizeof(*w));
	w->conn.fd = fd;
	w->conn.port_fd = port_fd;
	w->conn.share = share;
	w->conn.slot = slot;
	w->pending_fd = -1;
	w->chunk = malloc(CHUNK);
	if (!w->chunk)
		return -1;
	if (frame_reader_init(&w->rd) < 0) {
		free(w->chunk);
		w->chunk = NULL;
		return -1;
	}
	return 0;
}

void worker_destroy(struct worker *w)
{
	jobs_destroy(&w->jobs, w->chunk, 0);
	pty_destroy(&w->pty, w->chunk, 0);
	if (w->pending_fd >= 0)
		close(w->pending_fd);
	frame_reader_free(&w->rd);
	mp_buf_free(&w->conn.out);
	free(w->chunk);
	w->chunk = NULL;
}

static void handle(struct worker *w, const struct frame *f)
{
	struct conn *c = &w->conn;
	const struct op *op;
	struct request rq;
	const char *why;

	c->chan = f->chan;
	c->id = 0;
	switch (req_parse(f->payload, f->len, w->nodes, MP_MAX_NODES, &rq, &why)) {
	case REQ_NO_ID:
		msg_event_error(&c->out, why);
		reply_send(c);
		return;
	case REQ_NO_OP:
		c->id = rq.id;
		reply_error(c, 0, "%s", why);
		return;
	case REQ_OK:
		break;
	}
	c->id = rq.id;
	op = ops_find(&rq);
	if (op)
		op->run(w, rq.map);
	else
		reply_error(c, 0, "unknown op '%.*s'", (int)(rq.op_len > 64 ? 64 : rq.op_len), (const char *)rq.op);
}

void worker_loop(struct worker *w)
{
	struct pollfd pfd[1 + PTY_POLLFDS + 3 * MAX_JOBS];
	struct frame f;

	while (!w->conn.dead) {
		ssize_t got;
		int np, nj;

		while (!w->conn.dead && frame_next(&w->rd, &f))
			handle(w, &f);
		if (w->conn.dead)
			return;
		pfd[0] = (struct pollfd){ .fd = w->conn.fd, .events = POLLIN };
		np = pty_pollfds(w->pty, pfd + 1);
		nj = jobs_pollfds(&w->jobs, pfd + 1 + np, 3 * MAX_JOBS);
		if (poll(pfd, (nfds_t)(1 + np + nj), -1) < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		pty_service(&w->pty, &w->conn, w->chunk, pfd + 1, np);
		jobs_service(&w->jobs, w->chunk, pfd + 1 + np, nj);
		if (!pfd[0].revents)
			continue;
		got = frame_fill(&w->rd, w->conn.fd, &w->pending_fd);
		if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
			return;
	}
}
