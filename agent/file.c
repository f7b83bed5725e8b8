/*
 * file.c: the simple ops: ping, read_file (streams the file in partial
 * replies of at most CHUNK bytes) and write_file (create or truncate, or
 * append).
 */
#define _GNU_SOURCE
#include "ops.h"
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

void op_ping(struct worker *w, const struct mp_value *req)
{
	(void)req;
	reply_empty(&w->conn);
}

/* ---- read_file ---- */

/* Stream fd to EOF in partial replies; the total, or -1 after an error reply. */
static int64_t send_file(struct worker *w, int fd, const char *path)
{
	uint64_t total = 0;
	size_t have = 0;

	/* st_size is not trusted (/proc files say 0): read until EOF */
	for (;;) {
		ssize_t n = read(fd, w->chunk + have, CHUNK - have);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			reply_errno(&w->conn, "read_file", path, errno);
			return -1;
		}
		if (n == 0)
			break;
		have += (size_t)n;
		total += (uint64_t)n;
		if (have == CHUNK) {
			reply_partial(&w->conn, "data", w->chunk, have);
			have = 0;
		}
	}
	if (have > 0)
		reply_partial(&w->conn, "data", w->chunk, have);
	return (int64_t)total;
}

void op_read_file(struct worker *w, const struct mp_value *req)
{
	char *path = arg_cstr(&w->conn, req, "read_file", "path");
	struct mp_map m;
	int64_t total;
	int fd;

	if (!path)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		reply_errno(&w->conn, "read_file", path, errno);
		free(path);
		return;
	}
	total = send_file(w, fd, path);
	if (total >= 0) {
		reply_begin(&w->conn, &m);
		mp_map_uint(&m, "size", (uint64_t)total);
		mp_map_end(&m);
		reply_send(&w->conn);
	}
	close(fd);
	free(path);
}

/* ---- write_file ---- */

/* The open(2) flags and mode write_file's request asks for: 0, or -1 after an error reply. */
static int write_flags(struct conn *c, const struct mp_value *req, int *flags, unsigned int *perm)
{
	const struct mp_value *data = mp_map_get(req, "data");
	const struct mp_value *append = arg_opt(req, "append");
	const struct mp_value *mode = arg_opt(req, "mode");

	if (!data || data->type != MP_BIN) {
		reply_error(c, 0, "write_file: field 'data' must be bytes (bin)");
		return -1;
	}
	if (append && append->type != MP_BOOL) {
		reply_error(c, 0, "write_file: field 'append' must be a bool");
		return -1;
	}
	if (mode && (mode->type != MP_UINT || mode->v.u > 07777)) {
		reply_error(c, 0, "write_file: field 'mode' must be an int from 0 to 0o7777");
		return -1;
	}
	*perm = mode ? (unsigned int)mode->v.u : 0644;
	*flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY;
	*flags |= append && append->v.b ? O_APPEND : O_TRUNC;
	return 0;
}

/* Write all of p[0..len) to fd: 0, or an errno. */
static int write_all(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

void op_write_file(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *data = mp_map_get(req, "data");
	unsigned int perm;
	int fd, flags, err;
	char *path;

	if (write_flags(&w->conn, req, &flags, &perm) < 0)
		return;
	path = arg_cstr(&w->conn, req, "write_file", "path");
	if (!path)
		return;
	fd = open(path, flags, perm);
	if (fd < 0) {
		reply_errno(&w->conn, "write_file", path, errno);
		free(path);
		return;
	}
	err = write_all(fd, data->v.bytes, data->len);
	if (err) {
		reply_errno(&w->conn, "write_file", path, err);
		close(fd);
	} else if (close(fd) < 0) {
		reply_errno(&w->conn, "write_file", path, errno);
	} else {
		reply_empty(&w->conn);
	}
	free(path);
}
