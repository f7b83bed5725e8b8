/*
 * msgpack.c: a bounds-checked msgpack decoder that never allocates (it fills a
 * caller-supplied node array) and a small map encoder. Only the subset listed
 * in msgpack.h is accepted; floats, ext and timestamps are decode errors.
 */
#include "msgpack.h"

#include <stdlib.h>
#include <string.h>

/* ---- decoder ---- */

struct dec {
	const uint8_t *p, *end;
	struct mp_value *nodes;
	size_t cap, used;
};

static size_t remaining(const struct dec *d)
{
	return (size_t)(d->end - d->p);
}

/* Consume n bytes; NULL if fewer are left. */
static const uint8_t *take(struct dec *d, size_t n)
{
	const uint8_t *q = d->p;

	if (remaining(d) < n)
		return NULL;
	d->p += n;
	return q;
}

/* Read an n-byte big-endian unsigned integer (n is 1, 2, 4 or 8). */
static int take_be(struct dec *d, int n, uint64_t *out)
{
	const uint8_t *q = take(d, (size_t)n);
	uint64_t v = 0;

	if (!q)
		return -1;
	for (int i = 0; i < n; i++)
		v = (v << 8) | q[i];
	*out = v;
	return 0;
}

/* Reserve n consecutive nodes; NULL when the node array is exhausted. */
static struct mp_value *reserve(struct dec *d, uint64_t n)
{
	struct mp_value *r;

	if (n > d->cap - d->used)
		return NULL;
	r = d->nodes + d->used;
	d->used += (size_t)n;
	return r;
}

static int dec_value(struct dec *d, struct mp_value *v, int depth);

static int dec_bytes(struct dec *d, struct mp_value *v, enum mp_type t, uint64_t n)
{
	if (n > remaining(d))
		return -1;
	v->type = t;
	v->len = (uint32_t)n;
	v->v.bytes = d->p;
	d->p += n;
	return 0;
}

/* An array of n items (pairs == 0) or a map of n pairs (pairs == 1). */
static int dec_container(struct dec *d, struct mp_value *v, uint64_t n, int pairs, int depth)
{
	uint64_t items = pairs ? 2 * n : n; /* n < 2^32, no overflow */
	struct mp_value *it;

	if (depth >= MP_MAX_DEPTH)
		return -1;
	/* every item takes at least one byte: reject impossible counts early */
	if (items > remaining(d))
		return -1;
	it = reserve(d, items);
	if (!it)
		return -1;
	v->type = pairs ? MP_MAP : MP_ARRAY;
	v->len = (uint32_t)n;
	v->v.items = it;
	for (uint64_t i = 0; i < items; i++)
		if (dec_value(d, &it[i], depth + 1) < 0)
			return -1;
	return 0;
}

static int dec_signed(struct dec *d, struct mp_value *v, int n)
{
	uint64_t raw;
	int64_t s;

	if (take_be(d, n, &raw) < 0)
		return -1;
	switch (n) {
	case 1: s = (int8_t)raw; break;
	case 2: s = (int16_t)raw; break;
	case 4: s = (int32_t)raw; break;
	default: s = (int64_t)raw; break;
	}
	if (s >= 0) {
		v->type = MP_UINT;
		v->v.u = (uint64_t)s;
	} else {
		v->type = MP_INT;
		v->v.i = s;
	}
	return 0;
}

