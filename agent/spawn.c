/*
 * spawn.c: creating workers. The router sends the main worker a spawn request
 * on channel 0 together with one end of a new socketpair (SCM_RIGHTS) and the
 * channel number it chose. A fork worker is a copy of this process (its own
 * pid and fd table) made by a double fork, so that init reaps it; a thread
 * worker is a thread of this process (clone(CLONE_THREAD) through pthreads:
 * same pid, own tid, shared fd table). Either serves the new socket with its
 * own struct worker. The reply {id, channel, pid, tid} goes to the router on
 * channel 0, which learns the pid from it and forwards it to the host.
 * Starting a worker loop here is the one link from an op back to worker.c.
 */
#define _GNU_SOURCE
#include "jobs.h"
#include "ops.h"
#include "pty.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Serve fd as the new worker of slot, reaching the port as the spawning worker does, until its connection ends. */
static void serve(const struct conn *spawner, int fd, int slot)
{
	struct worker *nw = malloc(sizeof(*nw));

	if (!nw || worker_init(nw, fd, spawner->port_fd, spawner->share, slot) < 0) {
		fprintf(stderr, "provium-agent: new worker: out of memory\n");
		free(nw);
		close(fd);
		return;
	}
	worker_loop(nw);
	worker_destroy(nw);
	close(fd);
	free(nw);
}

struct thread_start {
	struct conn spawner; /* a copy of the spawning worker's connection: how to reach the port */
	int fd, slot;
	int report; /* write end of a pipe: the new thread's tid */
};

static void *thread_main(void *arg)
{
	struct thread_start st = *(struct thread_start *)arg;
	pid_t tid = (pid_t)syscall(SYS_gettid);

	free(arg);
	if (write(st.report, &tid, sizeof(tid)) < 0) {
		/* the spawning worker is gone; serve anyway */
	}
	close(st.report);
	serve(&st.spawner, st.fd, st.slot);
	return NULL;
}

/* Read one pid_t from fd; 0 when nothing came. */
static pid_t read_pid(int fd)
{
	pid_t p = 0;
	ssize_t n;

	do
		n = read(fd, &p, sizeof(p));
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)sizeof(p) ? p : 0;
}

static pid_t start_thread(const struct conn *spawner, int fd, int slot, int *err)
{
	struct thread_start *st = malloc(sizeof(*st));
	pthread_attr_t attr;
	pthread_t t;
	int p[2];
	pid_t tid;

	if (!st || pipe2(p, O_CLOEXEC) < 0) {
		*err = st ? errno : ENOMEM;
		free(st);
		return 0;
	}
	st->spawner = *spawner;
	st->fd = fd;
	st->slot = slot;
	st->report = p[1];
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	*err = pthread_create(&t, &attr, thread_main, st);
	pthread_attr_destroy(&attr);
	if (*err) {
		free(st);
		close(p[1]);
		close(p[0]);
		return 0;
	}
	tid = read_pid(p[0]);
	close(p[0]);
	return tid;
}

static pid_t start_process(struct worker *w, int fd, int slot, int *err)
{
	int p[2];
	pid_t mid, pid;

	if (pipe2(p, O_CLOEXEC) < 0) {
		*err = errno;
		return 0;
	}
	mid = fork();
	if (mid < 0) {
		*err = errno;
		close(p[0]);
		close(p[1]);
		return 0;
	}
	if (mid == 0) {
		/* the middle process exits at once, so the worker is reparented to init */
		if (fork() != 0)
			_exit(0);
		pid = getpid();
		close(p[0]);
		if (write(p[1], &pid, sizeof(pid)) < 0)
			_exit(1);
		close(p[1]);
		close(w->conn.fd); /* the parent's connection is not ours */
		jobs_destroy(&w->jobs, w->chunk, 1); /* nor are its jobs: forget them, they are the parent's to kill */
		pty_destroy(&w->pty, w->chunk, 1); /* nor its terminal session */
		serve(&w->conn, fd, slot);
		_exit(0);
	}
	close(p[1]);
	while (waitpid(mid, NULL, 0) < 0 && errno == EINTR)
		;
	pid = read_pid(p[0]);
	close(p[0]);
	if (!pid)
		*err = ECHILD;
	return pid;
}

void op_spawn(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *thread = arg_opt(req, "thread");
	int fd = w->pending_fd, err = 0;
	uint64_t chan, slot;
	pid_t pid, tid;
	struct mp_map m;

	w->pending_fd = -1;
	if (arg_int(&w->conn, mp_map_get(req, "channel"), "spawn", "channel", &chan) < 0 ||
	    arg_int(&w->conn, mp_map_get(req, "slot"), "spawn", "slot", &slot) < 0)
		goto fail;
	if (slot >= MAX_WORKERS) {
		reply_error(&w->conn, 0, "spawn: field 'slot' must be below %d", MAX_WORKERS);
		goto fail;
	}
	if (fd < 0) {
		reply_error(&w->conn, 0, "spawn: no socket came with the request");
		return;
	}
	if (thread && thread->type != MP_BOOL) {
		reply_error(&w->conn, 0, "spawn: field 'thread' must be a bool");
		goto fail;
	}
	if (thread && thread->v.b) {
		pid = getpid();
		tid = start_thread(&w->conn, fd, (int)slot, &err);
	} else {
		pid = tid = start_process(w, fd, (int)slot, &err);
		close(fd);
	}
	if (!tid) {
		reply_errno(&w->conn, "spawn", thread && thread->v.b ? "thread" : "fork", err ? err : EAGAIN);
		return;
	}
	reply_begin(&w->conn, &m);
	mp_map_uint(&m, "channel", chan);
	mp_map_int(&m, "pid", pid);
	mp_map_int(&m, "tid", tid);
	mp_map_end(&m);
	reply_send(&w->conn);
	return;
fail:
	close(fd);
}
