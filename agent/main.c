/*
 * main.c: mode selection. As PID 1 the agent is the guest's init; with
 * --stdio it runs the router on stdin/stdout (testing on the host); with
 * --tsc-khz it prints the measured TSC frequency.
 */
#define _GNU_SOURCE
#include "init.h"
#include "router.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TSC_MEASURE_NS 50000000LL /* 50 ms */

#if defined(__x86_64__) || defined(__i386__)
static uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ __volatile__("lfence; rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
	return (uint64_t)hi << 32 | lo;
}

static long long raw_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Read the TSC and the clock together: the clock is the midpoint of two readings around rdtsc. */
static void sample(uint64_t *tsc, long long *ns)
{
	long long a = raw_ns();

	*tsc = rdtsc();
	*ns = a + (raw_ns() - a) / 2;
}

static int tsc_khz(void)
{
	uint64_t t0, t1;
	long long n0, n1;
	struct timespec pause = { 0, TSC_MEASURE_NS };

	sample(&t0, &n0);
	while (nanosleep(&pause, &pause) < 0)
		;
	sample(&t1, &n1);
	if (n1 <= n0 || t1 <= t0) {
		fprintf(stderr, "provium-agent: cannot measure the TSC\n");
		return 1;
	}
	/* kHz = cycles per millisecond */
	printf("%llu\n", (unsigned long long)(((double)(t1 - t0) * 1e6) / (double)(n1 - n0) + 0.5));
	return 0;
}
#else
static int tsc_khz(void)
{
	fprintf(stderr, "provium-agent: --tsc-khz needs an x86 TSC\n");
	return 1;
}
#endif

int main(int argc, char **argv)
{
	if (getpid() == 1)
		init_main(); /* argv holds unknown kernel cmdline words: ignore it */
	if (argc == 2 && strcmp(argv[1], "--stdio") == 0)
		router_main_host();
	if (argc == 2 && strcmp(argv[1], "--tsc-khz") == 0)
		return tsc_khz();
	fprintf(stderr, "usage: %s --stdio | --tsc-khz\n"
		"  (as PID 1 it runs as the guest's init)\n", argc > 0 ? argv[0] : "provium-agent");
	return 2;
}
