/*
 * pty.c: the interactive terminal session of a worker and its ops. pty_open
 * starts `sh -i` (process.c) as a session leader on a new pseudo-terminal,
 * forked from the worker, so it runs in the worker's context (credentials,
 * sandbox, cwd). What the terminal prints is sent as pty_output events while
 * the worker waits for requests and while pty_write writes; when the shell
 * has exited, pty_exit follows and the session is freed. One session per
 * worker.
 */
#define _GNU_SOURCE
#include "pty.h"
#include "message.h"
#include "ops.h"
#include "process.h"
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* After the shell exits, read at most this much more (a background process may keep printing). */
#define PTY_DRAIN_MAX (4 * 1024 * 1024)

struct pty {
	struct child ch; /* the shell: pid, pidfd, exit status (its streams are unused) */
	int master;      /* the terminal's master end, non-blocking */
	int hup;         /* the master reads EIO: no slave is open any more */
	uint16_t chan;   /* the channel of pty_open: the events go there */
};

/* ---- events ---- */

/* Send the event encoded in c->out on chan (out of memory: it is lost); a failed write ends the worker as a failed reply does. */
static void event_send(struct conn *c, uint16_t chan)
{
	conn_send(c, chan, &c->out);
}

/* Read once from the master and send what came as {event: "pty_output", data}. Bytes read, 0 or -1 (errno). */
static ssize_t read_output(struct pty *p, struct conn *c, uint8_t *scratch)
{
	ssize_t n = read(p->master, scratch, CHUNK);
	struct mp_map m;

	if (n > 0) {
		mp_buf_reset(&c->out);
		mp_map_begin(&m, &c->out);
		mp_map_cstr(&m, "event", "pty_output");
		mp_map_bin(&m, "data", scratch, (size_t)n);
		mp_map_end(&m);
		event_send(c, p->chan);
	} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		p->hup = 1;
	}
	return n;
}

/* The shell has exited: send what the terminal already holds (bounded, without waiting), then pty_exit. */
static void send_exit(struct pty *p, struct conn *c, uint8_t *scratch)
{
	size_t total = 0;
	struct mp_map m;

	while (!p->hup && !c->dead && total < PTY_DRAIN_MAX) {
		ssize_t n = read_output(p, c, scratch);

		if (n < 0 && errno == EAGAIN)
			break;
		if (n > 0)
			total += (size_t)n;
	}
	mp_buf_reset(&c->out);
	mp_map_begin(&m, &c->out);
	mp_map_cstr(&m, "event", "pty_exit");
	mp_map_int(&m, "exit_code", child_exit_code(&p->ch));
	mp_map_end(&m);
	event_send(c, p->chan);
}

/* ---- the session in the worker loop ---- */

static void pty_free(struct pty *p)
{
	child_release(&p->ch);
	close(p->master);
	free(p);
}

int pty_pollfds(const struct pty *p, struct pollfd *pfd)
{
	int n = 0;

	if (p && !p->hup)
		pfd[n++] = (struct pollfd){ .fd = p->master, .events = POLLIN };
	if (p && p->ch.pidfd >= 0)
		pfd[n++] = (struct pollfd){ .fd = p->ch.pidfd, .events = POLLIN };
	return n;
}

void pty_service(struct pty **pp, struct conn *c, uint8_t *scratch, const struct pollfd *pfd, int n)
{
	struct pty *p = *pp;
	int ended = 0;

	if (!p)
		return;
	for (int i = 0; i < n; i++) {
		if (pfd[i].fd == p->master && pfd[i].revents)
			read_output(p, c, scratch);
		else if (pfd[i].fd == p->ch.pidfd && pfd[i].revents)
			ended = 1;
	}
	if (ended || p->ch.pidfd < 0)
		child_reap(&p->ch, scratch, 0);
	if (!p->ch.exited)
		return;
	send_exit(p, c, scratch);
	pty_free(p);
	*pp = NULL;
}

