/*
 * process.c: commands run by a worker. exec runs `sh -c` and streams its
 * output until the shell exits; background jobs run the same way but their
 * output is collected (bounded) while the worker serves other requests, and
 * job_wait / job_kill report it. Every command gets its own session and
 * process group, stdin from /dev/null, default signal dispositions.
 */
#define _GNU_SOURCE
#include "message.h"
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* After the shell exits, read at most this much more per pipe (a background
 * process may keep writing into it forever). */
#define DRAIN_MAX (4 * 1024 * 1024)
/* A background job keeps at most this much of each stream; the rest is dropped and flagged. */
#define JOB_OUTPUT_CAP (8u * 1024 * 1024)

extern char **environ;

/* ---- starting a shell ---- */

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
static void __attribute__((noreturn)) exec_child(const char *cmd, char **env, int out_w, int err_w)
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

/*
 * Start `sh -c cmd` with stdout and stderr on pipes. Sets *pid, the read ends
 * and a pidfd (-1 when the kernel has none). 0, or an errno after replying.
 */
static int start_shell(struct worker *w, const char *op, const char *cmd, pid_t *pid, int *out, int *err, int *pidfd)
{
	int outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
	char **env = exec_env();
	int e = 0;

	if (!env) {
		worker_error(w, ENOMEM, "%s: out of memory", op);
		return ENOMEM;
	}
	if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
		e = errno;
		worker_errno(w, op, "pipe", e);
		goto out;
	}
	*pid = fork();
	if (*pid < 0) {
		e = errno;
		worker_errno(w, op, "fork", e);
		goto out;
	}
	if (*pid == 0)
		exec_child(cmd, env, outp[1], errp[1]);
	*out = outp[0];
	*err = errp[0];
	outp[0] = errp[0] = -1;
	*pidfd = (int)syscall(SYS_pidfd_open, *pid, 0);
out:
	for (int i = 0; i < 2; i++) {
		if (outp[i] >= 0)
			close(outp[i]);
		if (errp[i] >= 0)
			close(errp[i]);
	}
	free(env);
	return e;
}

