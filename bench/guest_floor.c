/*
 * guest_floor.c: the guest's own floor for starting a shell, timed inside the
 * guest, against which the agent's exec is measured.
 *
 *   guest_floor spawn N        N times: vfork() + execve("/bin/sh", "sh -c true") + waitpid
 *   guest_floor posix_spawn N  the same with posix_spawn()
 *   guest_floor fork N         the same with fork() + execve()
 *
 * Each start is timed with CLOCK_MONOTONIC; prints one line
 * "MODE median_us=X p90_us=Y n=N". "spawn" is the floor: vfork + execve is the
 * fastest honest way to start a shell (glibc's posix_spawn is a vfork-like
 * clone too, plus a stack mmap and a loop over every signal's disposition,
 * and measures slower; fork copies the page tables).
 * Build: cc -static -O2 -o guest_floor bench/guest_floor.c
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static char *shell_argv[] = { "sh", "-c", "true", NULL };

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static pid_t start_vfork(void)
{
	pid_t pid = vfork();

	if (pid == 0) {
		execve("/bin/sh", shell_argv, environ);
		_exit(127);
	}
	return pid;
}

static pid_t start_posix_spawn(void)
{
	pid_t pid;

	return posix_spawn(&pid, "/bin/sh", NULL, NULL, shell_argv, environ) == 0 ? pid : -1;
}

static pid_t start_fork(void)
{
	pid_t pid = fork();

	if (pid == 0) {
		execve("/bin/sh", shell_argv, environ);
		_exit(127);
	}
	return pid;
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	pid_t (*start)(void);
	double *us;
	long n;

	if (argc != 3 || (n = strtol(argv[2], NULL, 10)) <= 0)
		start = NULL;
	else if (strcmp(argv[1], "spawn") == 0)
		start = start_vfork;
	else if (strcmp(argv[1], "posix_spawn") == 0)
		start = start_posix_spawn;
	else if (strcmp(argv[1], "fork") == 0)
		start = start_fork;
	else
		start = NULL;
	if (!start) {
		fprintf(stderr, "usage: %s spawn|posix_spawn|fork N\n", argc > 0 ? argv[0] : "guest_floor");
		return 2;
	}
	us = malloc((size_t)n * sizeof(*us));
	if (!us)
		return 1;
	for (long i = 0; i < n; i++) {
		double t0 = now_us();
		pid_t pid = start();
		int status;

		if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "guest_floor: /bin/sh -c true failed\n");
			return 1;
		}
		us[i] = now_us() - t0;
	}
	qsort(us, (size_t)n, sizeof(*us), by_value);
	printf("%s median_us=%.0f p90_us=%.0f n=%ld\n", argv[1], us[n / 2], us[n * 9 / 10], n);
	return 0;
}
