// SPDX-License-Identifier: GPL-2.0
/*
 * apf-bench: the guest side of `make bench`. It runs inside a guest booted
 * by apf-vmm, with APF offered or hidden by the VMM, and prints what it
 * measured as "apf-bench: ..." lines, which scripts/bench.py collects.
 * Timing is the guest's CLOCK_MONOTONIC (the virtual counter, which runs
 * with host time); only ratios within one host boot are meant to be
 * compared.
 *
 * APF_BENCH=storm: compute threads, one per vCPU (APF_BENCH_COMPUTE), and
 * a faulting thread share the vCPUs.
 *   The faulting thread owns APF_BENCH_MIB MiB, writes a pattern into every
 *   page, and then, APF_BENCH_ROUNDS times: has the pages evicted (below),
 *   reads every page back, checking the pattern (so the data must be
 *   intact), and times that pass. Between passes the compute threads run
 *   alone for APF_BENCH_BASE_MS, which gives their fault-free rate. Printed
 *   per pass: the pass's time ("fault_ms") and the compute threads' rate
 *   during the pass as a fraction of their fault-free rate
 *   ("compute_frac"). With APF hidden, a vCPU that waits for a page runs
 *   nothing else meanwhile; with APF it runs a compute thread.
 *   Eviction, APF_BENCH_EVICT:
 *     uffd: the guest asks apf-vmm for an eviction pass on the console
 *           ("apf-vmm: evict") and waits for its ACK byte on ttyS0; every
 *           page then faults into the VMM's userfaultfd handler.
 *     none: nothing is asked; the region is larger than the memory cgroup
 *           of the VMM, so every pass swaps it in from the host's disk.
 *
 * APF_BENCH=free: nothing faults. A compute-only loop and TOUCH_PASSES
 *   passes over APF_BENCH_MIB MiB of resident memory are timed
 *   APF_BENCH_ROUNDS times each ("compute_ms", "touch_ms").
 *
 * APF_BENCH=macro: workload (d), a real multi-process program: apf-bench
 *   becomes /bin/apf-compress (userspace/compress/), which gzips a generated
 *   data set in parallel worker processes and prints its own lines.
 *
 * Without APF_BENCH it prints nothing and exits 0, so that one guest
 * initramfs serves the tests and the benchmark. It ends with the verdict
 * line that apf-e2e checks, "workload: ok ..." or "workload: FAIL ...".
 * Exit status: 0 done, 1 data corrupted or no ACK, 2 bad settings.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "env.h"

#define EXIT_FAIL 1

#define MAX_MIB 1024
#define MAX_ROUNDS 100
#define ACK 0x06
#define ACK_TIMEOUT_MS 20000
#define ACK_TRIES 3
#define COMPUTE_CHUNK 4096
#define MAX_COMPUTE 64
#define FREE_CHUNKS 200000
#define TOUCH_PASSES 100

static long mib = 8, rounds = 5, base_ms = 500, ncompute;
static const char *mode, *evict = "uffd";
static size_t page_size;

static atomic_int compute_stop;
static atomic_ullong compute_iters;

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The compute thread: a pure-CPU loop, counted in chunks. */
static void *compute(void *arg)
{
	uint64_t x = 88172645463325252ULL;

	(void)arg;
	while (!atomic_load_explicit(&compute_stop, memory_order_relaxed)) {
		for (int i = 0; i < COMPUTE_CHUNK; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
		}
		atomic_fetch_add_explicit(&compute_iters, 1, memory_order_relaxed);
	}
	return (void *)(uintptr_t)(x & 1);
}

static uint64_t pattern(size_t page, long round)
{
	return (page * 0x9e3779b97f4a7c15ULL) ^ (uint64_t)round;
}

static void fill(uint8_t *mem, size_t pages, long round)
{
	for (size_t p = 0; p < pages; p++) {
		uint64_t *w = (uint64_t *)(mem + p * page_size);

		w[0] = pattern(p, round);
		w[page_size / 8 - 1] = ~pattern(p, round);
	}
}

/* Read every page back; returns the first bad page, or -1. */
static long check(uint8_t *mem, size_t pages, long round)
{
	for (size_t p = 0; p < pages; p++) {
		uint64_t *w = (uint64_t *)(mem + p * page_size);

		if (w[0] != pattern(p, round) || w[page_size / 8 - 1] != ~pattern(p, round))
			return p;
	}
	return -1;
}

static int tty = -1;

static int tty_open(void)
{
	struct termios t;

	tty = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
	if (tty < 0 || tcgetattr(tty, &t)) {
		fprintf(stderr, "apf-bench: /dev/ttyS0: %s\n", strerror(errno));
		return -1;
	}
	cfmakeraw(&t);
	/* Output as it was: the console stays readable. */
	t.c_oflag |= OPOST | ONLCR;
	if (tcsetattr(tty, TCSANOW, &t)) {
		fprintf(stderr, "apf-bench: tcsetattr: %s\n", strerror(errno));
		return -1;
	}
	tcflush(tty, TCIFLUSH);
	return 0;
}

/* Ask apf-vmm for an eviction pass and wait until it is done. */
static int request_eviction(void)
{
	struct pollfd pfd = { .fd = tty, .events = POLLIN };
	unsigned char c;

	for (int tries = 0; tries < ACK_TRIES; tries++) {
		/* On a line of its own, even if the kernel printed meanwhile. */
		printf("\napf-vmm: evict\n");
		fflush(stdout);
		while (poll(&pfd, 1, ACK_TIMEOUT_MS) == 1) {
			if (read(tty, &c, 1) == 1 && c == ACK)
				return 0;
		}
	}
	fprintf(stderr, "apf-bench: no eviction ACK from the VMM\n");
	return -1;
}

