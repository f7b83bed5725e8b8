/* provium_kv.h: the ioctl interface of the provium_kv example device (/dev/provium_kv). */
#ifndef PROVIUM_KV_H
#define PROVIUM_KV_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define PKV_KEYS 16        /* keys 0..15 */
#define PKV_BLOB_MAX 256   /* bytes a write() may store */

struct pkv_entry {         /* 16 bytes */
	__u32 key;
	__u32 pad;
	__u64 value;
};

struct pkv_blob_req {      /* 16 bytes: a user-space pointer to a buffer */
	__u64 buf;             /* where the stored blob is copied to */
	__u32 len;             /* size of that buffer */
	__u32 copied;          /* out: bytes copied */
};

#define PKV_SET   _IOW('k', 1, struct pkv_entry)     /* store value under key */
#define PKV_COUNT _IOR('k', 2, __u64)                /* how many keys hold a value */
#define PKV_XCHG  _IOWR('k', 3, struct pkv_entry)    /* swap: the old value comes back */
#define PKV_BLOB  _IOWR('k', 4, struct pkv_blob_req) /* copy the stored blob to buf */

/*
 * Each change (PKV_SET, PKV_XCHG, write) advances a generation counter. An open
 * file remembers the generation it has seen: the one at open, then the one its
 * last PKV_WAIT returned. poll reports EPOLLIN while a newer one exists, and
 * PKV_WAIT blocks until one does (-EAGAIN at once on an O_NONBLOCK file).
 */
#define PKV_WAIT  _IOR('k', 5, __u64)                /* wait for a newer generation, get it */

/*
 * Deliberately broken ioctls, for testing the harness's kernel-finding watch:
 * PKV_DEBUG_WARN to PKV_DEBUG_LIST. They answer -EPERM unless the module is
 * loaded with debug_ioctls=1. Each is one bug a debug kernel reports.
 */
#define PKV_DEBUG_WARN     _IO('k', 16)  /* WARN_ON(arg): a kernel warning when arg != 0 */
#define PKV_DEBUG_UAF      _IO('k', 17)  /* reads a freed allocation: KASAN */
#define PKV_DEBUG_LEAK     _IO('k', 18)  /* loses an allocation of arg bytes: kmemleak */
#define PKV_DEBUG_ABBA     _IO('k', 19)  /* takes two mutexes in both orders: lockdep */
#define PKV_DEBUG_SLEEP    _IO('k', 20)  /* allocates with GFP_KERNEL under a spinlock */
#define PKV_DEBUG_REFCOUNT _IO('k', 21)  /* increments a refcount_t that reached 0 */
#define PKV_DEBUG_INDEX    _IO('k', 22)  /* reads element arg of a u64[4]: UBSAN when arg >= 4 */
#define PKV_DEBUG_LIST     _IO('k', 23)  /* adds to a corrupted list: DEBUG_LIST */

#endif
