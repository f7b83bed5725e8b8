/*
 * slots.c: the router's worker slot table (see slots.h).
 */
#define _GNU_SOURCE
#include "slots.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct wslot *slot_of_chan(struct slots *t, uint16_t chan)
{
	for (int i = 0; i < MAX_WORKERS; i++)
		if (t->w[i].used && t->w[i].chan == chan)
			return &t->w[i];
	return NULL;
}

struct wslot *slot_unused(struct slots *t)
{
	for (int i = 0; i < MAX_WORKERS; i++)
		if (!t->w[i].used)
			return &t->w[i];
	return NULL;
}

uint16_t slot_free_channel(struct slots *t)
{
	for (int tries = 0; tries < 65534; tries++) {
		uint16_t c = t->next_chan < 2 ? 2 : t->next_chan;

		t->next_chan = c == 65535 ? 2 : c + 1;
		if (!slot_of_chan(t, c))
			return c;
	}
	return 0;
}

int slot_open(struct wslot *s, uint16_t chan, int fd)
{
	memset(s, 0, sizeof(*s));
	if (frame_reader_init(&s->rd) < 0)
		return -1;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	s->used = 1;
	s->chan = chan;
	s->fd = fd;
	outq_init(&s->q);
	return 0;
}

void slot_check_exit(struct wslot *s)
{
	int st;

	if (s->used && !s->child && s->fd < 0) {
		s->exited = 1; /* a spawned worker is not our child: its end is the end of its socket */
		return;
	}
	if (s->used && !s->exited && waitpid(s->pid, &st, WNOHANG) == s->pid) {
		s->exited = 1;
		s->status = st;
	}
}

void slot_disconnect(struct wslot *s)
{
	close(s->fd);
	s->fd = -1;
	outq_clear(&s->q);
	slot_check_exit(s);
}

void slot_forget(struct wslot *s)
{
	if (s->fd >= 0)
		close(s->fd);
	frame_reader_free(&s->rd);
	outq_free(&s->q);
	memset(s, 0, sizeof(*s));
}

void slots_kill_all(struct slots *t)
{
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct wslot *s = &t->w[i];

		if (s->used && !s->exited && s->pid > 0) { /* pid 0: a spawn in flight; kill(0) is our group */
			kill(s->pid, SIGKILL);
			while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR)
				;
		}
	}
}