static double compute_rate(double ms)
{
	unsigned long long i0 = atomic_load(&compute_iters);
	double t0 = now_ms(), t1;
	struct timespec ts = { .tv_sec = (long)ms / 1000,
			       .tv_nsec = ((long)ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
	t1 = now_ms();
	return (atomic_load(&compute_iters) - i0) / (t1 - t0);
}

static int storm(void)
{
	size_t pages = (size_t)mib * 1024 * 1024 / page_size;
	pthread_t threads[MAX_COMPUTE];
	uint8_t *mem;
	int ret = 0;

	if (!strcmp(evict, "uffd") && tty_open())
		return EXIT_FAIL;
	mem = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("apf-bench: mmap");
		return EXIT_FAIL;
	}
	fill(mem, pages, 0);
	for (long i = 0; i < ncompute; i++)
		pthread_create(&threads[i], NULL, compute, NULL);

	for (long r = 0; r < rounds; r++) {
		double base, t0, t1, frac;
		unsigned long long i0, i1;
		long bad;

		base = compute_rate(base_ms);
		if (!strcmp(evict, "uffd") && request_eviction()) {
			ret = EXIT_FAIL;
			break;
		}
		i0 = atomic_load(&compute_iters);
		t0 = now_ms();
		bad = check(mem, pages, r);
		t1 = now_ms();
		i1 = atomic_load(&compute_iters);
		if (bad >= 0) {
			printf("apf-bench: FAIL page %ld of round %ld corrupted\n", bad, r);
			ret = EXIT_FAIL;
			break;
		}
		/* The next round checks a new pattern: the pages are dirty. */
		fill(mem, pages, r + 1);
		frac = base > 0 ? (i1 - i0) / (t1 - t0) / base : 0;
		printf("apf-bench: storm round=%ld pages=%zu fault_ms=%.1f compute_frac=%.4f base_rate=%.2f\n",
		       r, pages, t1 - t0, frac, base);
		fflush(stdout);
	}

	atomic_store(&compute_stop, 1);
	for (long i = 0; i < ncompute; i++)
		pthread_join(threads[i], NULL);
	return ret;
}

static int free_run(void)
{
	size_t pages = (size_t)mib * 1024 * 1024 / page_size;
	const unsigned long long target = FREE_CHUNKS;
	volatile uint64_t sink = 0;
	uint8_t *mem;

	mem = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (mem == MAP_FAILED) {
		perror("apf-bench: mmap");
		return EXIT_FAIL;
	}
	fill(mem, pages, 0);

	for (long r = 0; r < rounds; r++) {
		double t0, t1, t2;

		/* The compute loop of the storm, alone on this thread. */
		atomic_store(&compute_iters, 0);
		t0 = now_ms();
		while (atomic_load(&compute_iters) < target) {
			uint64_t x = sink + 1;

			for (int i = 0; i < COMPUTE_CHUNK; i++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
			}
			sink = x;
			atomic_fetch_add(&compute_iters, 1);
		}
		t1 = now_ms();
		/* Passes over resident memory, every 64-byte line. */
		for (int pass = 0; pass < TOUCH_PASSES; pass++)
			for (size_t off = 0; off < pages * page_size; off += 64)
				sink += mem[off];
		t2 = now_ms();
		printf("apf-bench: free round=%ld compute_ms=%.1f touch_ms=%.1f\n",
		       r, t1 - t0, t2 - t1);
		fflush(stdout);
	}
	return 0;
}

int main(void)
{
	int ret;

	mode = getenv("APF_BENCH");
	if (!mode)
		return 0;
	if (!strcmp(mode, "macro")) {
		execl("/bin/apf-compress", "apf-compress", (char *)NULL);
		printf("workload: FAIL apf-bench: /bin/apf-compress: %s\n", strerror(errno));
		return EXIT_FAIL;
	}
	page_size = sysconf(_SC_PAGESIZE);
	mib = env_long("apf-bench", "APF_BENCH_MIB", mib, 1, MAX_MIB);
	rounds = env_long("apf-bench", "APF_BENCH_ROUNDS", rounds, 1, MAX_ROUNDS);
	base_ms = env_long("apf-bench", "APF_BENCH_BASE_MS", base_ms, 10, 60000);
	ncompute = env_long("apf-bench", "APF_BENCH_COMPUTE", sysconf(_SC_NPROCESSORS_ONLN), 1, MAX_COMPUTE);
	if (getenv("APF_BENCH_EVICT"))
		evict = getenv("APF_BENCH_EVICT");
	if (strcmp(evict, "uffd") && strcmp(evict, "none")) {
		fprintf(stderr, "apf-bench: APF_BENCH_EVICT=%s: uffd or none\n", evict);
		return EXIT_USAGE;
	}

	printf("apf-bench: start mode=%s mib=%ld rounds=%ld evict=%s cpus=%ld compute=%ld\n",
	       mode, mib, rounds, evict, sysconf(_SC_NPROCESSORS_ONLN), ncompute);
	fflush(stdout);
	if (!strcmp(mode, "storm")) {
		ret = storm();
	} else if (!strcmp(mode, "free")) {
		ret = free_run();
	} else {
		fprintf(stderr, "apf-bench: APF_BENCH=%s: storm, free or macro\n", mode);
		return EXIT_USAGE;
	}
	/* The verdict apf-e2e checks, as for apf-workload. */
	if (ret)
		printf("workload: FAIL apf-bench mode=%s\n", mode);
	else
		printf("workload: ok apf-bench mode=%s rounds=%ld mib=%ld\n", mode, rounds, mib);
	return ret;
}