static int exit_code(int status)
{
	return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

/* ---- exec ---- */

/* Read once from *fd and stream what came as a partial reply; closes *fd on EOF or error. */
static ssize_t pump(struct worker *w, int *fd, const char *field)
{
	ssize_t n = read(*fd, w->chunk, EXEC_CHUNK);

	if (n > 0) {
		worker_partial(w, field, w->chunk, (size_t)n);
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

void op_exec(struct worker *w, const struct mp_value *req)
{
	char *cmd = worker_arg_cstr(w, req, "exec", "cmd");
	int out, err, pidfd, status = 0, exited = 0;
	struct mp_map m;
	pid_t pid;

	if (!cmd)
		return;
	if (start_shell(w, "exec", cmd, &pid, &out, &err, &pidfd) != 0) {
		free(cmd);
		return;
	}
	free(cmd);
	while (!exited) {
		struct pollfd pfd[3] = {
			{ .fd = out, .events = POLLIN },
			{ .fd = err, .events = POLLIN },
			{ .fd = pidfd, .events = POLLIN },
		};
		/* without a pidfd, look at the child every 10 ms */
		int n = poll(pfd, 3, pidfd >= 0 ? -1 : 10);

		if (n < 0 && errno != EINTR)
			break; /* cannot happen with valid fds; fall through to a blocking wait */
		if (n > 0 && pfd[0].revents)
			pump(w, &out, "stdout");
		if (n > 0 && pfd[1].revents)
			pump(w, &err, "stderr");
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
	drain(w, &out, "stdout");
	drain(w, &err, "stderr");
	worker_begin(w, &m);
	mp_map_int(&m, "exit_code", exit_code(status));
	mp_map_end(&m);
	worker_send(w);
}

/* ---- background jobs ---- */

struct stream {
	int fd; /* read end, -1 once closed */
	uint8_t *data;
	size_t len, cap;
	int truncated;
};

struct job {
	uint64_t id;
	pid_t pid;
	int pidfd;
	int exited, status;
	struct stream out, err;
};

/* Read what is available from s into its buffer (bounded); close it on EOF. */
static void collect(struct stream *s, uint8_t *scratch)
{
	ssize_t n;

	if (s->fd < 0)
		return;
	n = read(s->fd, scratch, EXEC_CHUNK);
	if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
		close(s->fd);
		s->fd = -1;
		return;
	}
	if (n < 0)
		return;
	if (s->len + (size_t)n > JOB_OUTPUT_CAP) {
		n = (ssize_t)(JOB_OUTPUT_CAP - s->len);
		s->truncated = 1;
	}
	if (s->len + (size_t)n > s->cap) {
		size_t cap = s->cap ? s->cap : EXEC_CHUNK;
		uint8_t *d;

		while (cap < s->len + (size_t)n)
			cap *= 2;
		d = realloc(s->data, cap);
		if (!d) {
			s->truncated = 1;
			return;
		}
		s->data = d;
		s->cap = cap;
	}
	memcpy(s->data + s->len, scratch, (size_t)n);
	s->len += (size_t)n;
}

/* After the shell exited: take what is in the pipe now, then stop listening. */
static void collect_rest(struct stream *s, uint8_t *scratch)
{
	size_t before;

	if (s->fd < 0)
		return;
	fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
	do {
		before = s->len;
		collect(s, scratch);
	} while (s->fd >= 0 && s->len > before && s->len - before <= DRAIN_MAX);
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
	}
}

static void job_reap(struct worker *w, struct job *j, int block)
{
	int status;

	if (j->exited)
		return;
	for (;;) {
		pid_t r = waitpid(j->pid, &status, block ? 0 : WNOHANG);

		if (r == j->pid) {
			j->exited = 1;
			j->status = status;
			break;
		}
		if (r == 0 || (r < 0 && errno != EINTR))
			return;
	}
	if (j->pidfd >= 0) {
		close(j->pidfd);
		j->pidfd = -1;
	}
	collect_rest(&j->out, w->chunk);
	collect_rest(&j->err, w->chunk);
}

/* Free a job; a running one is killed first unless it belongs to another process (forget). */
static void job_free(struct job *j, int forget)
{
	if (!j->exited && !forget) {
		kill(-j->pid, SIGKILL);
		kill(j->pid, SIGKILL);
		while (waitpid(j->pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (j->pidfd >= 0)
		close(j->pidfd);
	if (j->out.fd >= 0)
		close(j->out.fd);
	if (j->err.fd >= 0)
		close(j->err.fd);
	free(j->out.data);
	free(j->err.data);
	free(j);
}

int jobs_pollfds(struct worker *w, struct pollfd *pfd, int max)
{
	int n = 0;

	for (int i = 0; i < MAX_JOBS && n + 3 <= max; i++) {
		struct job *j = w->jobs[i];

		if (!j || j->exited)
			continue;
		pfd[n++] = (struct pollfd){ .fd = j->out.fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = j->err.fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = j->pidfd, .events = POLLIN };
	}
	return n;
}

/* pfd as filled by jobs_pollfds: read what is ready, reap jobs that ended. */
void jobs_service(struct worker *w, const struct pollfd *pfd, int n)
{
	int k = 0;

	for (int i = 0; i < MAX_JOBS && k < n; i++) {
		struct job *j = w->jobs[i];

		if (!j || j->exited)
			continue;
		if (pfd[k].revents)
			collect(&j->out, w->chunk);
		if (pfd[k + 1].revents)
			collect(&j->err, w->chunk);
		if (pfd[k + 2].revents || j->pidfd < 0)
			job_reap(w, j, 0);
		k += 3;
	}
}

void jobs_destroy(struct worker *w, int forget)
{
	for (int i = 0; i < MAX_JOBS; i++) {
		if (w->jobs[i])
			job_free(w->jobs[i], forget);
		w->jobs[i] = NULL;
	}
}

void op_background(struct worker *w, const struct mp_value *req)
{
	char *cmd = worker_arg_cstr(w, req, "background", "cmd");
	struct job *j;
	struct mp_map m;
	int slot = -1;

	if (!cmd)
		return;
	for (int i = 0; i < MAX_JOBS && slot < 0; i++)
		if (!w->jobs[i])
			slot = i;
	if (slot < 0) { /* full: forget the oldest job that has ended */
		for (int i = 0; i < MAX_JOBS; i++)
			if (w->jobs[i]->exited && (slot < 0 || w->jobs[i]->id < w->jobs[slot]->id))
				slot = i;
		if (slot >= 0) {
			job_free(w->jobs[slot], 0);
			w->jobs[slot] = NULL;
		}
	}
	j = slot >= 0 ? calloc(1, sizeof(*j)) : NULL;
	if (!j) {
		worker_error(w, slot < 0 ? EAGAIN : ENOMEM, "background: %s",
			     slot < 0 ? "too many running jobs (64)" : "out of memory");
		free(cmd);
		return;
	}
	if (start_shell(w, "background", cmd, &j->pid, &j->out.fd, &j->err.fd, &j->pidfd) != 0) {
		free(j);
		free(cmd);
		return;
	}
	free(cmd);
	fcntl(j->out.fd, F_SETFL, O_NONBLOCK);
	fcntl(j->err.fd, F_SETFL, O_NONBLOCK);
	j->id = ++w->next_job;
	w->jobs[slot] = j;
	worker_begin(w, &m);
	mp_map_uint(&m, "job", j->id);
	mp_map_int(&m, "pid", j->pid);
	mp_map_end(&m);
	worker_send(w);
}

/* The job named by the request's "job" field, or NULL after an error reply. */
static struct job *find_job(struct worker *w, const struct mp_value *req, const char *op, int *slot)
{
	uint64_t id;

	if (worker_arg_int(w, mp_map_get(req, "job"), op, "job", &id) < 0)
		return NULL;
	for (int i = 0; i < MAX_JOBS; i++) {
		if (w->jobs[i] && w->jobs[i]->id == id) {
			*slot = i;
			return w->jobs[i];
		}
	}
	worker_error(w, 0, "%s: no job %llu in this worker", op, (unsigned long long)id);
	return NULL;
}

static void send_stream(struct worker *w, const char *field, const struct stream *s)
{
	for (size_t off = 0; off < s->len; off += CHUNK)
		worker_partial(w, field, s->data + off, s->len - off < CHUNK ? s->len - off : CHUNK);
}

/* {running, exit_code (when ended), truncated}, after the output as partials. */
static void reply_job(struct worker *w, const struct job *j)
{
	struct mp_map m;

	send_stream(w, "stdout", &j->out);
	send_stream(w, "stderr", &j->err);
	worker_begin(w, &m);
	mp_map_bool(&m, "running", !j->exited);
	if (j->exited)
		mp_map_int(&m, "exit_code", exit_code(j->status));
	mp_map_bool(&m, "truncated", j->out.truncated || j->err.truncated);
	mp_map_end(&m);
	worker_send(w);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void op_job_wait(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *t = worker_arg_opt(req, "timeout_ms");
	long long deadline = -1;
	uint64_t timeout;
	struct job *j;
	int slot;

	if (!(j = find_job(w, req, "job_wait", &slot)))
		return;
	if (t) {
		if (worker_arg_int(w, t, "job_wait", "timeout_ms", &timeout) < 0)
			return;
		deadline = now_ms() + (long long)(timeout > 86400000ULL ? 86400000ULL : timeout);
	}
	while (!j->exited) {
		struct pollfd pfd[3] = {
			{ .fd = j->out.fd, .events = POLLIN },
			{ .fd = j->err.fd, .events = POLLIN },
			{ .fd = j->pidfd, .events = POLLIN },
		};
		int wait = -1, n;

		if (deadline >= 0) {
			long long left = deadline - now_ms();

			wait = left <= 0 ? 0 : left > 1000000 ? 1000000 : (int)left;
		}
		if (j->pidfd < 0 && (wait < 0 || wait > 10))
			wait = 10; /* no pidfd: look at the child every 10 ms */
		n = poll(pfd, 3, wait);
		if (n < 0 && errno != EINTR)
			break;
		if (n > 0 && pfd[0].revents)
			collect(&j->out, w->chunk);
		if (n > 0 && pfd[1].revents)
			collect(&j->err, w->chunk);
		job_reap(w, j, 0);
		if (deadline >= 0 && now_ms() >= deadline)
			break;
	}
	reply_job(w, j);
}

void op_job_kill(struct worker *w, const struct mp_value *req)
{
	struct job *j;
	int slot;

	if (!(j = find_job(w, req, "job_kill", &slot)))
		return;
	if (!j->exited) {
		kill(-j->pid, SIGKILL); /* the whole process group: the shell and what it started */
		kill(j->pid, SIGKILL);
		job_reap(w, j, 1);
	}
	reply_job(w, j);
	w->jobs[slot] = NULL;
	job_free(j, 0);
}
