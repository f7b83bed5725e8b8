/*
 * portshare.c: the lock and counters shared by the router and the workers
 * for writing to the port (see portshare.h).
 */
#define _GNU_SOURCE
#include "portshare.h"

#include <errno.h>
#include <sys/mman.h>

struct port_share *port_share_new(void)
{
	struct port_share *ps = mmap(NULL, sizeof(*ps), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pthread_mutexattr_t attr;

	if (ps == MAP_FAILED)
		return NULL;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
	errno = pthread_mutex_init(&ps->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	if (errno) {
		munmap(ps, sizeof(*ps));
		return NULL;
	}
	return ps;
}

void port_lock(struct port_share *ps)
{
	/* a worker died holding it: its frame was one write(), whole or not written at all */
	if (pthread_mutex_lock(&ps->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&ps->lock);
}

void port_unlock(struct port_share *ps)
{
	pthread_mutex_unlock(&ps->lock);
}
