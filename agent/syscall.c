/*
 * syscall.c: the raw syscall op. Arguments are integers; some are replaced by
 * pointers to guest copies of buffers sent by the host, and pointer specs patch
 * the address of further buffers into those (docs/protocol.md, "syscall"). The
 * result is the kernel's raw return value (a negative errno on failure), and
 * every buffer is sent back as it is after the call.
 */
#define _GNU_SOURCE
#include "ops.h"
#include "proto.h"
#include "worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_PTRS 64
/* Buffers travel back in one reply frame: keep their sum below the frame limit. */
#define MAX_BUF_TOTAL (MAX_PAYLOAD - 64 * 1024)

struct buffer {
	uint8_t *data;
	size_t len;
};

/* One syscall request, parsed. */
struct call {
	uint64_t nr, a[SYSCALL_MAX_ARGS];
	const struct mp_value *bufs, *ptrs; /* as sent, checked by parse_call */
	uint32_t nbufs, nptrs;
	struct buffer buf[SYSCALL_MAX_ARGS], ptr[MAX_PTRS];
	int buf_of_arg[SYSCALL_MAX_ARGS]; /* index into buf, or -1 */
	size_t total;                     /* bytes in buf and ptr */
};

static long raw_syscall(long nr, const uint64_t a[SYSCALL_MAX_ARGS])
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

static int is_int(const struct mp_value *v)
{
	return v && (v->type == MP_UINT || v->type == MP_INT);
}

/* A copy of data in a new buffer b of len bytes (zero-filled past data), within MAX_BUF_TOTAL. 0, or -1 after an error reply. */
static int make_buffer(struct conn *c, struct call *k, struct buffer *b, const struct mp_value *data, size_t len)
{
	k->total += len;
	if (k->total <= MAX_BUF_TOTAL) {
		b->len = len;
		b->data = calloc(1, len ? len : 1);
	}
	if (!b->data) {
		reply_error(c, E2BIG, "syscall: buffers exceed %u bytes in all", MAX_BUF_TOTAL);
		return -1;
	}
	if (data)
		memcpy(b->data, data->v.bytes, data->len < len ? data->len : len);
	return 0;
}

/* nr, args and the shape of bufs and ptrs. 0, or -1 after an error reply. */
static int parse_call(struct conn *c, const struct mp_value *req, struct call *k)
{
	const struct mp_value *args = mp_map_get(req, "args");

	if (arg_int(c, mp_map_get(req, "nr"), "syscall", "nr", &k->nr) < 0)
		return -1;
	if (!args || args->type != MP_ARRAY || args->len > SYSCALL_MAX_ARGS) {
		reply_error(c, 0, "syscall: field 'args' must be an array of at most %d integers", SYSCALL_MAX_ARGS);
		return -1;
	}
	for (uint32_t i = 0; i < args->len; i++)
		if (arg_int(c, &args->v.items[i], "syscall", "args", &k->a[i]) < 0)
			return -1;
	k->bufs = arg_opt(req, "bufs");
	k->ptrs = arg_opt(req, "ptrs");
	if (k->bufs && (k->bufs->type != MP_ARRAY || k->bufs->len > SYSCALL_MAX_ARGS)) {
		reply_error(c, 0, "syscall: field 'bufs' must be an array of [index, bytes] pairs");
		return -1;
	}
	if (k->ptrs && (k->ptrs->type != MP_ARRAY || k->ptrs->len > MAX_PTRS)) {
		reply_error(c, 0, "syscall: field 'ptrs' must be an array of at most %d pointer specs", MAX_PTRS);
		return -1;
	}
	k->nbufs = k->bufs ? k->bufs->len : 0;
	k->nptrs = k->ptrs ? k->ptrs->len : 0;
	return 0;
}

/* bufs: each [index, bytes] into a buffer for argument index. 0, or -1 after an error reply. */
static int parse_bufs(struct conn *c, struct call *k)
{
	for (uint32_t i = 0; i < k->nbufs; i++) {
		const struct mp_value *pair = &k->bufs->v.items[i];
		const struct mp_value *idx, *data;

		if (pair->type != MP_ARRAY || pair->len != 2 || !is_int(idx = &pair->v.items[0]) ||
		    (data = &pair->v.items[1])->type != MP_BIN) {
			reply_error(c, 0, "syscall: bufs[%u] must be [index, bytes]", i);
			return -1;
		}
		if (idx->type != MP_UINT || idx->v.u >= SYSCALL_MAX_ARGS || k->buf_of_arg[idx->v.u] >= 0) {
			reply_error(c, 0, "syscall: bufs[%u]: argument index must be 0..%d and unique", i,
				    SYSCALL_MAX_ARGS - 1);
			return -1;
		}
		if (make_buffer(c, k, &k->buf[i], data, data->len) < 0)
			return -1;
		k->buf_of_arg[idx->v.u] = (int)i;
	}
	return 0;
}

