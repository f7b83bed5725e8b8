/*
 * process.c: child shells for the ops that run commands (see process.h).
 * Every command gets its own session and process group, stdin from
 * /dev/null, default signal dispositions and PATH=AGENT_PATH.
 */
#define _GNU_SOURCE
#include "process.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
/* A kept stream holds at most this much; the rest is dropped and flagged. */
#define JOB_OUTPUT_CAP (8u * 1024 * 1024)
/* The longest a wait sleeps in one poll (ms). */
#define POLL_MAX_MS 1000000
/* Without a pidfd, a waiting child is looked at this often (ms). */
#define NO_PIDFD_POLL_MS 10

extern char **environ;

/* ---- starting a shell ---- */

/* Whether the environment entry var ("NAME=value") is the variable set names ("NAME=value" or "NAME"). */
static int same_name(const char *var, const char *set)
{
	size_t n = strcspn(set, "=");

	return strncmp(var, set, n) == 0 && var[n] == '=';
}

char **child_env(char **set, size_t n_set)
{
	size_t n = 0, k = 0;
	char **env;

	while (environ && environ[n])
		n++;
	env = malloc((n + n_set + 2) * sizeof(*env));
	if (!env)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		int replaced = strncmp(environ[i], "PATH=", 5) == 0;

		for (size_t j = 0; j < n_set && !replaced; j++)
			replaced = same_name(environ[i], set[j]);
		if (!replaced)
			env[k++] = environ[i];
	}
	env[k++] = "PATH=" AGENT_PATH;
	for (size_t j = 0; j < n_set; j++)
		if (strchr(set[j], '='))
			env[k++] = set[j];
	env[k] = NULL;
	return env;
}

void child_reset(void)
{
	struct sigaction dfl;
	sigset_t none;

	setsid();
	/*
	 * Killed with the worker that started it (a worker killed by the host cannot clean
	 * up). Best effort: a seccomp filter the test gave the worker may refuse prctl (or
	 * getppid, so no check follows), and a worker killed in the instants before this
	 * call leaves the command running.
	 */
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* fails harmlessly for SIGKILL, SIGSTOP, 32, 33 */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

void child_exec(char **argv, char **env)
{
	static const char msg[] = "provium-agent: cannot execute /bin/sh\n";

	execve("/bin/sh", argv, env);
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing more to do */
	}
	_exit(127);
}

pid_t child_vfork(struct child *ch, void (*run)(void *arg), void *arg)
{
	sigset_t all, old;
	pid_t pid;
	int err;

	/* no signal handler may run in the child while it shares our memory: child_reset unblocks */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pid = vfork();
	if (pid == 0)
		run(arg);
	err = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	ch->pid = pid;
	if (pid > 0)
		ch->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	errno = err;
	return pid;
}

struct exec_args {
	const char *cmd;
	char **env;
	int out_w, err_w;
};