void pty_destroy(struct pty **pp, uint8_t *scratch, int forget)
{
	if (!*pp)
		return;
	if (!forget)
		child_kill(&(*pp)->ch, scratch);
	pty_free(*pp);
	*pp = NULL;
}

/* ---- arguments ---- */

/* The window size of the request's rows and cols into ws: 0, or -1 after an error reply. */
static int winsize_arg(struct conn *c, const struct mp_value *req, const char *op, struct winsize *ws)
{
	uint64_t rows, cols;

	if (arg_int(c, mp_map_get(req, "rows"), op, "rows", &rows) < 0 ||
	    arg_int(c, mp_map_get(req, "cols"), op, "cols", &cols) < 0)
		return -1;
	if (rows > 0xffff || cols > 0xffff) {
		reply_error(c, 0, "%s: fields 'rows' and 'cols' must be from 0 to 65535", op);
		return -1;
	}
	*ws = (struct winsize){ .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	return 0;
}

/*
 * The environment entry "PREFIXvalue" of the optional str or bin argument
 * field (def when it is absent; no entry, NULL, when def is NULL too) into
 * *out, malloc'd. 0, or -1 after an error reply.
 */
static int env_arg(struct conn *c, const struct mp_value *req, const char *field, const char *prefix,
		   const char *def, char **out)
{
	const char *value = def;
	char *given = NULL;

	*out = NULL;
	if (arg_opt(req, field)) {
		given = arg_cstr(c, req, "pty_open", field);
		if (!given)
			return -1;
		value = given;
	}
	if (value) {
		*out = malloc(strlen(prefix) + strlen(value) + 1);
		if (!*out) {
			reply_error(c, ENOMEM, "pty_open: out of memory");
			free(given);
			return -1;
		}
		strcpy(stpcpy(*out, prefix), value);
	}
	free(given);
	return 0;
}

/* ---- the ops ---- */

/* The worker's session, or NULL after an error reply. */
static struct pty *session(struct worker *w, const char *op)
{
	if (!w->pty)
		reply_error(&w->conn, ENOENT, "%s: no terminal session in this worker", op);
	return w->pty;
}

/*
 * A new terminal sized ws: its master (non-blocking) and slave, both
 * close-on-exec and neither the worker's controlling terminal. 0, or -1
 * after an error reply.
 */
static int open_terminal(struct conn *c, const struct winsize *ws, int *master, int *slave)
{
	const char *what;
	char name[64];

	*slave = -1;
	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0) {
		reply_errno(c, "pty_open", "/dev/ptmx", errno);
		return -1;
	}
	if (grantpt(*master) < 0)
		what = "grantpt";
	else if (unlockpt(*master) < 0)
		what = "unlockpt";
	else if (ptsname_r(*master, name, sizeof(name)) != 0) /* sets errno too */
		what = "ptsname";
	else if ((*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0)
		what = name;
	else if (ioctl(*slave, TIOCSWINSZ, ws) < 0)
		what = "TIOCSWINSZ";
	else if (fcntl(*master, F_SETFL, O_NONBLOCK) < 0)
		what = "O_NONBLOCK";
	else
		return 0;
	reply_errno(c, "pty_open", what, errno);
	if (*slave >= 0)
		close(*slave);
	close(*master);
	return -1;
}

struct shell_args {
	int slave;
	char **env;
};

/* In the vforked child: the shell on the slave (async-signal-safe calls only). */
static void __attribute__((noreturn)) shell_child(void *arg)
{
	const struct shell_args *a = arg;
	static const char msg[] = "provium-agent: cannot make the terminal the shell's controlling terminal\n";
	char *argv[] = { "sh", "-i", NULL };
	int t;

	child_reset(); /* a new session, which the terminal can then control */
	t = fcntl(a->slave, F_DUPFD_CLOEXEC, 3); /* above 2 first, in case 0-2 were closed */
	if (t < 0 || dup2(t, 0) < 0 || dup2(t, 1) < 0 || dup2(t, 2) < 0)
		_exit(127);
	if (ioctl(0, TIOCSCTTY, 0) < 0) {
		if (write(2, msg, sizeof(msg) - 1) < 0) {
			/* nothing more to do */
		}
		_exit(127);
	}
	child_exec(argv, a->env);
}

void op_pty_open(struct worker *w, const struct mp_value *req)
{
	struct conn *c = &w->conn;
	char *term = NULL, *ps1 = NULL, *set[5], **env = NULL;
	int master, slave, n_set = 0;
	struct pty *p = NULL;
	struct shell_args args;
	struct winsize ws;
	struct mp_map m;

	if (w->pty) {
		reply_error(c, EBUSY, "pty_open: a terminal session already runs in this worker (pid %d)",
			    (int)w->pty->ch.pid);
		return;
	}
	if (winsize_arg(c, req, "pty_open", &ws) < 0 ||
	    env_arg(c, req, "term", "TERM=", "linux", &term) < 0 ||
	    env_arg(c, req, "prompt", "PS1=", NULL, &ps1) < 0)
		goto out;
	set[n_set++] = term;
	set[n_set++] = "LINES"; /* the size of another terminal, which would override this one's */
	set[n_set++] = "COLUMNS";
	if (ps1)
		set[n_set++] = ps1;
	if (!getenv("HOME"))
		set[n_set++] = "HOME=" AGENT_HOME;
	env = child_env(set, (size_t)n_set);
	p = env ? calloc(1, sizeof(*p)) : NULL;
	if (!p) {
		reply_error(c, ENOMEM, "pty_open: out of memory");
		goto out;
	}
	if (open_terminal(c, &ws, &master, &slave) < 0)
		goto out;
	p->ch = (struct child){ .pidfd = -1, .out.fd = -1, .err.fd = -1 };
	args = (struct shell_args){ .slave = slave, .env = env };
	if (child_vfork(&p->ch, shell_child, &args) < 0) {
		reply_errno(c, "pty_open", "vfork", errno);
		close(slave);
		close(master);
		goto out;
	}
	close(slave);
	p->master = master;
	p->chan = c->chan;
	w->pty = p;
	p = NULL;
	reply_begin(c, &m);
	mp_map_int(&m, "pid", w->pty->ch.pid);
	mp_map_end(&m);
	reply_send(c);
out:
	free(p);
	free(env);
	free(term);
	free(ps1);
}

void op_pty_write(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *data = mp_map_get(req, "data");
	struct conn *c = &w->conn;
	struct pty *p;
	uint32_t off = 0;

	if (!data || data->type != MP_BIN) {
		reply_error(c, 0, "pty_write: field 'data' must be bytes (bin)");
		return;
	}
	p = session(w, "pty_write");
	if (!p)
		return;
	/* keep reading the output meanwhile: the echo of a long write must not fill the terminal */
	while (off < data->len && !c->dead) {
		struct pollfd pfd[2] = {
			{ .fd = p->master, .events = POLLIN | POLLOUT },
			{ .fd = p->ch.pidfd, .events = POLLIN },
		};
		ssize_t n;

		if (p->hup || (poll(pfd, 2, -1) > 0 && pfd[1].revents)) {
			reply_error(c, EPIPE, "pty_write: the terminal session has ended");
			return;
		}
		if (pfd[0].revents & ~POLLOUT) /* output, or a hangup that reading reports */
			read_output(p, c, w->chunk);
		if (!(pfd[0].revents & POLLOUT) || p->hup)
			continue;
		n = write(p->master, data->v.bytes + off, data->len - off);
		if (n > 0)
			off += (uint32_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EINTR)
			p->hup = 1;
	}
	reply_empty(c);
}

void op_pty_resize(struct worker *w, const struct mp_value *req)
{
	struct winsize ws;
	struct pty *p;

	if (winsize_arg(&w->conn, req, "pty_resize", &ws) < 0)
		return;
	p = session(w, "pty_resize");
	if (!p)
		return;
	if (ioctl(p->master, TIOCSWINSZ, &ws) < 0)
		reply_errno(&w->conn, "pty_resize", "TIOCSWINSZ", errno);
	else
		reply_empty(&w->conn);
}
