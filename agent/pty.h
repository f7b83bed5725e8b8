/*
 * pty.h: a worker's interactive terminal session (pty.c): a shell on a new
 * pseudo-terminal, started by the pty_open op (ops.h). Its output and its
 * exit reach the host as events on the session's channel, sent from the
 * worker loop, which polls the session with its connection.
 */
#ifndef PROVIUM_PTY_H
#define PROVIUM_PTY_H

#include "reply.h"

#include <poll.h>
#include <stdint.h>

#define PTY_POLLFDS 2 /* a session waits on at most this many fds */

struct pty;

/* Fill pfd (room for PTY_POLLFDS) with what the session p (NULL: none) waits on; how many. */
int pty_pollfds(const struct pty *p, struct pollfd *pfd);

/*
 * pfd as filled by pty_pollfds: send the output that is ready as pty_output
 * events through c. Once the shell has exited, send what the terminal still
 * holds and pty_exit, and free the session (*pp becomes NULL).
 */
void pty_service(struct pty **pp, struct conn *c, uint8_t *scratch, const struct pollfd *pfd, int n);

/*
 * Kill the session's shell (its process group and itself), reap it and free
 * the session; with forget, only free it (a fork worker drops its parent's).
 */
void pty_destroy(struct pty **pp, uint8_t *scratch, int forget);

#endif