/* ptrs: each [buffer index, offset, length, bytes or nil] into a buffer of its own. 0, or -1 after an error reply. */
static int parse_ptrs(struct conn *c, struct call *k)
{
	for (uint32_t i = 0; i < k->nptrs; i++) {
		const struct mp_value *s = &k->ptrs->v.items[i];
		const struct mp_value *data = NULL;
		uint64_t target, offset, len;
		size_t into;

		if (s->type != MP_ARRAY || s->len != 4 || !is_int(&s->v.items[0]) || !is_int(&s->v.items[1]) ||
		    !is_int(&s->v.items[2]) ||
		    (s->v.items[3].type != MP_NIL && s->v.items[3].type != MP_BIN)) {
			reply_error(c, 0, "syscall: ptrs[%u] must be [buffer index, offset, length, bytes or nil]", i);
			return -1;
		}
		target = s->v.items[0].v.u;
		offset = s->v.items[1].v.u;
		len = s->v.items[2].v.u;
		if (s->v.items[3].type == MP_BIN)
			data = &s->v.items[3];
		if (s->v.items[0].type != MP_UINT || target >= SYSCALL_MAX_ARGS || k->buf_of_arg[target] < 0) {
			reply_error(c, 0, "syscall: ptrs[%u]: no buffer at argument index %lld", i, (long long)target);
			return -1;
		}
		into = k->buf[k->buf_of_arg[target]].len;
		if (s->v.items[1].type != MP_UINT || offset > into || into - offset < 8) {
			reply_error(c, 0, "syscall: ptrs[%u]: offset %lld does not leave 8 bytes in a buffer of %zu",
				    i, (long long)offset, into);
			return -1;
		}
		if (s->v.items[2].type != MP_UINT || (data && data->len > len)) {
			reply_error(c, 0, "syscall: ptrs[%u]: length must be >= 0 and hold the data", i);
			return -1;
		}
		if (make_buffer(c, k, &k->ptr[i], data, len) < 0)
			return -1;
	}
	return 0;
}

/* Patch each pointer buffer's address into its buffer, then each buffer's address into its argument. */
static void patch(struct call *k)
{
	for (uint32_t i = 0; i < k->nptrs; i++) {
		const struct mp_value *s = &k->ptrs->v.items[i];
		uint64_t addr = (uint64_t)(uintptr_t)k->ptr[i].data;
		struct buffer *into = &k->buf[k->buf_of_arg[s->v.items[0].v.u]];

		for (int b = 0; b < 8; b++)
			into->data[s->v.items[1].v.u + (uint64_t)b] = (uint8_t)(addr >> (8 * b));
	}
	for (int i = 0; i < SYSCALL_MAX_ARGS; i++)
		if (k->buf_of_arg[i] >= 0)
			k->a[i] = (uint64_t)(uintptr_t)k->buf[k->buf_of_arg[i]].data;
}

/* {ret, bufs: [bin...], ptrs: [bin...]} */
static void reply_call(struct conn *c, const struct call *k, long ret)
{
	struct mp_map m;

	reply_begin(c, &m);
	mp_map_int(&m, "ret", ret);
	mp_map_array(&m, "bufs", k->nbufs);
	for (uint32_t i = 0; i < k->nbufs; i++)
		mp_array_bin(&c->out, k->buf[i].data, k->buf[i].len);
	mp_map_array(&m, "ptrs", k->nptrs);
	for (uint32_t i = 0; i < k->nptrs; i++)
		mp_array_bin(&c->out, k->ptr[i].data, k->ptr[i].len);
	mp_map_end(&m);
	reply_send(c);
}

void op_syscall(struct worker *w, const struct mp_value *req)
{
	struct call k = { 0 };

	for (int i = 0; i < SYSCALL_MAX_ARGS; i++)
		k.buf_of_arg[i] = -1;
	if (parse_call(&w->conn, req, &k) == 0 && parse_bufs(&w->conn, &k) == 0 && parse_ptrs(&w->conn, &k) == 0) {
		patch(&k);
		reply_call(&w->conn, &k, raw_syscall((long)k.nr, k.a));
	}
	for (int i = 0; i < SYSCALL_MAX_ARGS; i++)
		free(k.buf[i].data);
	for (int i = 0; i < MAX_PTRS; i++)
		free(k.ptr[i].data);
}
