/*
 * worker.c: the worker loop and its ops: ping, exec, read_file, write_file
 * (docs/protocol.md, "Worker channels"). Replies go back on the channel of the
 * request. No mutable globals: everything is in struct worker.
 */
#define _GNU_SOURCE
#include "worker.h"
#include "message.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* After the shell exits, read at most this much more per pipe (a background
 * process may keep writing into it forever). */
#define DRAIN_MAX (4 * 1024 * 1024)

extern char **environ;

int worker_init(struct worker *w, int fd)
{
	memset(w, 0, sizeof(*w));
	w->fd = fd;
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
	frame_reader_free(&w->rd);
	mp_buf_free(&w->out);
	free(w->chunk);
	w->chunk = NULL;
}

/* ---- replies ---- */

/* Send the map encoded in w->out. */
static void send_out(struct worker *w)
{
	if (w->dead)
		return;
	if (w->out.failed) /* out of memory: try a short error reply instead */
		msg_error(&w->out, w->id, ENOMEM, "reply could not be encoded (out of memory)");
	if (msg_send(w->fd, w->chan, &w->out) < 0)
		w->dead = 1;
}

/* Reply {id, error: printf-style text [, errno: err]} to the current request. */
#define reply_error(w, err, ...) do { \
	msg_error(&(w)->out, (w)->id, (err), __VA_ARGS__); \
	send_out(w); \
} while (0)

/* Start a reply map {id, ...} in w->out. */
static void begin(struct worker *w, struct mp_map *m)
{
	mp_buf_reset(&w->out);
	mp_map_begin(m, &w->out);
	mp_map_uint(m, "id", w->id);
}

static void reply_empty(struct worker *w)
{
	struct mp_map m;

	begin(w, &m);
	mp_map_end(&m);
	send_out(w);
}

/* A reply for a failed syscall: "OP PATH: strerror", errno. */
static void reply_errno(struct worker *w, const char *op, const char *what, int err)
{
	char eb[128];

	reply_error(w, err, "%s %s: %s", op, what, msg_strerror(err, eb, sizeof(eb)));
}

/* A partial reply {id, more: true, field: bin}. */
static void send_partial(struct worker *w, const char *field, const void *p, size_t len)
{
	struct mp_map m;

	begin(w, &m);
	mp_map_bool(&m, "more", 1);
	mp_map_bin(&m, field, p, len);
	mp_map_end(&m);
	send_out(w);
}

/* ---- argument access ---- */

/*
 * A required str argument as a NUL-terminated copy (malloc'd), or NULL after
 * replying with an error (missing, wrong type or embedded NUL).
 */
static char *arg_cstr(struct worker *w, const struct mp_value *req, const char *op, const char *field)
{
	const struct mp_value *v = mp_map_get(req, field);
	char *s;

	if (!v || v->type != MP_STR) {
		reply_error(w, 0, "%s: field '%s' must be a string", op, field);
		return NULL;
	}
	if (memchr(v->v.bytes, 0, v->len)) {
		reply_error(w, 0, "%s: field '%s' must not contain NUL bytes", op, field);
		return NULL;
	}
	s = malloc((size_t)v->len + 1);
	if (!s) {
		reply_error(w, ENOMEM, "%s: out of memory", op);
		return NULL;
	}
	memcpy(s, v->v.bytes, v->len);
	s[v->len] = 0;
	return s;
}

/* An optional argument: absent or nil. */
static const struct mp_value *arg_opt(const struct mp_value *req, const char *field)
{
	const struct mp_value *v = mp_map_get(req, field);

	return v && v->type != MP_NIL ? v : NULL;
}

/* ---- ping ---- */

static void op_ping(struct worker *w)
{
	reply_empty(w);
}

/* ---- exec ---- */

