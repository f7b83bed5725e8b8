/*
 * jobs.h: a worker's background jobs (jobs.c): commands whose output is kept
 * (bounded) while the worker serves other requests. The worker loop polls
 * them with its connection; their ops (background, job_wait, job_kill) are in
 * ops.h.
 */
#ifndef PROVIUM_JOBS_H
#define PROVIUM_JOBS_H

#include <poll.h>
#include <stdint.h>

#define MAX_JOBS 64

struct job;

struct jobs {
	uint64_t next_id; /* id of the last job started */
	struct job *slot[MAX_JOBS];
};

/* Fill pfd (room for max entries, 3 per running job) with what the running jobs wait on. */
int jobs_pollfds(struct jobs *js, struct pollfd *pfd, int max);
/* pfd as filled by jobs_pollfds: read what is ready, reap jobs that ended. */
void jobs_service(struct jobs *js, uint8_t *scratch, const struct pollfd *pfd, int n);
/* Kill and free every job; with forget, only free them (a fork worker drops its parent's). */
void jobs_destroy(struct jobs *js, uint8_t *scratch, int forget);

#endif
