/*
 * syscall.c: the raw syscall op. Arguments are integers; some are replaced by
 * pointers to guest copies of buffers sent by the host, and pointer specs patch
 * the address of further buffers into those (docs/protocol.md, "syscall"). The
 * result is the kernel's raw return value (a negative errno on failure), and
 * every buffer is sent back as it is after the call.
 */
#define _GNU_SOURCE
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ARGS 6
#define MAX_PTRS 64
/* Buffers travel back in one reply frame: keep their sum below the frame limit. */
#define MAX_BUF_TOTAL (MAX_PAYLOAD - 64 * 1024)

struct buffer {
	uint8_t *data;
	size_t len;
};

static long raw_syscall(long nr, const uint64_t a[MAX_ARGS])
{
#if defined(__x86_64__)
	register long r10 __asm__("r10") = (long)a[3];
	register long r8 __asm__("r8") = (long)a[4];
	register long r9 __asm__("r9") = (long)a[5];
	long ret;

	__asm__ __volatile__("syscall"
			     : "=a"(ret)
			     : "a"(nr), "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9)
			     : "rcx", "r11", "memory");
	return ret;
#else
	long ret = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);

	return ret == -1 ? -errno : ret;
#endif
}

/* A copy of data in a new buffer of len bytes (zero-filled past data). */
static int make_buffer(struct buffer *b, const struct mp_value *data, size_t len)
{
	b->len = len;
	b->data = calloc(1, len ? len : 1);
	if (!b->data)
		return -1;
	if (data)
		memcpy(b->data, data->v.bytes, data->len < len ? data->len : len);
	return 0;
}

static int is_int(const struct mp_value *v)
{
	return v && (v->type == MP_UINT || v->type == MP_INT);
}

