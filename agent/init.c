/*
 * init.c: what the agent does as PID 1 in the guest: mount the pseudo
 * filesystems, attach the console, load the modules listed in
 * /etc/provium/modules, find the virtio port named provium.agent, then fork
 * the router and reap every process forever, restarting the router when it
 * exits. PID 1 never exits and never serves ops itself.
 */
#define _GNU_SOURCE
#include "init.h"
#include "proto.h"
#include "router.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MODULES_FILE "/etc/provium/modules"
#define PORTS_DIR "/sys/class/virtio-ports"
#define PORT_WAIT_MS 10000
#define PORT_POLL_MS 2
#define RESTART_DELAY_MS 100

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- 1. filesystems and console ---- */

static void mount_fs(const char *type, const char *dir, unsigned long flags,
		     const char *data, mode_t mode)
{
	if (mkdir(dir, mode) < 0 && errno != EEXIST)
		fprintf(stderr, "provium-agent: cannot create %s: %s\n", dir, strerror(errno));
	chmod(dir, mode); /* mkdir is subject to the umask; /tmp needs its sticky bit */
	if (mount(type, dir, type, flags, data) < 0 && errno != EBUSY)
		fprintf(stderr, "provium-agent: cannot mount %s on %s: %s\n", type, dir, strerror(errno));
}

/* Open /dev/console on whichever of fds 0-2 are not open. */
static void open_console(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		int c;

		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		c = open("/dev/console", O_RDWR | O_NOCTTY);
		if (c >= 0 && c != fd) {
			dup2(c, fd);
			close(c);
		}
	}
}

static void setup_filesystems(void)
{
	/* /dev first, so that the console (and error messages) work early */
	mount_fs("devtmpfs", "/dev", MS_NOSUID, "mode=0755", 0755);
	open_console();
	mount_fs("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0755);
	mount_fs("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0755);
	mount_fs("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=1777", 01777);
	mount_fs("tmpfs", "/run", MS_NOSUID | MS_NODEV, "mode=0755", 0755);
	mount_fs("devpts", "/dev/pts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666", 0755);
	/* debugfs where the kernel has it: kmemleak, and the files of modules under test */
	if (access("/sys/kernel/debug", F_OK) == 0)
		mount_fs("debugfs", "/sys/kernel/debug", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0700);
}

/* ---- 2. kernel modules ---- */

static void load_module(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int err = 0;

	if (fd < 0) {
		err = errno;
	} else {
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			err = errno;
		close(fd);
	}
	if (err)
		fprintf(stderr, "provium-agent: cannot load %s: %s\n", path, strerror(err));
}

/* One absolute path per line, loaded in order; blank lines and '#' comments are skipped. */
static void load_modules(void)
{
	FILE *f = fopen(MODULES_FILE, "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (!f)
		return; /* no file: no modules */
	while ((n = getline(&line, &cap, f)) >= 0) {
		char *s = line, *e = line + n;

		while (s < e && (*s == ' ' || *s == '\t'))
			s++;
		while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
			e--;
		*e = 0;
		if (*s && *s != '#')
			load_module(s);
	}
	free(line);
	fclose(f);
}

/* ---- 3. the agent port ---- */

/* Does PORTS_DIR/<entry>/name hold PORT_NAME? */
static int port_named(const char *entry)
{
	char path[512], name[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), PORTS_DIR "/%s/name", entry);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, name, sizeof(name) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	while (n > 0 && (name[n - 1] == '\n' || name[n - 1] == ' '))
		n--;
	name[n] = 0;
	return strcmp(name, PORT_NAME) == 0;
}

/* Fill dev with /dev/<entry> of the port named PORT_NAME if it and its node exist. */
static int scan_ports(char *dev, size_t len)
{
	DIR *d = opendir(PORTS_DIR);
	struct dirent *e;
	int found = 0;

	if (!d)
		return 0;
	while (!found && (e = readdir(d))) {
		if (e->d_name[0] == '.' || !port_named(e->d_name))
			continue;
		snprintf(dev, len, "/dev/%s", e->d_name);
		found = access(dev, F_OK) == 0;
	}
	closedir(d);
	return found;
}

/* Wait up to PORT_WAIT_MS for the sysfs entry and the /dev node (devtmpfs is asynchronous). */
static int find_port(char *dev, size_t len)
{
	long long deadline = now_ms() + PORT_WAIT_MS;

	for (;;) {
		if (scan_ports(dev, len))
			return 1;
		if (now_ms() >= deadline)
			return 0;
		sleep_ms(PORT_POLL_MS);
	}
}

/* ---- 4. router and reaping ---- */

static void noop(int sig)
{
	(void)sig;
}

static pid_t spawn_router(const char *dev)
{
	pid_t pid = fork();

	if (pid < 0) {
		fprintf(stderr, "provium-agent: cannot fork the router: %s\n", strerror(errno));
	} else if (pid == 0) {
		sigset_t none;

		signal(SIGCHLD, SIG_DFL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		router_main_guest(dev);
	}
	return pid;
}

static void describe_status(char *buf, size_t len, int st)
{
	if (WIFSIGNALED(st))
		snprintf(buf, len, "killed by signal %d", WTERMSIG(st));
	else
		snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
}

void init_main(void)
{
	char dev[300];
	long long restart_at = 0;
	pid_t router = -1;
	int have_port;
	sigset_t chld;
	struct sigaction sa;

	umask(022);
	clearenv();
	setenv("PATH", AGENT_PATH, 1);
	setenv("HOME", AGENT_HOME, 1);
	if (chdir("/") < 0)
		fprintf(stderr, "provium-agent: cannot chdir to /: %s\n", strerror(errno));

	setup_filesystems();
	load_modules();
	have_port = find_port(dev, sizeof(dev));
	if (!have_port)
		fprintf(stderr, "provium-agent: no virtio port named " PORT_NAME "\n");

	/* SIGCHLD stays blocked and is taken with sigtimedwait(): no lost wakeups */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = noop;
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);

	for (;;) {
		struct timespec wait, *timeout = NULL;
		pid_t pid;
		int st;

		while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
			if (pid == router) {
				char how[64];

				describe_status(how, sizeof(how), st);
				fprintf(stderr, "provium-agent: router exited (%s), restarting\n", how);
				router = -1;
				restart_at = now_ms() + RESTART_DELAY_MS;
			}
		}
		if (have_port && router < 0) {
			long long left = restart_at - now_ms();

			if (left <= 0) {
				router = spawn_router(dev);
				if (router < 0)
					restart_at = now_ms() + RESTART_DELAY_MS;
				continue;
			}
			wait.tv_sec = (time_t)(left / 1000);
			wait.tv_nsec = (long)(left % 1000) * 1000000L;
			timeout = &wait;
		}
		sigtimedwait(&chld, NULL, timeout);
	}
}
