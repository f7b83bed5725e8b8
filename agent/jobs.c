/*
 * jobs.c: background jobs and their ops. background starts `sh -c cmd`
 * (process.c) and replies at once; the job's output is kept (bounded) while
 * the worker serves other requests; job_wait and job_kill report it.
 */
#define _GNU_SOURCE
#include "jobs.h"
#include "ops.h"
#include "process.h"
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>

#define MAX_WAIT_MS 86400000ULL /* job_wait's timeout_ms is capped at one day */

struct job {
	uint64_t id;
	struct child ch;
};

/* Free a job; a running one is killed first unless it belongs to another process (forget). */
static void job_free(struct job *j, uint8_t *scratch, int forget)
{
	if (!forget)
		child_kill(&j->ch, scratch);
	child_release(&j->ch);
	free(j);
}

int jobs_pollfds(struct jobs *js, struct pollfd *pfd, int max)
{
	int n = 0;

	for (int i = 0; i < MAX_JOBS && n + 3 <= max; i++) {
		struct job *j = js->slot[i];

		if (!j || j->ch.exited)
			continue;
		pfd[n++] = (struct pollfd){ .fd = j->ch.out.fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = j->ch.err.fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = j->ch.pidfd, .events = POLLIN };
	}
	return n;
}

void jobs_service(struct jobs *js, uint8_t *scratch, const struct pollfd *pfd, int n)
{
	int k = 0;

	for (int i = 0; i < MAX_JOBS && k < n; i++) {
		struct job *j = js->slot[i];

		if (!j || j->ch.exited)
			continue;
		if (pfd[k].revents)
			stream_read(&j->ch.out, scratch);
		if (pfd[k + 1].revents)
			stream_read(&j->ch.err, scratch);
		if (pfd[k + 2].revents || j->ch.pidfd < 0)
			child_reap(&j->ch, scratch, 0);
		k += 3;
	}
}

void jobs_destroy(struct jobs *js, uint8_t *scratch, int forget)
{
	for (int i = 0; i < MAX_JOBS; i++) {
		if (js->slot[i])
			job_free(js->slot[i], scratch, forget);
		js->slot[i] = NULL;
	}
}

/* A free slot for a new job, making room by forgetting the oldest ended job; -1 when all run. */
static int free_slot(struct jobs *js, uint8_t *scratch)
{
	int slot = -1;

	for (int i = 0; i < MAX_JOBS; i++)
		if (!js->slot[i])
			return i;
	for (int i = 0; i < MAX_JOBS; i++)
		if (js->slot[i]->ch.exited && (slot < 0 || js->slot[i]->id < js->slot[slot]->id))
			slot = i;
	if (slot >= 0) {
		job_free(js->slot[slot], scratch, 0);
		js->slot[slot] = NULL;
	}
	return slot;
}

void op_background(struct worker *w, const struct mp_value *req)
{
	char *cmd = arg_cstr(&w->conn, req, "background", "cmd");
	int slot, started;
	struct mp_map m;
	struct job *j;

	if (!cmd)
		return;
	slot = free_slot(&w->jobs, w->chunk);
	j = slot >= 0 ? calloc(1, sizeof(*j)) : NULL;
	if (!j) {
		reply_error(&w->conn, slot < 0 ? EAGAIN : ENOMEM, "background: %s",
			    slot < 0 ? "too many running jobs (64)" : "out of memory");
		free(cmd);
		return;
	}
	started = child_start(&j->ch, &w->conn, "background", cmd, 0) == 0;
	free(cmd);
	if (!started) {
		free(j);
		return;
	}
	fcntl(j->ch.out.fd, F_SETFL, O_NONBLOCK);
	fcntl(j->ch.err.fd, F_SETFL, O_NONBLOCK);
	j->id = ++w->jobs.next_id;
	w->jobs.slot[slot] = j;
	reply_begin(&w->conn, &m);
	mp_map_uint(&m, "job", j->id);
	mp_map_int(&m, "pid", j->ch.pid);
	mp_map_end(&m);
	reply_send(&w->conn);
}

/* The slot of the job named by the request's "job" field, or -1 after an error reply. */
static int find_job(struct worker *w, const struct mp_value *req, const char *op)
{
	uint64_t id;

	if (arg_int(&w->conn, mp_map_get(req, "job"), op, "job", &id) < 0)
		return -1;
	for (int i = 0; i < MAX_JOBS; i++)
		if (w->jobs.slot[i] && w->jobs.slot[i]->id == id)
			return i;
	reply_error(&w->conn, 0, "%s: no job %llu in this worker", op, (unsigned long long)id);
	return -1;
}

static void send_stream(struct conn *c, const struct stream *s)
{
	for (size_t off = 0; off < s->len; off += CHUNK)
		reply_partial(c, s->field, s->data + off, s->len - off < CHUNK ? s->len - off : CHUNK);
}

/* {running, exit_code (when ended), truncated}, after the output as partials. */
static void reply_job(struct conn *c, const struct job *j)
{
	struct mp_map m;

	send_stream(c, &j->ch.out);
	send_stream(c, &j->ch.err);
	reply_begin(c, &m);
	mp_map_bool(&m, "running", !j->ch.exited);
	if (j->ch.exited)
		mp_map_int(&m, "exit_code", child_exit_code(&j->ch));
	mp_map_bool(&m, "truncated", j->ch.out.truncated || j->ch.err.truncated);
	mp_map_end(&m);
	reply_send(c);
}

void op_job_wait(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *t = arg_opt(req, "timeout_ms");
	int slot = find_job(w, req, "job_wait");
	long long wait = -1;
	uint64_t timeout;

	if (slot < 0)
		return;
	if (t) {
		if (arg_int(&w->conn, t, "job_wait", "timeout_ms", &timeout) < 0)
			return;
		wait = (long long)(timeout > MAX_WAIT_MS ? MAX_WAIT_MS : timeout);
	}
	child_wait(&w->jobs.slot[slot]->ch, w->chunk, wait);
	reply_job(&w->conn, w->jobs.slot[slot]);
}

void op_job_kill(struct worker *w, const struct mp_value *req)
{
	int slot = find_job(w, req, "job_kill");
	struct job *j;

	if (slot < 0)
		return;
	j = w->jobs.slot[slot];
	child_kill(&j->ch, w->chunk);
	reply_job(&w->conn, j);
	w->jobs.slot[slot] = NULL;
	job_free(j, w->chunk, 0);
}
