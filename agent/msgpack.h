/*
 * msgpack.h: the msgpack subset the agent speaks (nil, bool, int, str, bin,
 * array, map). The decoder builds a tree in a caller-supplied node array and
 * points str/bin values into the input (zero copy, no allocation); the
 * encoder appends to a growable buffer.
 */
#ifndef PROVIUM_MSGPACK_H
#define PROVIUM_MSGPACK_H

#include <stddef.h>
#include <stdint.h>

#define MP_MAX_DEPTH 8     /* containers nested deeper are a decode error */
#define MP_MAX_NODES 4096  /* node array size callers use for one payload */

enum mp_type { MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP };

/* One decoded value. Integers >= 0 are always MP_UINT, negative ones MP_INT. */
struct mp_value {
	enum mp_type type;
	uint32_t len; /* bytes of a str/bin, items of an array, pairs of a map */
	union {
		int b;                  /* MP_BOOL */
		uint64_t u;             /* MP_UINT */
		int64_t i;              /* MP_INT (always < 0) */
		const uint8_t *bytes;   /* MP_STR, MP_BIN: points into the input */
		struct mp_value *items; /* MP_ARRAY: len items; MP_MAP: key, value, key, ... */
	} v;
};

/*
 * Decode exactly one value filling buf[0..len) (trailing bytes are an error).
 * Uses at most cap entries of nodes; the root is nodes[0].
 * Returns the root, or NULL on any malformed, unsupported or too large input.
 */
const struct mp_value *mp_decode(const uint8_t *buf, size_t len,
				 struct mp_value *nodes, size_t cap);

/* The value of the first str key equal to key in map, or NULL (also when map is not a map). */
const struct mp_value *mp_map_get(const struct mp_value *map, const char *key);

/* Growable output buffer. failed is set on allocation failure or oversize input. */
struct mp_buf {
	uint8_t *data;
	size_t len, cap;
	int failed;
};

void mp_buf_reset(struct mp_buf *b); /* empty it, keeping the memory */
void mp_buf_free(struct mp_buf *b);

/* Writing a map: begin, then one call per field, then end (patches the count). */
struct mp_map {
	struct mp_buf *b;
	size_t hdr;     /* offset of the map header */
	uint32_t count; /* fields written so far */
};

void mp_map_begin(struct mp_map *m, struct mp_buf *b);
void mp_map_str(struct mp_map *m, const char *key, const void *s, size_t len);
void mp_map_cstr(struct mp_map *m, const char *key, const char *s);
void mp_map_bin(struct mp_map *m, const char *key, const void *p, size_t len);
void mp_map_uint(struct mp_map *m, const char *key, uint64_t u);
void mp_map_int(struct mp_map *m, const char *key, int64_t i);
void mp_map_bool(struct mp_map *m, const char *key, int v);
void mp_map_nil(struct mp_map *m, const char *key);
/* A field whose value is an array of count items, written next with mp_array_*. */
void mp_map_array(struct mp_map *m, const char *key, uint32_t count);
void mp_array_bin(struct mp_buf *b, const void *p, size_t len);
void mp_map_end(struct mp_map *m);

#endif
