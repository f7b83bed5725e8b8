/*
 * frame.h: the framing layer. A frame is an 8-byte header ("PV", u16 LE
 * channel, u32 LE length, 1 <= length <= MAX_PAYLOAD) and a payload.
 * A frame_reader buffers bytes read from an fd and cuts frames out of them,
 * skipping garbage one byte at a time until a valid header.
 */
#ifndef PROVIUM_FRAME_H
#define PROVIUM_FRAME_H

#include "proto.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One frame, pointing into the reader's buffer: valid until the next frame_fill(). */
struct frame {
	uint16_t chan;
	const uint8_t *payload;
	uint32_t len;
	const uint8_t *raw; /* header + payload, as received */
	size_t raw_len;
};

struct frame_reader {
	uint8_t *buf;
	size_t cap;   /* allocated; grows up to FRAME_HEADER + MAX_PAYLOAD */
	size_t start; /* unconsumed bytes are buf[start .. start + len) */
	size_t len;
	size_t need;  /* size of the frame being waited for, 0 if unknown */
};

int frame_reader_init(struct frame_reader *r); /* 0, or -1 (ENOMEM) */
void frame_reader_free(struct frame_reader *r);
void frame_reader_reset(struct frame_reader *r); /* drop everything buffered */

/* Cut the next complete frame out of the buffer: 1 = *f is set, 0 = need more bytes. */
int frame_next(struct frame_reader *r, struct frame *f);

/*
 * One read from fd into the buffer: bytes read, 0 on EOF, -1 with errno.
 * With recv_fd, an fd passed with the bytes (SCM_RIGHTS) is stored there.
 */
ssize_t frame_fill(struct frame_reader *r, int fd, int *recv_fd);

void frame_header(uint8_t hdr[FRAME_HEADER], uint16_t chan, uint32_t len);

/* Write one whole frame to a blocking fd (loops on partial writes and EINTR). 0 or -1. */
int frame_write(int fd, uint16_t chan, const void *payload, size_t len);

#endif