/* environ with PATH replaced by AGENT_PATH; built before fork (no malloc in the child). */
static char **exec_env(void)
{
	size_t n = 0, k = 0;
	char **env;

	while (environ && environ[n])
		n++;
	env = malloc((n + 2) * sizeof(*env));
	if (!env)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "PATH=", 5) != 0)
			env[k++] = environ[i];
	env[k++] = "PATH=" AGENT_PATH;
	env[k] = NULL;
	return env;
}

/* In the forked child: only async-signal-safe calls until execve. */
static void exec_child(const char *cmd, char **env, int out_w, int err_w)
{
	static const char msg[] = "provium-agent: cannot execute /bin/sh\n";
	char *argv[] = { "sh", "-c", (char *)cmd, NULL };
	struct sigaction dfl;
	sigset_t none;
	int o, e, nul;

	setsid();
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* fails harmlessly for SIGKILL, SIGSTOP, 32, 33 */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	/* move the pipe ends above 2 first, in case 0-2 were closed and they got those numbers */
	o = fcntl(out_w, F_DUPFD_CLOEXEC, 3);
	e = fcntl(err_w, F_DUPFD_CLOEXEC, 3);
	nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (o < 0 || e < 0 || nul < 0 || dup2(nul, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
		_exit(127);
	if (chdir("/") < 0)
		_exit(127);
	execve("/bin/sh", argv, env);
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing more to do */
	}
	_exit(127);
}

/* Read once from *fd and stream what came as a partial reply; closes *fd on EOF or error. */
static ssize_t pump(struct worker *w, int *fd, const char *field)
{
	ssize_t n = read(*fd, w->chunk, EXEC_CHUNK);

	if (n > 0) {
		send_partial(w, field, w->chunk, (size_t)n);
	} else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
		close(*fd);
		*fd = -1;
	}
	return n;
}

/* After the shell has exited: read what is already in the pipe, without waiting for EOF. */
static void drain(struct worker *w, int *fd, const char *field)
{
	size_t total = 0;

	if (*fd < 0)
		return;
	fcntl(*fd, F_SETFL, fcntl(*fd, F_GETFL) | O_NONBLOCK);
	while (*fd >= 0 && total < DRAIN_MAX) {
		ssize_t n = pump(w, fd, field);

		if (n < 0 && errno == EAGAIN)
			break;
		if (n > 0)
			total += (size_t)n;
	}
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static void op_exec(struct worker *w, const struct mp_value *req)
{
	char *cmd = arg_cstr(w, req, "exec", "cmd");
	int outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
	int status = 0, exited = 0, pidfd;
	struct mp_map m;
	char **env;
	pid_t pid;

	if (!cmd)
		return;
	env = exec_env();
	if (!env) {
		reply_error(w, ENOMEM, "exec: out of memory");
		free(cmd);
		return;
	}
	if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
		reply_errno(w, "exec", "pipe", errno);
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		reply_errno(w, "exec", "fork", errno);
		goto out;
	}
	if (pid == 0)
		exec_child(cmd, env, outp[1], errp[1]);
	close(outp[1]);
	close(errp[1]);
	outp[1] = errp[1] = -1;

	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	while (!exited) {
		struct pollfd pfd[3] = {
			{ .fd = outp[0], .events = POLLIN },
			{ .fd = errp[0], .events = POLLIN },
			{ .fd = pidfd, .events = POLLIN },
		};
		/* without a pidfd, look at the child every 10 ms */
		int n = poll(pfd, 3, pidfd >= 0 ? -1 : 10);

		if (n < 0 && errno != EINTR)
			break; /* cannot happen with valid fds; fall through to a blocking wait */
		if (n > 0 && pfd[0].revents)
			pump(w, &outp[0], "stdout");
		if (n > 0 && pfd[1].revents)
			pump(w, &errp[0], "stderr");
		if (pidfd < 0 || (n > 0 && pfd[2].revents)) {
			pid_t r = waitpid(pid, &status, pidfd >= 0 ? 0 : WNOHANG);

			if (r == pid)
				exited = 1;
			else if (r < 0 && errno != EINTR)
				break;
		}
	}
	while (!exited) { /* only after an unexpected poll/waitpid error */
		pid_t r = waitpid(pid, &status, 0);

		if (r == pid || (r < 0 && errno != EINTR))
			exited = 1;
	}
	if (pidfd >= 0)
		close(pidfd);
	drain(w, &outp[0], "stdout");
	drain(w, &errp[0], "stderr");

	begin(w, &m);
	if (WIFSIGNALED(status))
		mp_map_int(&m, "exit_code", 128 + WTERMSIG(status));
	else
		mp_map_int(&m, "exit_code", WEXITSTATUS(status));
	mp_map_end(&m);
	send_out(w);
out:
	for (int i = 0; i < 2; i++) {
		if (outp[i] >= 0)
			close(outp[i]);
		if (errp[i] >= 0)
			close(errp[i]);
	}
	free(env);
	free(cmd);
}