static int dec_value(struct dec *d, struct mp_value *v, int depth)
{
	const uint8_t *q = take(d, 1);
	uint64_t n;
	uint8_t c;

	if (!q)
		return -1;
	c = *q;
	v->len = 0;
	if (c <= 0x7f) {
		v->type = MP_UINT;
		v->v.u = c;
		return 0;
	}
	if (c >= 0xe0) {
		v->type = MP_INT;
		v->v.i = (int8_t)c;
		return 0;
	}
	if ((c & 0xf0) == 0x80)
		return dec_container(d, v, c & 0x0f, 1, depth);
	if ((c & 0xf0) == 0x90)
		return dec_container(d, v, c & 0x0f, 0, depth);
	if ((c & 0xe0) == 0xa0)
		return dec_bytes(d, v, MP_STR, c & 0x1f);

	switch (c) {
	case 0xc0:
		v->type = MP_NIL;
		return 0;
	case 0xc2:
	case 0xc3:
		v->type = MP_BOOL;
		v->v.b = c == 0xc3;
		return 0;
	case 0xc4: case 0xc5: case 0xc6: /* bin 8/16/32 */
		if (take_be(d, 1 << (c - 0xc4), &n) < 0)
			return -1;
		return dec_bytes(d, v, MP_BIN, n);
	case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8/16/32/64 */
		if (take_be(d, 1 << (c - 0xcc), &n) < 0)
			return -1;
		v->type = MP_UINT;
		v->v.u = n;
		return 0;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: /* int 8/16/32/64 */
		return dec_signed(d, v, 1 << (c - 0xd0));
	case 0xd9: case 0xda: case 0xdb: /* str 8/16/32 */
		if (take_be(d, 1 << (c - 0xd9), &n) < 0)
			return -1;
		return dec_bytes(d, v, MP_STR, n);
	case 0xdc: case 0xdd: /* array 16/32 */
		if (take_be(d, 2 << (c - 0xdc), &n) < 0)
			return -1;
		return dec_container(d, v, n, 0, depth);
	case 0xde: case 0xdf: /* map 16/32 */
		if (take_be(d, 2 << (c - 0xde), &n) < 0)
			return -1;
		return dec_container(d, v, n, 1, depth);
	default: /* 0xc1 (never used), ext, float */
		return -1;
	}
}

const struct mp_value *mp_decode(const uint8_t *buf, size_t len,
				 struct mp_value *nodes, size_t cap)
{
	struct dec d = { buf, buf + len, nodes, cap, 0 };
	struct mp_value *root = reserve(&d, 1);

	if (!root || dec_value(&d, root, 0) < 0 || d.p != d.end)
		return NULL;
	return root;
}

const struct mp_value *mp_map_get(const struct mp_value *map, const char *key)
{
	size_t klen = strlen(key);

	if (!map || map->type != MP_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->len; i++) {
		const struct mp_value *k = &map->v.items[2 * i];

		if (k->type == MP_STR && k->len == klen && memcmp(k->v.bytes, key, klen) == 0)
			return &map->v.items[2 * i + 1];
	}
	return NULL;
}

/* ---- encoder ---- */

void mp_buf_reset(struct mp_buf *b)
{
	b->len = 0;
	b->failed = 0;
}

void mp_buf_free(struct mp_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->failed = 0;
}

/* Make room for n more bytes; returns the write position or NULL (and sets failed). */
static uint8_t *grow(struct mp_buf *b, size_t n)
{
	if (b->failed)
		return NULL;
	if (n > b->cap - b->len) {
		size_t cap = b->cap ? b->cap : 256;
		uint8_t *p;

		while (cap - b->len < n) {
			if (cap > SIZE_MAX / 2) {
				b->failed = 1;
				return NULL;
			}
			cap *= 2;
		}
		p = realloc(b->data, cap);
		if (!p) {
			b->failed = 1;
			return NULL;
		}
		b->data = p;
		b->cap = cap;
	}
	return b->data + b->len;
}

static void put(struct mp_buf *b, const void *src, size_t n)
{
	uint8_t *p = grow(b, n);

	if (p) {
		if (n)
			memcpy(p, src, n);
		b->len += n;
	}
}

