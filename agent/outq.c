/*
 * outq.c: the router's queues towards worker sockets, with fd passing (see
 * outq.h).
 */
#define _GNU_SOURCE
#include "outq.h"
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define QUEUE_KEEP (1024 * 1024) /* an empty queue keeps at most this much memory */

void outq_init(struct outq *q)
{
	memset(q, 0, sizeof(*q));
	q->attach_fd = -1;
}

int outq_push(struct outq *q, const void *p, size_t n)
{
	if (q->start + q->len + n > q->cap && q->start > 0) {
		memmove(q->data, q->data + q->start, q->len);
		q->start = 0;
	}
	if (q->len + n > q->cap) {
		size_t cap = q->cap ? q->cap : 64 * 1024;
		uint8_t *d;

		while (cap < q->len + n)
			cap *= 2;
		d = realloc(q->data, cap);
		if (!d)
			return -1;
		q->data = d;
		q->cap = cap;
	}
	memcpy(q->data + q->start + q->len, p, n);
	q->len += n;
	return 0;
}

int outq_send(struct outq *q, int sock, const void *p, size_t n)
{
	ssize_t sent = 0;

	if (q->len == 0) {
		do
			sent = send(sock, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		while (sent < 0 && errno == EINTR);
		if (sent < 0 && errno != EAGAIN)
			return 0; /* the worker is gone: its EOF and exit follow */
		if (sent < 0)
			sent = 0;
	}
	return (size_t)sent == n ? 0 : outq_push(q, (const uint8_t *)p + sent, n - (size_t)sent);
}

int outq_push_frame(struct outq *q, uint16_t chan, const void *payload, size_t len, int fd)
{
	uint8_t hdr[FRAME_HEADER];
	size_t before = q->len;

	frame_header(hdr, chan, (uint32_t)len);
	if (outq_push(q, hdr, sizeof(hdr)) < 0 || outq_push(q, payload, len) < 0) {
		q->len = before;
		return -1;
	}
	q->attach_fd = fd;
	q->attach_left = before;
	return 0;
}

static ssize_t send_with_fd(int sock, const void *p, size_t len, int fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = { (void *)p, len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	memset(control.buf, 0, sizeof(control.buf));
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void drop_attached(struct outq *q)
{
	if (q->attach_fd >= 0)
		close(q->attach_fd);
	q->attach_fd = -1;
}

/* One write: the attached fd with the bytes from its byte on, or the bytes before it. */
static ssize_t send_some(struct outq *q, int sock)
{
	ssize_t n;

	if (q->attach_fd >= 0 && q->attach_left == 0) {
		n = send_with_fd(sock, q->data + q->start, q->len, q->attach_fd);
		if (n > 0)
			drop_attached(q);
		return n;
	}
	n = send(sock, q->data + q->start, q->attach_fd >= 0 ? q->attach_left : q->len,
		 MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n > 0 && q->attach_fd >= 0)
		q->attach_left -= (size_t)n;
	return n;
}

void outq_flush(struct outq *q, int sock)
{
	while (q->len > 0) {
		ssize_t n = send_some(q, sock);

		if (n > 0) {
			q->start += (size_t)n;
			q->len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && errno == EAGAIN) {
			return;
		} else {
			q->len = 0; /* the worker is gone: its EOF and exit follow */
			drop_attached(q);
		}
	}
	q->start = 0;
	if (q->cap > QUEUE_KEEP) {
		free(q->data);
		q->data = NULL;
		q->cap = 0;
	}
}

void outq_clear(struct outq *q)
{
	q->len = q->start = 0;
}

void outq_free(struct outq *q)
{
	free(q->data);
	drop_attached(q);
	outq_init(q);
}
