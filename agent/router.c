/*
 * router.c: the router's loop. One poll() over the port (host -> agent), a
 * signalfd for SIGCHLD and every worker socket. Channel 0 is answered by the
 * router itself (control.c); frames for other channels are sent unchanged
 * to that channel's worker, queued (outq.c) only when its socket is full, so
 * a busy worker never blocks the router. Workers write most of their frames
 * to the port themselves (portshare.h); those they send here are written
 * whole to the port (port.c). The
 * main worker (channel 1) is started here at once and restarted whenever it
 * exits; other workers come through spawn (handshake.c).
 */
#define _GNU_SOURCE
#include "router.h"
#include "router_int.h"
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define QUEUE_CAP (16u * 1024 * 1024) /* bytes queued towards one worker */

/* ---- the main worker ---- */

/* The forked worker process of slot: keep only the socket (as fd 3), the port (as PORT_FD) and stderr. */
static void __attribute__((noreturn)) worker_process(const struct router *r, int fd, int slot, pid_t router)
{
	struct worker *w;
	sigset_t none;
	int sock, port;

	/* Dies with the router: it holds the port too, and a new router cannot open the port while it does */
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != router)
		_exit(0);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* SIGPIPE stays ignored: a write to a dead router fails and the worker ends */
	sock = fcntl(fd, F_DUPFD_CLOEXEC, PORT_FD + 1); /* above both targets first */
	port = fcntl(r->out_fd, F_DUPFD_CLOEXEC, PORT_FD + 1);
	if (sock < 0 || port < 0 || dup3(sock, 3, O_CLOEXEC) < 0 || dup3(port, PORT_FD, O_CLOEXEC) < 0)
		_exit(1);
	if (syscall(SYS_close_range, PORT_FD + 1U, ~0U, 0U) < 0) {
		long max = sysconf(_SC_OPEN_MAX);

		for (long i = PORT_FD + 1; i < (max > 0 && max < 65536 ? max : 65536); i++)
			close((int)i);
	}
	if (r->host_mode) {
		/* stdin/stdout are the host's pipe: the worker holds it only as PORT_FD */
		int nul = open("/dev/null", O_RDWR);

		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			if (nul > 2)
				close(nul);
		}
	}
	w = malloc(sizeof(*w));
	if (!w || worker_init(w, 3, PORT_FD, r->share, slot) < 0) {
		fprintf(stderr, "provium-agent: worker: out of memory\n");
		_exit(1);
	}
	worker_loop(w);
	_exit(0);
}