/* A type byte followed by an n-byte big-endian value. */
static void put_be(struct mp_buf *b, uint8_t type, uint64_t v, int n)
{
	uint8_t tmp[9];

	tmp[0] = type;
	for (int i = 0; i < n; i++)
		tmp[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	put(b, tmp, (size_t)n + 1);
}

static void put_uint(struct mp_buf *b, uint64_t u)
{
	if (u <= 0x7f) {
		uint8_t c = (uint8_t)u;
		put(b, &c, 1);
	} else if (u <= 0xff) {
		put_be(b, 0xcc, u, 1);
	} else if (u <= 0xffff) {
		put_be(b, 0xcd, u, 2);
	} else if (u <= 0xffffffffu) {
		put_be(b, 0xce, u, 4);
	} else {
		put_be(b, 0xcf, u, 8);
	}
}

static void put_int(struct mp_buf *b, int64_t i)
{
	if (i >= 0) {
		put_uint(b, (uint64_t)i);
	} else if (i >= -32) {
		uint8_t c = (uint8_t)(int8_t)i;
		put(b, &c, 1);
	} else if (i >= INT8_MIN) {
		put_be(b, 0xd0, (uint64_t)i, 1);
	} else if (i >= INT16_MIN) {
		put_be(b, 0xd1, (uint64_t)i, 2);
	} else if (i >= INT32_MIN) {
		put_be(b, 0xd2, (uint64_t)i, 4);
	} else {
		put_be(b, 0xd3, (uint64_t)i, 8);
	}
}

static void put_str(struct mp_buf *b, const void *s, size_t len)
{
	if (len <= 31) {
		uint8_t c = (uint8_t)(0xa0 | len);
		put(b, &c, 1);
	} else if (len <= 0xff) {
		put_be(b, 0xd9, len, 1);
	} else if (len <= 0xffff) {
		put_be(b, 0xda, len, 2);
	} else if (len <= 0xffffffffu) {
		put_be(b, 0xdb, len, 4);
	} else {
		b->failed = 1;
		return;
	}
	put(b, s, len);
}

static void put_bin(struct mp_buf *b, const void *p, size_t len)
{
	if (len <= 0xff) {
		put_be(b, 0xc4, len, 1);
	} else if (len <= 0xffff) {
		put_be(b, 0xc5, len, 2);
	} else if (len <= 0xffffffffu) {
		put_be(b, 0xc6, len, 4);
	} else {
		b->failed = 1;
		return;
	}
	put(b, p, len);
}

void mp_map_begin(struct mp_map *m, struct mp_buf *b)
{
	uint8_t fixmap = 0x80;

	m->b = b;
	m->hdr = b->len;
	m->count = 0;
	put(b, &fixmap, 1); /* patched by mp_map_end */
}

static void key(struct mp_map *m, const char *k)
{
	put_str(m->b, k, strlen(k));
	m->count++;
}

void mp_map_str(struct mp_map *m, const char *k, const void *s, size_t len)
{
	key(m, k);
	put_str(m->b, s, len);
}

void mp_map_cstr(struct mp_map *m, const char *k, const char *s)
{
	mp_map_str(m, k, s, strlen(s));
}

void mp_map_bin(struct mp_map *m, const char *k, const void *p, size_t len)
{
	key(m, k);
	put_bin(m->b, p, len);
}

void mp_map_uint(struct mp_map *m, const char *k, uint64_t u)
{
	key(m, k);
	put_uint(m->b, u);
}

void mp_map_int(struct mp_map *m, const char *k, int64_t i)
{
	key(m, k);
	put_int(m->b, i);
}

void mp_map_bool(struct mp_map *m, const char *k, int v)
{
	uint8_t c = v ? 0xc3 : 0xc2;

	key(m, k);
	put(m->b, &c, 1);
}

void mp_map_nil(struct mp_map *m, const char *k)
{
	uint8_t c = 0xc0;

	key(m, k);
	put(m->b, &c, 1);
}

void mp_map_array(struct mp_map *m, const char *k, uint32_t count)
{
	key(m, k);
	if (count <= 15) {
		uint8_t c = (uint8_t)(0x90 | count);
		put(m->b, &c, 1);
	} else if (count <= 0xffff) {
		put_be(m->b, 0xdc, count, 2);
	} else {
		put_be(m->b, 0xdd, count, 4);
	}
}

void mp_array_bin(struct mp_buf *b, const void *p, size_t len)
{
	put_bin(b, p, len);
}

void mp_map_end(struct mp_map *m)
{
	struct mp_buf *b = m->b;

	if (b->failed)
		return;
	if (m->count <= 15) {
		b->data[m->hdr] = (uint8_t)(0x80 | m->count);
	} else if (m->count <= 0xffff) {
		/* widen the one-byte fixmap header into a 3-byte map16 header */
		if (!grow(b, 2))
			return;
		memmove(b->data + m->hdr + 3, b->data + m->hdr + 1, b->len - m->hdr - 1);
		b->len += 2;
		b->data[m->hdr] = 0xde;
		b->data[m->hdr + 1] = (uint8_t)(m->count >> 8);
		b->data[m->hdr + 2] = (uint8_t)m->count;
	} else {
		b->failed = 1;
	}
}
