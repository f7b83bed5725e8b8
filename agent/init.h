/*
 * init.h: PID 1 duties in the guest (mounts, console, modules, finding the
 * agent port, starting and restarting the router, reaping orphans).
 */
#ifndef PROVIUM_INIT_H
#define PROVIUM_INIT_H

/* Run as PID 1. Never returns. argv is not looked at (the kernel passes
 * unknown cmdline words there). */
void init_main(void) __attribute__((noreturn));

#endif