/* Fork the main worker into a free slot. 0, or -1 (errno). */
static int start_worker(struct router *r)
{
	struct wslot *s = slot_unused(&r->slots);
	int sv[2], err;
	pid_t pid, router;

	if (!s) {
		errno = EAGAIN;
		return -1;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	if (slot_open(s, CHAN_MAIN, sv[0]) < 0) {
		close(sv[0]);
		close(sv[1]);
		errno = ENOMEM;
		return -1;
	}
	port_slot_opened(r, s);
	router = getpid();
	pid = fork();
	if (pid == 0)
		worker_process(r, sv[1], (int)(s - r->slots.w), router);
	err = errno;
	close(sv[1]);
	if (pid < 0) {
		slot_forget(s); /* closes sv[0] */
		errno = err;
		return -1;
	}
	s->child = 1;
	s->pid = pid;
	return 0;
}

static void start_main(struct router *r)
{
	r->need_main = start_worker(r) < 0;
	if (r->need_main)
		fprintf(stderr, "provium-agent: cannot start the main worker: %s\n", strerror(errno));
}

/* ---- workers ending ---- */

/* SIGCHLD: empty the signalfd, then reap whichever workers have exited. */
static void reap(struct router *r)
{
	struct signalfd_siginfo si;

	while (read(r->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		;
	for (int i = 0; i < MAX_WORKERS; i++)
		slot_check_exit(&r->slots.w[i]);
}

/* The event {event: "worker_exit", status, code or signal} for s, in r->out. */
static void exit_event(struct router *r, const struct wslot *s)
{
	struct mp_map m;

	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_cstr(&m, "event", "worker_exit");
	if (!s->child) {
		mp_map_cstr(&m, "status", "ended");
	} else if (WIFSIGNALED(s->status)) {
		mp_map_cstr(&m, "status", "killed");
		mp_map_int(&m, "signal", WTERMSIG(s->status));
	} else {
		mp_map_cstr(&m, "status", "exited");
		mp_map_int(&m, "code", WEXITSTATUS(s->status));
	}
	mp_map_end(&m);
}

/* Workers whose socket reached EOF and which are reaped: report and forget them. */
static void finish_workers(struct router *r)
{
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct wslot *s = &r->slots.w[i];
		uint16_t chan = s->chan;
		int report = !s->killed;

		if (!s->used || s->fd >= 0 || !s->exited)
			continue;
		if (report)
			exit_event(r, s);
		slot_forget(s);
		if (!report)
			continue;
		port_send_out(r, chan);
		if (chan == CHAN_MAIN) {
			spawn_abort(r);
			start_main(r);
		}
	}
}

/* ---- frames ---- */

/* The worker socket is readable (or hung up): forward its frames to the host. */
static void from_worker(struct router *r, struct wslot *s)
{
	ssize_t n = frame_fill(&s->rd, s->fd, NULL);
	struct frame f;

	if (n > 0) {
		while (frame_next(&s->rd, &f)) {
			if (f.chan == CHAN_ROUTER && s->chan == CHAN_MAIN && r->spawning)
				spawn_replied(r, &f);
			port_forward(r, s, &f);
		}
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	slot_disconnect(s); /* EOF (or a broken socket): the worker is ending */
}

/* A frame from the host: channel 0 is ours, the others go to their worker's queue. */
static void host_frame(struct router *r, const struct frame *f)
{
	struct wslot *s;
	char text[96];

	if (f->chan == CHAN_ROUTER) {
		control(r, f);
		return;
	}
	s = slot_of_chan(&r->slots, f->chan);
	if (!s || s->fd < 0)
		snprintf(text, sizeof(text), "no worker on channel %u", (unsigned)f->chan);
	else if (s->q.len + f->raw_len > QUEUE_CAP)
		snprintf(text, sizeof(text), "channel %u: the worker's queue is full (16 MiB)", (unsigned)f->chan);
	else if (outq_send(&s->q, s->fd, f->raw, f->raw_len) < 0)
		snprintf(text, sizeof(text), "channel %u: out of memory", (unsigned)f->chan);
	else
		return;
	port_reject(r, f, text);
}

/* ---- the loop ---- */

static struct router *router_new(int in_fd, int out_fd, int host_mode)
{
	struct router *r = calloc(1, sizeof(*r));
	sigset_t chld;

	if (!r || frame_reader_init(&r->rd) < 0) {
		fprintf(stderr, "provium-agent: router: out of memory\n");
		exit(1);
	}
	r->in_fd = in_fd;
	r->out_fd = out_fd;
	r->host_mode = host_mode;
	r->share = port_share_new();
	if (!r->share)
		fprintf(stderr, "provium-agent: no shared page for the port's lock (%s): workers write through the router\n",
			strerror(errno));
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	r->sig_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	if (r->sig_fd < 0) {
		fprintf(stderr, "provium-agent: signalfd: %s\n", strerror(errno));
		exit(1);
	}
	return r;
}

/* pfd[0] the port, pfd[1] the signalfd, then the connected workers (slot[j]: pfd[j]'s slot). */
static int pollfds(struct router *r, struct pollfd *pfd, int *slot)
{
	int n = 0;

	pfd[n++] = (struct pollfd){ .fd = r->in_fd, .events = POLLIN };
	pfd[n++] = (struct pollfd){ .fd = r->sig_fd, .events = POLLIN };
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct wslot *s = &r->slots.w[i];

		if (!s->used || s->fd < 0)
			continue;
		slot[n] = i;
		pfd[n++] = (struct pollfd){ .fd = s->fd, .events = POLLIN | (s->q.len ? POLLOUT : 0) };
	}
	return n;
}

static void __attribute__((noreturn)) router_run(int in_fd, int out_fd, int host_mode)
{
	struct pollfd pfd[2 + MAX_WORKERS];
	int slot[2 + MAX_WORKERS];
	struct router *r = router_new(in_fd, out_fd, host_mode);

	start_main(r);
	port_hello(r);
	for (;;) {
		int n = pollfds(r, pfd, slot);

		if (poll(pfd, (nfds_t)n, r->need_main ? 100 : -1) < 0) {
			if (errno != EINTR) {
				fprintf(stderr, "provium-agent: poll: %s\n", strerror(errno));
				sleep_ms(100);
			}
			continue;
		}
		if (pfd[1].revents)
			reap(r);
		for (int j = 2; j < n; j++) {
			struct wslot *s = &r->slots.w[slot[j]];

			if ((pfd[j].revents & POLLOUT) && s->fd >= 0)
				outq_flush(&s->q, s->fd);
			if ((pfd[j].revents & (POLLIN | POLLHUP | POLLERR)) && s->fd >= 0)
				from_worker(r, s);
		}
		if (pfd[0].revents)
			port_receive(r, host_frame);
		finish_workers(r);
		if (r->need_main)
			start_main(r);
	}
}

void router_main_guest(const char *dev_path)
{
	int fd = open(dev_path, O_RDWR | O_CLOEXEC | O_NOCTTY);

	if (fd < 0) {
		fprintf(stderr, "provium-agent: cannot open %s: %s\n", dev_path, strerror(errno));
		exit(1);
	}
	router_run(fd, fd, 0);
}

void router_main_host(void)
{
	router_run(0, 1, 1);
}
