// SPDX-License-Identifier: GPL-2.0
/*
 * provium_kv.c: a small key-value character device written for Provium's
 * kernel-module CI example. /dev/provium_kv holds 16 u64 values (ioctls) and
 * one blob of up to 256 bytes (write/read), behind one mutex.
 *
 * Every change (PKV_SET, PKV_XCHG, write) advances a generation counter and
 * wakes its waiters. Each open file remembers the generation it has seen (at
 * open, then at each PKV_WAIT): poll reports EPOLLIN while there is a newer
 * one, and PKV_WAIT blocks until there is, for tests of concurrent users.
 */
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/refcount.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "provium_kv.h"

static bool debug_ioctls;
module_param(debug_ioctls, bool, 0444);
MODULE_PARM_DESC(debug_ioctls, "answer the deliberately broken PKV_DEBUG_* ioctls (for harness tests)");

static DEFINE_MUTEX(pkv_lock);
static u64 pkv_values[PKV_KEYS];
static unsigned long pkv_present; /* bit per key */
static char pkv_blob[PKV_BLOB_MAX];
static size_t pkv_blob_len;
static u64 pkv_gen; /* changes so far, read locklessly by waiters */
static DECLARE_WAIT_QUEUE_HEAD(pkv_wq);

struct pkv_file {
	u64 seen; /* the pkv_gen this file last saw */
};

/* Called with pkv_lock held after each change. */
static void pkv_changed(void)
{
	lockdep_assert_held(&pkv_lock);
	WRITE_ONCE(pkv_gen, pkv_gen + 1);
	wake_up_interruptible(&pkv_wq);
}

static bool pkv_unseen(struct pkv_file *pf)
{
	return READ_ONCE(pkv_gen) != READ_ONCE(pf->seen);
}

/*
 * The deliberately broken debug ioctls: each is one kind of bug a debug kernel
 * reports (KASAN, kmemleak, lockdep, DEBUG_ATOMIC_SLEEP, refcount_t, UBSAN,
 * DEBUG_LIST, WARN_ON). noinline keeps each in its own frame of the report.
 */
static DEFINE_MUTEX(pkv_debug_a);
static DEFINE_MUTEX(pkv_debug_b);
static DEFINE_SPINLOCK(pkv_debug_spin);

static noinline long pkv_debug_use_after_free(void)
{
	u64 *values = kmalloc_array(4, sizeof(*values), GFP_KERNEL);

	if (!values)
		return -ENOMEM;
	values[0] = 42;
	kfree(values);
	return READ_ONCE(values[0]) == 42; /* reads freed memory */
}

static noinline long pkv_debug_leak(unsigned long size)
{
	void *lost = kmalloc(clamp(size, 1UL, 4096UL), GFP_KERNEL);

	if (!lost)
		return -ENOMEM;
	memset(lost, 0x6b, ksize(lost));
	return 0; /* the only pointer to it is gone */
}

static noinline long pkv_debug_lock_order(void)
{
	mutex_lock(&pkv_debug_a);
	mutex_lock(&pkv_debug_b);
	mutex_unlock(&pkv_debug_b);
	mutex_unlock(&pkv_debug_a);

	mutex_lock(&pkv_debug_b);
	mutex_lock(&pkv_debug_a); /* B then A: the reverse of the order above */
	mutex_unlock(&pkv_debug_a);
	mutex_unlock(&pkv_debug_b);
	return 0;
}

static noinline long pkv_debug_sleep_in_atomic(void)
{
	void *buf;

	spin_lock(&pkv_debug_spin);
	buf = kmalloc(32, GFP_KERNEL); /* may sleep, under a spinlock */
	spin_unlock(&pkv_debug_spin);
	kfree(buf);
	return 0;
}

static noinline long pkv_debug_refcount(void)
{
	refcount_t users = REFCOUNT_INIT(1);

	if (refcount_dec_and_test(&users))
		refcount_inc(&users); /* revives an object whose last user is gone */
	return refcount_read(&users);
}

static noinline long pkv_debug_index(unsigned long index)
{
	struct { u64 values[4]; u64 after; } slots = { .after = 7 };

	return (long)slots.values[index]; /* undefined for index >= 4 */
}

static noinline long pkv_debug_list(void)
{
	struct list_head head, first, second;

	INIT_LIST_HEAD(&head);
	list_add(&first, &head);
	WRITE_ONCE(first.prev, &second); /* a stray write corrupts the list */
	list_add(&second, &head);
	return 0;
}

static long pkv_debug_ioctl(unsigned int cmd, unsigned long arg)
{
	if (!debug_ioctls)
		return -EPERM;
	switch (cmd) {
	case PKV_DEBUG_WARN:
		WARN_ON(arg);
		return 0;
	case PKV_DEBUG_UAF:
		return pkv_debug_use_after_free();
	case PKV_DEBUG_LEAK:
		return pkv_debug_leak(arg);
	case PKV_DEBUG_ABBA:
		return pkv_debug_lock_order();
	case PKV_DEBUG_SLEEP:
		return pkv_debug_sleep_in_atomic();
	case PKV_DEBUG_REFCOUNT:
		return pkv_debug_refcount();
	case PKV_DEBUG_INDEX:
		return pkv_debug_index(arg);
	case PKV_DEBUG_LIST:
		return pkv_debug_list();
	default:
		return -ENOTTY;
	}
}

