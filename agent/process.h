/*
 * process.h: a child shell (`sh -c cmd`) and its two output pipes, for the
 * ops that run commands (exec.c, jobs.c): starting it, reading its pipes,
 * waiting for it with an optional timeout, killing it. The steps of starting
 * one are shared with the terminal session's shell (pty.c).
 */
#ifndef PROVIUM_PROCESS_H
#define PROVIUM_PROCESS_H

#include "reply.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * One output pipe of a child. What is read is either sent at once as partial
 * replies {field: bin} on to (exec), or, when to is NULL, kept in data, at
 * most JOB_OUTPUT_CAP bytes, the rest dropped and flagged (background jobs).
 */
struct stream {
	int fd;            /* read end, -1 once closed */
	const char *field; /* "stdout" or "stderr" */
	struct conn *to;
	uint8_t *data;
	size_t len, cap;
	int truncated;
};

struct child {
	pid_t pid;
	int pidfd;  /* -1 when the kernel has none: then the child is looked at every 10 ms */
	int exited; /* reaped: status is valid */
	int status;
	struct stream out, err;
};

/*
 * Start `sh -c cmd` in its own session and process group, stdin from
 * /dev/null, stdout and stderr on pipes (streamed to c when stream is set,
 * else kept). 0, or -1 after an error reply on c for op.
 */
int child_start(struct child *ch, struct conn *c, const char *op, const char *cmd, int stream);

/*
 * environ with PATH=AGENT_PATH and each of set[0..n_set) applied: "NAME=value"
 * replaces the variable NAME, "NAME" removes it. NULL when out of memory.
 * Built before vfork (no malloc in the child); free() only the array.
 */
char **child_env(char **set, size_t n_set);

/*
 * Start a child for ch with vfork() and run run(arg) in it; run shares the
 * caller's memory (every signal blocked) until it execs, so it makes only
 * async-signal-safe calls, begins with child_reset and ends in execve or
 * _exit. Returns once the child has exec'd or exited: its pid, with ch->pid
 * and ch->pidfd (-1 without one) set, or -1 (errno).
 */
pid_t child_vfork(struct child *ch, void (*run)(void *arg), void *arg);

/*
 * In a vforked child: a new session, SIGKILL when the worker that forked it
 * ends (best effort), default signal dispositions and an empty signal mask.
 */
void child_reset(void);

/* In a vforked child: execve /bin/sh with argv and env; on failure say so on fd 2 and _exit(127). */
void child_exec(char **argv, char **env) __attribute__((noreturn));

/*
 * Read once from s (at most EXEC_CHUNK bytes into scratch) and send or keep
 * what came; close s on EOF or error. Bytes read, 0 (EOF or closed), or -1 (errno).
 */
ssize_t stream_read(struct stream *s, uint8_t *scratch);

/*
 * Read ch's pipes until it exits or timeout_ms passes (-1: no timeout). When
 * it has exited it is reaped as by child_reap. scratch holds EXEC_CHUNK bytes.
 */
void child_wait(struct child *ch, uint8_t *scratch, long long timeout_ms);

/*
 * Reap ch if it has exited (block: wait until it has). Once reaped its pidfd
 * is closed and what its pipes already hold is read, without waiting for EOF.
 */
void child_reap(struct child *ch, uint8_t *scratch, int block);

/* SIGKILL ch's process group (the shell and what it started) and ch itself, then reap it. */
void child_kill(struct child *ch, uint8_t *scratch);

/* Close what ch still has open and free its buffers (ch itself is the caller's). */
void child_release(struct child *ch);

/* The shell's exit code, 128 + the signal when killed. */
int child_exit_code(const struct child *ch);

#endif