/* ---- read_file ---- */

static void op_read_file(struct worker *w, const struct mp_value *req)
{
	char *path = arg_cstr(w, req, "read_file", "path");
	uint64_t total = 0;
	size_t have = 0;
	struct mp_map m;
	int fd;

	if (!path)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		reply_errno(w, "read_file", path, errno);
		free(path);
		return;
	}
	/* st_size is not trusted (/proc files say 0): read until EOF */
	for (;;) {
		ssize_t n = read(fd, w->chunk + have, CHUNK - have);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			reply_errno(w, "read_file", path, errno);
			goto out;
		}
		if (n == 0)
			break;
		have += (size_t)n;
		total += (uint64_t)n;
		if (have == CHUNK) {
			send_partial(w, "data", w->chunk, have);
			have = 0;
		}
	}
	if (have > 0)
		send_partial(w, "data", w->chunk, have);
	begin(w, &m);
	mp_map_uint(&m, "size", total);
	mp_map_end(&m);
	send_out(w);
out:
	close(fd);
	free(path);
}

/* ---- write_file ---- */

static void op_write_file(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *data = mp_map_get(req, "data");
	const struct mp_value *append = arg_opt(req, "append");
	const struct mp_value *mode = arg_opt(req, "mode");
	unsigned int perm = 0644;
	const uint8_t *p;
	size_t left;
	char *path;
	int fd, flags;

	if (!data || data->type != MP_BIN) {
		reply_error(w, 0, "write_file: field 'data' must be bytes (bin)");
		return;
	}
	if (append && append->type != MP_BOOL) {
		reply_error(w, 0, "write_file: field 'append' must be a bool");
		return;
	}
	if (mode) {
		if (mode->type != MP_UINT || mode->v.u > 07777) {
			reply_error(w, 0, "write_file: field 'mode' must be an int from 0 to 0o7777");
			return;
		}
		perm = (unsigned int)mode->v.u;
	}
	path = arg_cstr(w, req, "write_file", "path");
	if (!path)
		return;

	flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY;
	flags |= append && append->v.b ? O_APPEND : O_TRUNC;
	fd = open(path, flags, perm);
	if (fd < 0) {
		reply_errno(w, "write_file", path, errno);
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
			reply_errno(w, "write_file", path, errno);
			close(fd);
			free(path);
			return;
		}
		p += n;
		left -= (size_t)n;
	}
	if (close(fd) < 0)
		reply_errno(w, "write_file", path, errno);
	else
		reply_empty(w);
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
		send_out(w);
		return;
	case REQ_NO_OP:
		w->id = rq.id;
		reply_error(w, 0, "%s", why);
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
	else
		reply_error(w, 0, "unknown op '%.*s'", (int)(rq.op_len > 64 ? 64 : rq.op_len), (const char *)rq.op);
}

void worker_loop(struct worker *w)
{
	struct frame f;

	while (!w->dead && frame_read(&w->rd, w->fd, &f) > 0)
		handle(w, &f);
}
