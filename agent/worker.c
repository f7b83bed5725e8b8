/*
 * worker.c: the worker loop (requests and background jobs in one poll), op
 * dispatch, the reply and argument helpers every op uses, and the file ops
 * (read_file, write_file). Replies go back on the channel of the request. No
 * mutable globals: everything is in struct worker.
 */
#define _GNU_SOURCE
#include "worker.h"
#include "message.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int worker_init(struct worker *w, int fd)
{
	memset(w, 0, sizeof(*w));
	w->fd = fd;
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
	jobs_destroy(w, 0);
	if (w->pending_fd >= 0)
		close(w->pending_fd);
	frame_reader_free(&w->rd);
	mp_buf_free(&w->out);
	free(w->chunk);
	w->chunk = NULL;
}

/* ---- replies ---- */

/* Send the map encoded in w->out. */
void worker_send(struct worker *w)
{
	if (w->dead)
		return;
	if (w->out.failed) /* out of memory: try a short error reply instead */
		msg_error(&w->out, w->id, ENOMEM, "reply could not be encoded (out of memory)");
	if (msg_send(w->fd, w->chan, &w->out) < 0)
		w->dead = 1;
}

void worker_error(struct worker *w, int err, const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	msg_error(&w->out, w->id, err, "%s", text);
	worker_send(w);
}

/* Start a reply map {id, ...} in w->out. */
void worker_begin(struct worker *w, struct mp_map *m)
{
	mp_buf_reset(&w->out);
	mp_map_begin(m, &w->out);
	mp_map_uint(m, "id", w->id);
}

void worker_reply_empty(struct worker *w)
{
	struct mp_map m;

	worker_begin(w, &m);
	mp_map_end(&m);
	worker_send(w);
}

/* A reply for a failed syscall: "OP PATH: strerror", errno. */
void worker_errno(struct worker *w, const char *op, const char *what, int err)
{
	char eb[128];

	worker_error(w, err, "%s %s: %s", op, what, msg_strerror(err, eb, sizeof(eb)));
}

/* A partial reply {id, more: true, field: bin}. */
void worker_partial(struct worker *w, const char *field, const void *p, size_t len)
{
	struct mp_map m;

	worker_begin(w, &m);
	mp_map_bool(&m, "more", 1);
	mp_map_bin(&m, field, p, len);
	mp_map_end(&m);
	worker_send(w);
}

/* ---- argument access ---- */

/*
 * A required string argument as a NUL-terminated copy (malloc'd), or NULL after
 * replying with an error (missing, wrong type or embedded NUL). A str or a bin
 * is taken byte for byte: commands and paths need not be UTF-8.
 */
char *worker_arg_cstr(struct worker *w, const struct mp_value *req, const char *op, const char *field)
{
	const struct mp_value *v = mp_map_get(req, field);
	char *s;

	if (!v || (v->type != MP_STR && v->type != MP_BIN)) {
		worker_error(w, 0, "%s: field '%s' must be a string", op, field);
		return NULL;
	}
	if (memchr(v->v.bytes, 0, v->len)) {
		worker_error(w, 0, "%s: field '%s' must not contain NUL bytes", op, field);
		return NULL;
	}
	s = malloc((size_t)v->len + 1);
	if (!s) {
		worker_error(w, ENOMEM, "%s: out of memory", op);
		return NULL;
	}
	memcpy(s, v->v.bytes, v->len);
	s[v->len] = 0;
	return s;
}

/* An optional argument: absent or nil. */
const struct mp_value *worker_arg_opt(const struct mp_value *req, const char *field)
{
	const struct mp_value *v = mp_map_get(req, field);

	return v && v->type != MP_NIL ? v : NULL;
}

int worker_arg_int(struct worker *w, const struct mp_value *v, const char *op, const char *field, uint64_t *out)
{
	if (!v || (v->type != MP_UINT && v->type != MP_INT)) {
		worker_error(w, 0, "%s: field '%s' must be an integer", op, field);
		return -1;
	}
	*out = v->type == MP_UINT ? v->v.u : (uint64_t)v->v.i;
	return 0;
}

/* ---- ping ---- */

static void op_ping(struct worker *w)
{
	worker_reply_empty(w);
}

/* ---- read_file ---- */

