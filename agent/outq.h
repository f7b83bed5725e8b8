/*
 * outq.h: a queue of bytes waiting to be written to a worker socket, which
 * the router never blocks on. One fd can travel with the queued bytes
 * (SCM_RIGHTS), attached to the first byte of the frame it came with.
 */
#ifndef PROVIUM_OUTQ_H
#define PROVIUM_OUTQ_H

#include <stddef.h>
#include <stdint.h>

/* data[start .. start + len); attach_fd, when >= 0, goes with the byte attach_left bytes ahead. */
struct outq {
	uint8_t *data;
	size_t start, len, cap;
	int attach_fd;
	size_t attach_left;
};

void outq_init(struct outq *q);
/* Queue n bytes. 0, or -1 (out of memory: nothing queued). */
int outq_push(struct outq *q, const void *p, size_t n);
/*
 * Send n bytes to sock, at once when nothing is queued (no copy), and queue
 * what it does not take now. 0, or -1 (out of memory: the rest is not
 * queued, so the worker gets a cut frame, which its reader skips).
 */
int outq_send(struct outq *q, int sock, const void *p, size_t n);
/* Queue one frame on chan with fd attached to it (the queue takes fd on success). 0, or -1 (nothing queued). */
int outq_push_frame(struct outq *q, uint16_t chan, const void *payload, size_t len, int fd);
/* Write as much of the queue to sock as it takes now; a dead sock empties the queue. */
void outq_flush(struct outq *q, int sock);
/* Drop what is queued (the socket is gone); an attached fd stays until outq_free. */
void outq_clear(struct outq *q);
void outq_free(struct outq *q);

#endif