/* In the vforked child: only async-signal-safe calls until execve. */
static void __attribute__((noreturn)) exec_child(void *arg)
{
	const struct exec_args *a = arg;
	char *argv[] = { "sh", "-c", (char *)a->cmd, NULL };
	int o, e, nul;

	child_reset();
	/* move the pipe ends above 2 first, in case 0-2 were closed and they got those numbers */
	o = fcntl(a->out_w, F_DUPFD_CLOEXEC, 3);
	e = fcntl(a->err_w, F_DUPFD_CLOEXEC, 3);
	nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (o < 0 || e < 0 || nul < 0 || dup2(nul, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
		_exit(127);
	if (chdir("/") < 0)
		_exit(127);
	child_exec(argv, a->env);
}

int child_start(struct child *ch, struct conn *c, const char *op, const char *cmd, int stream)
{
	int outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
	char **env = child_env(NULL, 0);
	struct exec_args args;
	int ret = -1;

	*ch = (struct child){
		.pidfd = -1,
		.out = { .fd = -1, .field = "stdout", .to = stream ? c : NULL },
		.err = { .fd = -1, .field = "stderr", .to = stream ? c : NULL },
	};
	if (!env) {
		reply_error(c, ENOMEM, "%s: out of memory", op);
		return -1;
	}
	if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
		reply_errno(c, op, "pipe", errno);
		goto out;
	}
	args = (struct exec_args){ .cmd = cmd, .env = env, .out_w = outp[1], .err_w = errp[1] };
	if (child_vfork(ch, exec_child, &args) < 0) {
		reply_errno(c, op, "vfork", errno);
		goto out;
	}
	ch->out.fd = outp[0];
	ch->err.fd = errp[0];
	outp[0] = errp[0] = -1;
	ret = 0;
out:
	for (int i = 0; i < 2; i++) {
		if (outp[i] >= 0)
			close(outp[i]);
		if (errp[i] >= 0)
			close(errp[i]);
	}
	free(env);
	return ret;
}

/* ---- reading the pipes ---- */

static void stream_close(struct stream *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

/* Append p[0..n) to s->data, up to JOB_OUTPUT_CAP; what does not fit is dropped and flagged. */
static void stream_keep(struct stream *s, const uint8_t *p, size_t n)
{
	if (s->len + n > JOB_OUTPUT_CAP) {
		n = JOB_OUTPUT_CAP - s->len;
		s->truncated = 1;
	}
	if (s->len + n > s->cap) {
		size_t cap = s->cap ? s->cap : EXEC_CHUNK;
		uint8_t *d;

		while (cap < s->len + n)
			cap *= 2;
		d = realloc(s->data, cap);
		if (!d) {
			s->truncated = 1;
			return;
		}
		s->data = d;
		s->cap = cap;
	}
	memcpy(s->data + s->len, p, n);
	s->len += n;
}

ssize_t stream_read(struct stream *s, uint8_t *scratch)
{
	ssize_t n;

	if (s->fd < 0)
		return 0;
	n = read(s->fd, scratch, EXEC_CHUNK);
	if (n > 0 && s->to)
		reply_partial(s->to, s->field, scratch, (size_t)n);
	else if (n > 0)
		stream_keep(s, scratch, (size_t)n);
	else if (n == 0 || (errno != EINTR && errno != EAGAIN))
		stream_close(s);
	return n;
}

/* After the shell has exited: read what is already in the pipe (bounded), without waiting for EOF. */
static void stream_drain(struct stream *s, uint8_t *scratch)
{
	size_t total = 0;

	if (s->fd < 0)
		return;
	fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
	while (s->fd >= 0 && total < DRAIN_MAX) {
		ssize_t n = stream_read(s, scratch);

		if (n < 0 && errno == EAGAIN)
			break;
		if (n > 0)
			total += (size_t)n;
	}
	stream_close(s);
}

/* ---- waiting ---- */

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void child_reap(struct child *ch, uint8_t *scratch, int block)
{
	int status;

	if (ch->exited)
		return;
	for (;;) {
		pid_t r = waitpid(ch->pid, &status, block ? 0 : WNOHANG);

		if (r == ch->pid) {
			ch->exited = 1;
			ch->status = status;
			break;
		}
		if (r == 0 || (r < 0 && errno != EINTR))
			return;
	}
	if (ch->pidfd >= 0) {
		close(ch->pidfd);
		ch->pidfd = -1;
	}
	stream_drain(&ch->out, scratch);
	stream_drain(&ch->err, scratch);
}

/* How long the next poll may sleep before deadline (-1: none), in ms (-1: forever). */
static int poll_wait(const struct child *ch, long long deadline)
{
	int wait = -1;

	if (deadline >= 0) {
		long long left = deadline - now_ms();

		wait = left <= 0 ? 0 : left > POLL_MAX_MS ? POLL_MAX_MS : (int)left;
	}
	if (ch->pidfd < 0 && (wait < 0 || wait > NO_PIDFD_POLL_MS))
		wait = NO_PIDFD_POLL_MS;
	return wait;
}

void child_wait(struct child *ch, uint8_t *scratch, long long timeout_ms)
{
	long long deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;

	while (!ch->exited) {
		struct pollfd pfd[3] = {
			{ .fd = ch->out.fd, .events = POLLIN },
			{ .fd = ch->err.fd, .events = POLLIN },
			{ .fd = ch->pidfd, .events = POLLIN },
		};
		int n = poll(pfd, 3, poll_wait(ch, deadline));

		if (n < 0 && errno != EINTR)
			break; /* cannot happen with valid fds */
		if (n > 0 && pfd[0].revents)
			stream_read(&ch->out, scratch);
		if (n > 0 && pfd[1].revents)
			stream_read(&ch->err, scratch);
		child_reap(ch, scratch, 0);
		if (deadline >= 0 && now_ms() >= deadline)
			break;
	}
}

void child_kill(struct child *ch, uint8_t *scratch)
{
	if (ch->exited)
		return;
	kill(-ch->pid, SIGKILL); /* the whole process group: the shell and what it started */
	kill(ch->pid, SIGKILL);
	child_reap(ch, scratch, 1);
}

void child_release(struct child *ch)
{
	if (ch->pidfd >= 0)
		close(ch->pidfd);
	ch->pidfd = -1;
	stream_close(&ch->out);
	stream_close(&ch->err);
	free(ch->out.data);
	free(ch->err.data);
	ch->out.data = ch->err.data = NULL;
}

int child_exit_code(const struct child *ch)
{
	return WIFSIGNALED(ch->status) ? 128 + WTERMSIG(ch->status) : WEXITSTATUS(ch->status);
}