void op_syscall(struct worker *w, const struct mp_value *req)
{
	const struct mp_value *args = mp_map_get(req, "args");
	const struct mp_value *bufs = worker_arg_opt(req, "bufs");
	const struct mp_value *ptrs = worker_arg_opt(req, "ptrs");
	struct buffer buf[MAX_ARGS] = { { 0 } }, ptr[MAX_PTRS] = { { 0 } };
	int buf_of_arg[MAX_ARGS] = { -1, -1, -1, -1, -1, -1 };
	uint64_t a[MAX_ARGS] = { 0 }, nr;
	size_t total = 0;
	uint32_t nbufs = 0, nptrs = 0;
	struct mp_map m;
	long ret;

	if (worker_arg_int(w, mp_map_get(req, "nr"), "syscall", "nr", &nr) < 0)
		return;
	if (!args || args->type != MP_ARRAY || args->len > MAX_ARGS) {
		worker_error(w, 0, "syscall: field 'args' must be an array of at most 6 integers");
		return;
	}
	for (uint32_t i = 0; i < args->len; i++)
		if (worker_arg_int(w, &args->v.items[i], "syscall", "args", &a[i]) < 0)
			return;
	if (bufs && (bufs->type != MP_ARRAY || bufs->len > MAX_ARGS)) {
		worker_error(w, 0, "syscall: field 'bufs' must be an array of [index, bytes] pairs");
		return;
	}
	if (ptrs && (ptrs->type != MP_ARRAY || ptrs->len > MAX_PTRS)) {
		worker_error(w, 0, "syscall: field 'ptrs' must be an array of at most %d pointer specs", MAX_PTRS);
		return;
	}
	nbufs = bufs ? bufs->len : 0;
	nptrs = ptrs ? ptrs->len : 0;

	for (uint32_t i = 0; i < nbufs; i++) {
		const struct mp_value *pair = &bufs->v.items[i];
		const struct mp_value *idx, *data;

		if (pair->type != MP_ARRAY || pair->len != 2 || !is_int(idx = &pair->v.items[0]) ||
		    (data = &pair->v.items[1])->type != MP_BIN) {
			worker_error(w, 0, "syscall: bufs[%u] must be [index, bytes]", i);
			goto out;
		}
		if (idx->type != MP_UINT || idx->v.u >= MAX_ARGS || buf_of_arg[idx->v.u] >= 0) {
			worker_error(w, 0, "syscall: bufs[%u]: argument index must be 0..5 and unique", i);
			goto out;
		}
		total += data->len;
		if (total > MAX_BUF_TOTAL || make_buffer(&buf[i], data, data->len) < 0) {
			worker_error(w, E2BIG, "syscall: buffers exceed %u bytes in all", MAX_BUF_TOTAL);
			goto out;
		}
		buf_of_arg[idx->v.u] = (int)i;
	}
	for (uint32_t i = 0; i < nptrs; i++) {
		const struct mp_value *s = &ptrs->v.items[i];
		const struct mp_value *data = NULL;
		uint64_t target, offset, len;

		if (s->type != MP_ARRAY || s->len != 4 || !is_int(&s->v.items[0]) || !is_int(&s->v.items[1]) ||
		    !is_int(&s->v.items[2]) ||
		    (s->v.items[3].type != MP_NIL && s->v.items[3].type != MP_BIN)) {
			worker_error(w, 0, "syscall: ptrs[%u] must be [buffer index, offset, length, bytes or nil]", i);
			goto out;
		}
		target = s->v.items[0].v.u;
		offset = s->v.items[1].v.u;
		len = s->v.items[2].v.u;
		if (s->v.items[3].type == MP_BIN)
			data = &s->v.items[3];
		if (s->v.items[0].type != MP_UINT || target >= MAX_ARGS || buf_of_arg[target] < 0) {
			worker_error(w, 0, "syscall: ptrs[%u]: no buffer at argument index %lld", i, (long long)target);
			goto out;
		}
		if (s->v.items[1].type != MP_UINT || offset > buf[buf_of_arg[target]].len ||
		    buf[buf_of_arg[target]].len - offset < 8) {
			worker_error(w, 0, "syscall: ptrs[%u]: offset %lld does not leave 8 bytes in a buffer of %zu",
				     i, (long long)offset, buf[buf_of_arg[target]].len);
			goto out;
		}
		if (s->v.items[2].type != MP_UINT || (data && data->len > len)) {
			worker_error(w, 0, "syscall: ptrs[%u]: length must be >= 0 and hold the data", i);
			goto out;
		}
		total += len;
		if (total > MAX_BUF_TOTAL || make_buffer(&ptr[i], data, len) < 0) {
			worker_error(w, E2BIG, "syscall: buffers exceed %u bytes in all", MAX_BUF_TOTAL);
			goto out;
		}
	}
	/* patch pointers in, then hand the buffers to the syscall */
	for (uint32_t i = 0; i < nptrs; i++) {
		const struct mp_value *s = &ptrs->v.items[i];
		uint64_t addr = (uint64_t)(uintptr_t)ptr[i].data;
		struct buffer *into = &buf[buf_of_arg[s->v.items[0].v.u]];

		for (int k = 0; k < 8; k++)
			into->data[s->v.items[1].v.u + (uint64_t)k] = (uint8_t)(addr >> (8 * k));
	}
	for (int i = 0; i < MAX_ARGS; i++)
		if (buf_of_arg[i] >= 0)
			a[i] = (uint64_t)(uintptr_t)buf[buf_of_arg[i]].data;

	ret = raw_syscall((long)nr, a);

	worker_begin(w, &m);
	mp_map_int(&m, "ret", ret);
	mp_map_array(&m, "bufs", nbufs);
	for (uint32_t i = 0; i < nbufs; i++)
		mp_array_bin(&w->out, buf[i].data, buf[i].len);
	mp_map_array(&m, "ptrs", nptrs);
	for (uint32_t i = 0; i < nptrs; i++)
		mp_array_bin(&w->out, ptr[i].data, ptr[i].len);
	mp_map_end(&m);
	worker_send(w);
out:
	for (int i = 0; i < MAX_ARGS; i++)
		free(buf[i].data);
	for (int i = 0; i < MAX_PTRS; i++)
		free(ptr[i].data);
}