static long pkv_wait(struct file *file, void __user *uarg)
{
	struct pkv_file *pf = file->private_data;
	u64 gen;

	if (!pkv_unseen(pf) && (file->f_flags & O_NONBLOCK))
		return -EAGAIN;
	if (wait_event_interruptible(pkv_wq, pkv_unseen(pf)))
		return -ERESTARTSYS;
	mutex_lock(&pkv_lock);
	gen = pkv_gen;
	WRITE_ONCE(pf->seen, gen);
	mutex_unlock(&pkv_lock);
	return copy_to_user(uarg, &gen, sizeof(gen)) ? -EFAULT : 0;
}

static long pkv_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	struct pkv_blob_req req;
	struct pkv_entry e;
	u64 count, old;
	long ret = 0;

	switch (cmd) {
	case PKV_SET:
	case PKV_XCHG:
		if (copy_from_user(&e, uarg, sizeof(e)))
			return -EFAULT;
		if (e.key >= PKV_KEYS)
			return -EINVAL;
		mutex_lock(&pkv_lock);
		old = pkv_values[e.key];
		pkv_values[e.key] = e.value;
		set_bit(e.key, &pkv_present);
		pkv_changed();
		mutex_unlock(&pkv_lock);
		pr_info("provium_kv: set key %u\n", e.key);
		if (cmd == PKV_XCHG) {
			e.value = old;
			if (copy_to_user(uarg, &e, sizeof(e)))
				return -EFAULT;
		}
		return 0;
	case PKV_COUNT:
		mutex_lock(&pkv_lock);
		count = hweight_long(pkv_present);
		mutex_unlock(&pkv_lock);
		return copy_to_user(uarg, &count, sizeof(count)) ? -EFAULT : 0;
	case PKV_BLOB:
		if (copy_from_user(&req, uarg, sizeof(req)))
			return -EFAULT;
		mutex_lock(&pkv_lock);
		if (req.len < pkv_blob_len) {
			ret = -EINVAL;
		} else if (copy_to_user(u64_to_user_ptr(req.buf), pkv_blob, pkv_blob_len)) {
			ret = -EFAULT;
		} else {
			req.copied = pkv_blob_len;
			if (copy_to_user(uarg, &req, sizeof(req)))
				ret = -EFAULT;
		}
		mutex_unlock(&pkv_lock);
		return ret;
	case PKV_WAIT:
		return pkv_wait(file, uarg);
	default:
		if (cmd >= PKV_DEBUG_WARN && cmd <= PKV_DEBUG_LIST)
			return pkv_debug_ioctl(cmd, arg);
		return -ENOTTY;
	}
}

static ssize_t pkv_write(struct file *file, const char __user *buf, size_t len, loff_t *pos)
{
	if (len > PKV_BLOB_MAX)
		return -EINVAL;
	mutex_lock(&pkv_lock);
	if (copy_from_user(pkv_blob, buf, len)) {
		mutex_unlock(&pkv_lock);
		return -EFAULT;
	}
	pkv_blob_len = len;
	pkv_changed();
	mutex_unlock(&pkv_lock);
	pr_info("provium_kv: stored a blob of %zu bytes\n", len);
	return len;
}

static ssize_t pkv_read(struct file *file, char __user *buf, size_t len, loff_t *pos)
{
	ssize_t ret;

	mutex_lock(&pkv_lock);
	ret = simple_read_from_buffer(buf, len, pos, pkv_blob, pkv_blob_len);
	mutex_unlock(&pkv_lock);
	return ret;
}

static __poll_t pkv_poll(struct file *file, poll_table *wait)
{
	poll_wait(file, &pkv_wq, wait);
	return pkv_unseen(file->private_data) ? EPOLLIN | EPOLLRDNORM : 0;
}

static int pkv_open(struct inode *inode, struct file *file)
{
	struct pkv_file *pf = kmalloc(sizeof(*pf), GFP_KERNEL);

	if (!pf)
		return -ENOMEM;
	mutex_lock(&pkv_lock);
	pf->seen = pkv_gen;
	mutex_unlock(&pkv_lock);
	file->private_data = pf;
	return 0;
}

static int pkv_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static const struct file_operations pkv_fops = {
	.owner = THIS_MODULE,
	.open = pkv_open,
	.release = pkv_release,
	.unlocked_ioctl = pkv_ioctl,
	.poll = pkv_poll,
	.read = pkv_read,
	.write = pkv_write,
	.llseek = default_llseek,
};

static struct miscdevice pkv_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "provium_kv",
	.fops = &pkv_fops,
	.mode = 0666,
};

static int __init pkv_init(void)
{
	int ret = misc_register(&pkv_dev);

	if (!ret)
		pr_info("provium_kv: loaded\n");
	return ret;
}

static void __exit pkv_exit(void)
{
	misc_deregister(&pkv_dev);
	pr_info("provium_kv: unloaded\n");
}

module_init(pkv_init);
module_exit(pkv_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Provium example: a key-value character device");
