/*
 * router.c: the router. One poll() loop over the port (host -> agent), a
 * signalfd for SIGCHLD and every worker socket. Channel 0 is answered here
 * (hello, ping, poweroff); frames for other channels are queued unchanged to
 * that channel's worker process, so a busy worker never blocks the router;
 * frames from workers are written whole to the port. The main worker
 * (channel 1) is started at once and restarted whenever it exits.
 */
#define _GNU_SOURCE
#include "router.h"
#include "frame.h"
#include "message.h"
#include "msgpack.h"
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define MAX_WORKERS 64
#define QUEUE_CAP (16u * 1024 * 1024) /* bytes queued towards one worker */
#define QUEUE_KEEP (1024 * 1024)      /* an empty queue keeps at most this much memory */

/*
 * Bytes waiting to be written to a worker socket: data[start .. start + len).
 * attach_fd, when >= 0, travels (SCM_RIGHTS) with the byte attach_left bytes ahead.
 */
struct outq {
	uint8_t *data;
	size_t start, len, cap;
	int attach_fd;
	size_t attach_left;
};

struct wslot {
	int used;
	uint16_t chan;
	pid_t pid;  /* 0 until a spawned worker reports it */
	int child;  /* the router's own child (the main worker): reaped here */
	int thread; /* a thread worker: it cannot be killed, only disconnected */
	int killed; /* ended by kill_worker: the host knows, no worker_exit event */
	int fd;     /* router end of the socketpair (non-blocking); -1 after EOF */
	int exited; /* reaped: status is valid */
	int status;
	struct frame_reader rd; /* frames from the worker */
	struct outq q;          /* frames to the worker */
};

struct router {
	int in_fd, out_fd; /* the port: guest both the same fd, host mode stdin/stdout */
	int host_mode;
	int sig_fd;        /* signalfd for SIGCHLD */
	int need_main;     /* the main worker could not be started: retry */
	struct timespec last_eof;
	uint16_t next_chan;     /* where the search for a free channel starts */
	int spawning;           /* a spawn is on its way through the main worker */
	uint64_t spawn_id;      /* ... the host's request id */
	uint16_t spawn_chan;    /* ... and the channel it will get */
	struct frame_reader rd; /* frames from the host */
	struct mp_buf out;      /* the router's own replies */
	struct wslot w[MAX_WORKERS];
	struct mp_value nodes[MP_MAX_NODES];
};

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- shutting down (host mode) ---- */

static void __attribute__((noreturn)) host_exit(struct router *r, int code)
{
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct wslot *s = &r->w[i];

		if (s->used && !s->exited) {
			kill(s->pid, SIGKILL);
			while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR)
				;
		}
	}
	exit(code);
}

/* ---- writing to the host ---- */

static void port_send(struct router *r, uint16_t chan, const void *payload, size_t len)
{
	if (frame_write(r->out_fd, chan, payload, len) == 0)
		return;
	fprintf(stderr, "provium-agent: cannot write to the host: %s\n", strerror(errno));
	if (r->host_mode)
		host_exit(r, 1);
}

/* Send the map encoded in r->out. */
static void port_send_out(struct router *r, uint16_t chan)
{
	if (r->out.failed) {
		fprintf(stderr, "provium-agent: out of memory encoding a message\n");
		return;
	}
	port_send(r, chan, r->out.data, r->out.len);
}

static void send_hello_event(struct router *r)
{
	struct mp_map m;

	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_cstr(&m, "event", "hello");
	mp_map_uint(&m, "proto", PROTO_VERSION);
	mp_map_cstr(&m, "agent", AGENT_NAME);
	mp_map_end(&m);
	port_send_out(r, CHAN_ROUTER);
}

/*
 * Answer a frame that cannot be delivered: an error reply if it has an id,
 * else an error event, on the frame's channel.
 */
static void reject(struct router *r, const struct frame *f, const char *text)
{
	struct request rq;
	const char *why;

	if (req_parse(f->payload, f->len, r->nodes, MP_MAX_NODES, &rq, &why) == REQ_NO_ID)
		msg_event_error(&r->out, text);
	else
		msg_error(&r->out, rq.id, 0, "%s", text);
	port_send_out(r, f->chan);
}