static void op_read_file(struct worker *w, const struct mp_value *req)
{
	char *path = worker_arg_cstr(w, req, "read_file", "path");
	uint64_t total = 0;
	size_t have = 0;
	struct mp_map m;
	int fd;

	if (!path)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		worker_errno(w, "read_file", path, errno);
		free(path);
		return;
	}
	/* st_size is not trusted (/proc files say 0): read until EOF */
	for (;;) {
		ssize_t n = read(fd, w->chunk + have, CHUNK - have);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			worker_errno(w, "read_file", path, errno);
			goto out;
		}
		if (n == 0)
			break;
		have += (size_t)n;
		total += (uint64_t)n;
		if (have == CHUNK) {
			worker_partial(w, "data", w->chunk, have);
			have = 0;
		}
	}
	if (have > 0)
		worker_partial(w, "data", w->chunk, have);
	worker_begin(w, &m);
	mp_map_uint(&m, "size", total);
	mp_map_end(&m);
	worker_send(w);
out:
	close(fd);
	free(path);
}

/* ---- write_file ---- */

static void op_write_file(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *data = mp_map_get(req, "data");
	const struct mp_value *append = worker_arg_opt(req, "append");
	const struct mp_value *mode = worker_arg_opt(req, "mode");
	unsigned int perm = 0644;
	const uint8_t *p;
	size_t left;
	char *path;
	int fd, flags;

	if (!data || data->type != MP_BIN) {
		worker_error(w, 0, "write_file: field 'data' must be bytes (bin)");
		return;
	}
	if (append && append->type != MP_BOOL) {
		worker_error(w, 0, "write_file: field 'append' must be a bool");
		return;
	}
	if (mode) {
		if (mode->type != MP_UINT || mode->v.u > 07777) {
			worker_error(w, 0, "write_file: field 'mode' must be an int from 0 to 0o7777");
			return;
		}
		perm = (unsigned int)mode->v.u;
	}
	path = worker_arg_cstr(w, req, "write_file", "path");
	if (!path)
		return;

	flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY;
	flags |= append && append->v.b ? O_APPEND : O_TRUNC;
	fd = open(path, flags, perm);
	if (fd < 0) {
		worker_errno(w, "write_file", path, errno);
		free(path);
		return;
	}
	p = data->v.bytes;
	left = data->len;
	while (left > 0) {
		ssize_t n = write(fd, p, left);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			worker_errno(w, "write_file", path, errno);
			close(fd);
			free(path);
			return;
		}
		p += n;
		left -= (size_t)n;
	}
	if (close(fd) < 0)
		worker_errno(w, "write_file", path, errno);
	else
		worker_reply_empty(w);
	free(path);
}

/* ---- the loop ---- */

static void handle(struct worker *w, const struct frame *f)
{
	struct request rq;
	const char *why;

	w->chan = f->chan;
	w->id = 0;
	switch (req_parse(f->payload, f->len, w->nodes, MP_MAX_NODES, &rq, &why)) {
	case REQ_NO_ID:
		msg_event_error(&w->out, why);
		worker_send(w);
		return;
	case REQ_NO_OP:
		w->id = rq.id;
		worker_error(w, 0, "%s", why);
		return;
	case REQ_OK:
		break;
	}
	w->id = rq.id;
	if (req_op_is(&rq, "ping"))
		op_ping(w);
	else if (req_op_is(&rq, "exec"))
		op_exec(w, rq.map);
	else if (req_op_is(&rq, "read_file"))
		op_read_file(w, rq.map);
	else if (req_op_is(&rq, "write_file"))
		op_write_file(w, rq.map);
	else if (req_op_is(&rq, "syscall"))
		op_syscall(w, rq.map);
	else if (req_op_is(&rq, "background"))
		op_background(w, rq.map);
	else if (req_op_is(&rq, "job_wait"))
		op_job_wait(w, rq.map);
	else if (req_op_is(&rq, "job_kill"))
		op_job_kill(w, rq.map);
	else if (req_op_is(&rq, "spawn"))
		op_spawn(w, rq.map);
	else
		worker_error(w, 0, "unknown op '%.*s'", (int)(rq.op_len > 64 ? 64 : rq.op_len), (const char *)rq.op);
}

void worker_loop(struct worker *w)
{
	struct pollfd pfd[1 + 3 * MAX_JOBS];
	struct frame f;

	while (!w->dead) {
		ssize_t got;
		int n;

		while (!w->dead && frame_next(&w->rd, &f))
			handle(w, &f);
		if (w->dead)
			return;
		pfd[0] = (struct pollfd){ .fd = w->fd, .events = POLLIN };
		n = 1 + jobs_pollfds(w, pfd + 1, 3 * MAX_JOBS);
		if (poll(pfd, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		jobs_service(w, pfd + 1, n - 1);
		if (!pfd[0].revents)
			continue;
		got = frame_fill(&w->rd, w->fd, &w->pending_fd);
		if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
			return;
	}
}
