/*
 * frame.c: reading frames from an fd with resynchronisation after garbage,
 * and writing whole frames.
 */
#include "frame.h"
#include "proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define READER_INITIAL (64 * 1024)
#define READER_MAX (FRAME_HEADER + MAX_PAYLOAD)

int frame_reader_init(struct frame_reader *r)
{
	memset(r, 0, sizeof(*r));
	r->buf = malloc(READER_INITIAL);
	if (!r->buf) {
		errno = ENOMEM;
		return -1;
	}
	r->cap = READER_INITIAL;
	return 0;
}

void frame_reader_free(struct frame_reader *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

void frame_reader_reset(struct frame_reader *r)
{
	r->start = r->len = r->need = 0;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void skip(struct frame_reader *r, size_t n)
{
	r->start += n;
	r->len -= n;
}

int frame_next(struct frame_reader *r, struct frame *f)
{
	r->need = 0;
	while (r->len > 0) {
		const uint8_t *p = r->buf + r->start;
		uint32_t len;

		if (p[0] != FRAME_MAGIC0) {
			const uint8_t *q = memchr(p + 1, FRAME_MAGIC0, r->len - 1);

			skip(r, q ? (size_t)(q - p) : r->len);
			continue;
		}
		if (r->len < 2)
			return 0;
		if (p[1] != FRAME_MAGIC1) {
			skip(r, 1);
			continue;
		}
		if (r->len < FRAME_HEADER)
			return 0;
		len = le32(p + 4);
		if (len == 0 || len > MAX_PAYLOAD) {
			skip(r, 1);
			continue;
		}
		if (r->len < FRAME_HEADER + (size_t)len) {
			r->need = FRAME_HEADER + (size_t)len;
			return 0;
		}
		f->chan = (uint16_t)(p[2] | p[3] << 8);
		f->len = len;
		f->payload = p + FRAME_HEADER;
		f->raw = p;
		f->raw_len = FRAME_HEADER + (size_t)len;
		skip(r, f->raw_len);
		return 1;
	}
	r->start = 0; /* empty: rewind for free */
	return 0;
}

/* read(), or recvmsg() keeping one SCM_RIGHTS fd in *recv_fd (closing one not yet taken). */
static ssize_t read_some(int fd, void *p, size_t len, int *recv_fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = { p, len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *c;
	ssize_t n;

	if (!recv_fd)
		return read(fd, p, len);
	msg.msg_control = control.buf;
	msg.msg_controllen = sizeof(control.buf);
	n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	for (c = n >= 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int))) {
			if (*recv_fd >= 0)
				close(*recv_fd);
			memcpy(recv_fd, CMSG_DATA(c), sizeof(int));
		}
	}
	return n;
}

ssize_t frame_fill(struct frame_reader *r, int fd, int *recv_fd)
{
	size_t want;
	ssize_t n;

	/* move the unconsumed bytes to the front */
	if (r->start > 0) {
		memmove(r->buf, r->buf + r->start, r->len);
		r->start = 0;
	}
	/* grow for the frame being assembled, or when full (never past one maximal frame) */
	want = r->cap;
	if (r->need > want)
		want = r->need;
	if (r->len == r->cap && want < READER_MAX)
		want = r->cap * 2 < READER_MAX ? r->cap * 2 : READER_MAX;
	if (want > r->cap) {
		uint8_t *p = realloc(r->buf, want);

		if (!p) {
			errno = ENOMEM;
			return -1;
		}
		r->buf = p;
		r->cap = want;
	}
	if (r->len == r->cap) { /* cannot happen: a full buffer always holds a frame */
		errno = ENOBUFS;
		return -1;
	}
	n = read_some(fd, r->buf + r->len, r->cap - r->len, recv_fd);
	if (n > 0)
		r->len += (size_t)n;
	return n;
}

void frame_header(uint8_t h[FRAME_HEADER], uint16_t chan, uint32_t len)
{
	h[0] = FRAME_MAGIC0;
	h[1] = FRAME_MAGIC1;
	h[2] = (uint8_t)chan;
	h[3] = (uint8_t)(chan >> 8);
	h[4] = (uint8_t)len;
	h[5] = (uint8_t)(len >> 8);
	h[6] = (uint8_t)(len >> 16);
	h[7] = (uint8_t)(len >> 24);
}

int frame_write(int fd, uint16_t chan, const void *payload, size_t len)
{
	uint8_t h[FRAME_HEADER];
	struct iovec iov[2];
	int i = 0;

	if (len == 0 || len > MAX_PAYLOAD) {
		errno = EMSGSIZE;
		return -1;
	}
	frame_header(h, chan, (uint32_t)len);
	iov[0].iov_base = h;
	iov[0].iov_len = sizeof(h);
	iov[1].iov_base = (void *)payload;
	iov[1].iov_len = len;
	while (i < 2) {
		ssize_t n = writev(fd, iov + i, 2 - i);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		while (i < 2 && (size_t)n >= iov[i].iov_len) {
			n -= (ssize_t)iov[i].iov_len;
			i++;
		}
		if (i < 2) {
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + n;
			iov[i].iov_len -= (size_t)n;
		}
	}
	return 0;
}