/* ---- workers ---- */

/* The forked worker process: keep only the socket (as fd 3) and stderr. */
static void __attribute__((noreturn)) worker_process(int fd, int host_mode)
{
	struct worker *w;
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* SIGPIPE stays ignored: a write to a dead router fails and the worker ends */
	if (fd != 3) {
		if (dup3(fd, 3, O_CLOEXEC) < 0)
			_exit(1);
		fd = 3;
	}
	if (syscall(SYS_close_range, 4U, ~0U, 0U) < 0) {
		long max = sysconf(_SC_OPEN_MAX);

		for (long i = 4; i < (max > 0 && max < 65536 ? max : 65536); i++)
			close((int)i);
	}
	if (host_mode) {
		/* stdin/stdout are the host's pipe: the worker must not hold them */
		int nul = open("/dev/null", O_RDWR);

		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			if (nul > 2)
				close(nul);
		}
	}
	w = malloc(sizeof(*w));
	if (!w || worker_init(w, fd) < 0) {
		fprintf(stderr, "provium-agent: worker: out of memory\n");
		_exit(1);
	}
	worker_loop(w);
	_exit(0);
}

static struct wslot *slot_of_chan(struct router *r, uint16_t chan)
{
	for (int i = 0; i < MAX_WORKERS; i++)
		if (r->w[i].used && r->w[i].chan == chan)
			return &r->w[i];
	return NULL;
}

