/*
 * router.h: the router owns the port to the host, answers channel 0 itself
 * and forwards every other channel to its worker process.
 */
#ifndef PROVIUM_ROUTER_H
#define PROVIUM_ROUTER_H

/* Guest mode: serve the virtio port at dev_path (opened O_RDWR). Never returns. */
void router_main_guest(const char *dev_path) __attribute__((noreturn));

/* Host mode (--stdio): the host is on stdin/stdout. Exits 0 at EOF on stdin. */
void router_main_host(void) __attribute__((noreturn));

#endif