static int start_worker(struct router *r, uint16_t chan)
{
	struct wslot *s = NULL;
	int sv[2];
	pid_t pid;

	for (int i = 0; i < MAX_WORKERS && !s; i++)
		if (!r->w[i].used)
			s = &r->w[i];
	if (!s) {
		errno = EAGAIN;
		return -1;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	memset(s, 0, sizeof(*s));
	if (frame_reader_init(&s->rd) < 0)
		goto fail;
	pid = fork();
	if (pid < 0) {
		frame_reader_free(&s->rd);
		goto fail;
	}
	if (pid == 0)
		worker_process(sv[1], r->host_mode);
	close(sv[1]);
	fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
	s->used = 1;
	s->child = 1;
	s->chan = chan;
	s->pid = pid;
	s->fd = sv[0];
	s->q.attach_fd = -1;
	return 0;
fail:
	close(sv[0]);
	close(sv[1]);
	return -1;
}

static void start_main(struct router *r)
{
	r->need_main = start_worker(r, CHAN_MAIN) < 0;
	if (r->need_main)
		fprintf(stderr, "provium-agent: cannot start the main worker: %s\n", strerror(errno));
}

static void check_exit(struct wslot *s)
{
	int st;

	if (s->used && !s->child && s->fd < 0) {
		s->exited = 1; /* a spawned worker is not our child: its end is the end of its socket */
		return;
	}
	if (s->used && !s->exited && waitpid(s->pid, &st, WNOHANG) == s->pid) {
		s->exited = 1;
		s->status = st;
	}
}

/* Drop a slot without reporting it (a spawn that did not happen). */
static void forget_slot(struct wslot *s)
{
	if (s->fd >= 0)
		close(s->fd);
	frame_reader_free(&s->rd);
	free(s->q.data);
	if (s->q.attach_fd >= 0)
		close(s->q.attach_fd);
	memset(s, 0, sizeof(*s));
}

/* SIGCHLD: empty the signalfd, then reap whichever workers have exited. */
static void reap(struct router *r)
{
	struct signalfd_siginfo si;

	while (read(r->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		;
	for (int i = 0; i < MAX_WORKERS; i++)
		check_exit(&r->w[i]);
}

/* Workers whose socket reached EOF and which are reaped: report and forget them. */
static void finish_workers(struct router *r)
{
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct wslot *s = &r->w[i];
		uint16_t chan = s->chan;
		struct mp_map m;

		if (!s->used || s->fd >= 0 || !s->exited)
			continue;
		if (s->killed) {
			forget_slot(s);
			continue;
		}
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
		frame_reader_free(&s->rd);
		free(s->q.data);
		if (s->q.attach_fd >= 0)
			close(s->q.attach_fd);
		memset(s, 0, sizeof(*s));
		port_send_out(r, chan);
		if (chan == CHAN_MAIN && r->spawning) {
			struct wslot *pending = slot_of_chan(r, r->spawn_chan);

			r->spawning = 0;
			if (pending)
				forget_slot(pending);
		}
		if (chan == CHAN_MAIN)
			start_main(r);
	}
}

static ssize_t send_with_fd(int sock, const void *p, size_t len, int fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = { (void *)p, len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	memset(control.buf, 0, sizeof(control.buf));
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Write as much of the queue as the socket takes now. */
static void flush(struct wslot *s)
{
	struct outq *q = &s->q;

	while (q->len > 0) {
		ssize_t n;

		if (q->attach_fd >= 0 && q->attach_left == 0) {
			n = send_with_fd(s->fd, q->data + q->start, q->len, q->attach_fd);
			if (n > 0) {
				close(q->attach_fd);
				q->attach_fd = -1;
			}
		} else {
			size_t len = q->attach_fd >= 0 ? q->attach_left : q->len;

			n = send(s->fd, q->data + q->start, len, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n > 0 && q->attach_fd >= 0)
				q->attach_left -= (size_t)n;
		}

		if (n > 0) {
			q->start += (size_t)n;
			q->len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && errno == EAGAIN) {
			return;
		} else {
			q->len = 0; /* the worker is gone: its EOF and exit follow */
			if (q->attach_fd >= 0) {
				close(q->attach_fd);
				q->attach_fd = -1;
			}
		}
	}
	q->start = 0;
	if (q->cap > QUEUE_KEEP) {
		free(q->data);
		q->data = NULL;
		q->cap = 0;
	}
}

static int enqueue(struct outq *q, const uint8_t *p, size_t n)
{
	if (q->start + q->len + n > q->cap && q->start > 0) {
		memmove(q->data, q->data + q->start, q->len);
		q->start = 0;
	}
	if (q->len + n > q->cap) {
		size_t cap = q->cap ? q->cap : 64 * 1024;
		uint8_t *d;

		while (cap < q->len + n)
			cap *= 2;
		d = realloc(q->data, cap);
		if (!d)
			return -1;
		q->data = d;
		q->cap = cap;
	}
	memcpy(q->data + q->start + q->len, p, n);
	q->len += n;
	return 0;
}

/* The main worker's reply to a spawn (channel 0): learn the new worker's pid, or drop its slot. */
static void spawn_replied(struct router *r, const struct frame *f)
{
	const struct mp_value *root = mp_decode(f->payload, f->len, r->nodes, MP_MAX_NODES);
	const struct mp_value *id = mp_map_get(root, "id");
	const struct mp_value *pid = mp_map_get(root, "pid");
	const struct mp_value *tid = mp_map_get(root, "tid");
	struct wslot *s;

	if (!id || id->type != MP_UINT || id->v.u != r->spawn_id)
		return;
	r->spawning = 0;
	s = slot_of_chan(r, r->spawn_chan);
	if (!s)
		return;
	if (pid && pid->type == MP_UINT && tid && tid->type == MP_UINT) {
		s->pid = (pid_t)pid->v.u;
		s->thread = tid->v.u != pid->v.u;
	} else {
		forget_slot(s);
	}
}

/* The worker socket is readable (or hung up): forward its frames to the host. */
static void from_worker(struct router *r, struct wslot *s)
{
	ssize_t n = frame_fill(&s->rd, s->fd, NULL);
	struct frame f;

	if (n > 0) {
		while (frame_next(&s->rd, &f)) {
			if (f.chan == CHAN_ROUTER && s->chan == CHAN_MAIN && r->spawning)
				spawn_replied(r, &f);
			port_send(r, f.chan, f.payload, f.len);
		}
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	/* EOF (or a broken socket): the worker is ending */
	close(s->fd);
	s->fd = -1;
	s->q.len = s->q.start = 0;
	check_exit(s);
}

/* ---- channel 0 ---- */

/* A free channel number >= 2, or 0 when every slot is taken. */
static uint16_t free_channel(struct router *r)
{
	for (int tries = 0; tries < 65534; tries++) {
		uint16_t c = r->next_chan < 2 ? 2 : r->next_chan;

		r->next_chan = c == 65535 ? 2 : c + 1;
		if (!slot_of_chan(r, c))
			return c;
	}
	return 0;
}

/*
 * spawn {thread}: make a socketpair for a new channel and pass one end to the
 * main worker with the request; the main worker starts the new worker and
 * replies on channel 0 (see spawn_replied). 0, or -1 with an error in r->out.
 */
static int spawn(struct router *r, const struct request *rq)
{
	const struct mp_value *thread = mp_map_get(rq->map, "thread");
	struct wslot *main = slot_of_chan(r, CHAN_MAIN), *s = NULL;
	uint8_t hdr[FRAME_HEADER];
	size_t before;
	uint16_t chan;
	struct mp_map m;
	int sv[2];

	if (thread && thread->type != MP_BOOL && thread->type != MP_NIL) {
		msg_error(&r->out, rq->id, 0, "spawn: field 'thread' must be a bool");
		return -1;
	}
	if (!main || main->fd < 0 || r->spawning) {
		msg_error(&r->out, rq->id, EAGAIN, "spawn: %s",
			  r->spawning ? "another spawn is in progress" : "the main worker is not running");
		return -1;
	}
	for (int i = 0; i < MAX_WORKERS && !s; i++)
		if (!r->w[i].used)
			s = &r->w[i];
	chan = s ? free_channel(r) : 0;
	if (!chan) {
		msg_error(&r->out, rq->id, EAGAIN, "spawn: too many workers (%d)", MAX_WORKERS - 1);
		return -1;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		msg_error(&r->out, rq->id, errno, "spawn: socketpair: %s", strerror(errno));
		return -1;
	}
	memset(s, 0, sizeof(*s));
	if (frame_reader_init(&s->rd) < 0) {
		close(sv[0]);
		close(sv[1]);
		msg_error(&r->out, rq->id, ENOMEM, "spawn: out of memory");
		return -1;
	}
	fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
	s->used = 1;
	s->chan = chan;
	s->fd = sv[0];
	s->q.attach_fd = -1;

	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_uint(&m, "id", rq->id);
	mp_map_cstr(&m, "op", "spawn");
	mp_map_bool(&m, "thread", thread && thread->type == MP_BOOL && thread->v.b);
	mp_map_uint(&m, "channel", chan);
	mp_map_end(&m);
	frame_header(hdr, CHAN_ROUTER, (uint32_t)r->out.len);
	before = main->q.len;
	if (r->out.failed || enqueue(&main->q, hdr, sizeof(hdr)) < 0 ||
	    enqueue(&main->q, r->out.data, r->out.len) < 0) {
		main->q.len = before;
		close(sv[1]);
		forget_slot(s);
		msg_error(&r->out, rq->id, ENOMEM, "spawn: out of memory");
		return -1;
	}
	main->q.attach_fd = sv[1];
	main->q.attach_left = before;
	r->spawning = 1;
	r->spawn_id = rq->id;
	r->spawn_chan = chan;
	flush(main);
	return 0;
}

/* set_clock {realtime_ns}: set the guest's wall clock (after a resume it is the snapshot's). */
static void set_clock(struct router *r, const struct request *rq)
{
	const struct mp_value *v = mp_map_get(rq->map, "realtime_ns");
	struct timespec ts;
	struct mp_map m;

	if (!v || v->type != MP_UINT) {
		msg_error(&r->out, rq->id, 0, "set_clock: field 'realtime_ns' must be a non-negative integer");
		return;
	}
	ts.tv_sec = (time_t)(v->v.u / 1000000000u);
	ts.tv_nsec = (long)(v->v.u % 1000000000u);
	if (r->host_mode) {
		/* the host's clock is not ours to set */
	} else if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
		msg_error(&r->out, rq->id, errno, "set_clock: %s", strerror(errno));
		return;
	}
	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_uint(&m, "id", rq->id);
	mp_map_end(&m);
}

/* kill_worker {channel}: end a spawned worker (a thread worker is disconnected). */
static void kill_worker(struct router *r, const struct request *rq)
{
	const struct mp_value *c = mp_map_get(rq->map, "channel");
	struct wslot *s = c && c->type == MP_UINT && c->v.u <= 65535 ? slot_of_chan(r, (uint16_t)c->v.u) : NULL;
	struct mp_map m;

	if (!c || c->type != MP_UINT) {
		msg_error(&r->out, rq->id, 0, "kill_worker: field 'channel' must be an integer");
		return;
	}
	if (!s || s->chan == CHAN_MAIN || s->fd < 0) {
		msg_error(&r->out, rq->id, 0, "kill_worker: no spawned worker on channel %llu",
			  (unsigned long long)c->v.u);
		return;
	}
	if (s->pid > 0 && !s->thread)
		kill(s->pid, SIGKILL);
	s->killed = 1;
	shutdown(s->fd, SHUT_RDWR); /* a thread worker sees EOF and ends */
	close(s->fd);
	s->fd = -1;
	s->q.len = s->q.start = 0;
	check_exit(s);
	mp_buf_reset(&r->out);
	mp_map_begin(&m, &r->out);
	mp_map_uint(&m, "id", rq->id);
	mp_map_end(&m);
}

static void __attribute__((noreturn)) poweroff(struct router *r)
{
	if (r->host_mode)
		host_exit(r, 0);
	sync();
	for (;;) {
		reboot(RB_POWER_OFF);
		fprintf(stderr, "provium-agent: poweroff failed: %s\n", strerror(errno));
		sleep_ms(1000);
	}
}

static void control(struct router *r, const struct frame *f)
{
	const struct mp_value *v;
	struct request rq;
	const char *why;
	struct mp_map m;

	switch (req_parse(f->payload, f->len, r->nodes, MP_MAX_NODES, &rq, &why)) {
	case REQ_NO_ID:
		msg_event_error(&r->out, why);
		port_send_out(r, f->chan);
		return;
	case REQ_NO_OP:
		msg_error(&r->out, rq.id, 0, "%s", why);
		port_send_out(r, f->chan);
		return;
	case REQ_OK:
		break;
	}

	if (req_op_is(&rq, "hello")) {
		v = mp_map_get(rq.map, "proto");
		if (!v || (v->type != MP_UINT && v->type != MP_INT)) {
			msg_error(&r->out, rq.id, 0, "hello: field 'proto' must be an int");
		} else if (v->type != MP_UINT || v->v.u != PROTO_VERSION) {
			msg_error(&r->out, rq.id, 0, "hello: the host speaks proto %lld, this agent speaks %d",
				  v->type == MP_UINT ? (long long)v->v.u : (long long)v->v.i, PROTO_VERSION);
		} else {
			mp_buf_reset(&r->out);
			mp_map_begin(&m, &r->out);
			mp_map_uint(&m, "id", rq.id);
			mp_map_uint(&m, "proto", PROTO_VERSION);
			mp_map_cstr(&m, "agent", AGENT_NAME);
			mp_map_end(&m);
		}
	} else if (req_op_is(&rq, "spawn")) {
		if (spawn(r, &rq) == 0)
			return; /* the main worker replies */
	} else if (req_op_is(&rq, "kill_worker")) {
		kill_worker(r, &rq);
	} else if (req_op_is(&rq, "set_clock")) {
		set_clock(r, &rq);
	} else if (req_op_is(&rq, "ping") || req_op_is(&rq, "poweroff")) {
		mp_buf_reset(&r->out);
		mp_map_begin(&m, &r->out);
		mp_map_uint(&m, "id", rq.id);
		mp_map_end(&m);
	} else {
		msg_error(&r->out, rq.id, 0, "unknown op '%.*s' on channel 0",
			  (int)(rq.op_len > 64 ? 64 : rq.op_len), (const char *)rq.op);
	}
	port_send_out(r, f->chan);
	if (req_op_is(&rq, "poweroff"))
		poweroff(r);
}

/* ---- frames from the host ---- */

static void host_frame(struct router *r, const struct frame *f)
{
	struct wslot *s;
	char text[96];

	if (f->chan == CHAN_ROUTER) {
		control(r, f);
		return;
	}
	s = slot_of_chan(r, f->chan);
	if (!s || s->fd < 0) {
		snprintf(text, sizeof(text), "no worker on channel %u", (unsigned)f->chan);
		reject(r, f, text);
		return;
	}
	if (s->q.len + f->raw_len > QUEUE_CAP) {
		snprintf(text, sizeof(text), "channel %u: the worker's queue is full (16 MiB)", (unsigned)f->chan);
		reject(r, f, text);
		return;
	}
	if (enqueue(&s->q, f->raw, f->raw_len) < 0) {
		snprintf(text, sizeof(text), "channel %u: out of memory", (unsigned)f->chan);
		reject(r, f, text);
		return;
	}
	flush(s);
}

static void from_host(struct router *r)
{
	ssize_t n = frame_fill(&r->rd, r->in_fd, NULL);
	struct timespec now;
	struct frame f;

	if (n > 0) {
		while (frame_next(&r->rd, &f))
			host_frame(r, &f);
		return;
	}
	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN)
			return;
		fprintf(stderr, "provium-agent: cannot read from the host: %s\n", strerror(errno));
		if (r->host_mode)
			host_exit(r, 1);
		sleep_ms(100);
		return;
	}
	/* EOF: the host went away */
	if (r->host_mode)
		host_exit(r, 0);
	frame_reader_reset(&r->rd); /* drop a partially received frame */
	/* If EOFs come back to back (the port does not block while the host is
	 * away, contrary to what was measured), do not spin. */
	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((now.tv_sec - r->last_eof.tv_sec) * 1000 + (now.tv_nsec - r->last_eof.tv_nsec) / 1000000 < 20)
		sleep_ms(20);
	r->last_eof = now;
	send_hello_event(r); /* blocks until the host is back */
}

/* ---- the loop ---- */

static void __attribute__((noreturn)) router_run(int in_fd, int out_fd, int host_mode)
{
	struct pollfd pfd[2 + MAX_WORKERS];
	int slot[2 + MAX_WORKERS];
	struct router *r = calloc(1, sizeof(*r));
	sigset_t chld;

	if (!r || frame_reader_init(&r->rd) < 0) {
		fprintf(stderr, "provium-agent: router: out of memory\n");
		exit(1);
	}
	r->in_fd = in_fd;
	r->out_fd = out_fd;
	r->host_mode = host_mode;
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	r->sig_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	if (r->sig_fd < 0) {
		fprintf(stderr, "provium-agent: signalfd: %s\n", strerror(errno));
		exit(1);
	}

	start_main(r);
	send_hello_event(r);
	for (;;) {
		int n = 0, k;

		pfd[n++] = (struct pollfd){ .fd = r->in_fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = r->sig_fd, .events = POLLIN };
		for (int i = 0; i < MAX_WORKERS; i++) {
			struct wslot *s = &r->w[i];

			if (!s->used || s->fd < 0)
				continue;
			slot[n] = i;
			pfd[n++] = (struct pollfd){ .fd = s->fd, .events = POLLIN | (s->q.len ? POLLOUT : 0) };
		}
		k = poll(pfd, (nfds_t)n, r->need_main ? 100 : -1);
		if (k < 0) {
			if (errno != EINTR) {
				fprintf(stderr, "provium-agent: poll: %s\n", strerror(errno));
				sleep_ms(100);
			}
			continue;
		}
		if (pfd[1].revents)
			reap(r);
		for (int j = 2; j < n; j++) {
			struct wslot *s = &r->w[slot[j]];

			if ((pfd[j].revents & POLLOUT) && s->fd >= 0)
				flush(s);
			if ((pfd[j].revents & (POLLIN | POLLHUP | POLLERR)) && s->fd >= 0)
				from_worker(r, s);
		}
		if (pfd[0].revents)
			from_host(r);
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
