// SPDX-License-Identifier: GPL-2.0
/*
 * apf-workload: the guest side of the end-to-end tests of asynchronous page
 * faults. It runs inside a guest booted by apf-vmm, whose RAM is slow to
 * fault in (userfaultfd with eviction, or a memory cgroup with swap).
 *
 * P processes (forked) each run T writer/verifier threads; every thread
 * owns a private anonymous region (APF_WL_MIB MiB split across all of
 * them). A thread writes a pattern in which every 8-byte word is a
 * function of (process, thread, page, word, round), keeps a checksum per
 * page, and then for N rounds re-reads every page, checks its checksum and
 * words, and rewrites it with the next round's pattern; a last pass checks
 * the final round. Between rounds it sleeps, so that the host can evict.
 * Meanwhile a compute thread in the parent runs a pure-CPU loop and counts
 * iterations: it keeps running while the writers are parked by APF.
 *
 * With APF_WL_HOTPLUG=1 a thread takes CPU 1 offline and back online three
 * times during the rounds, while faults are in flight.
 *
 * With APF_WL_BOUNCE=1 a thread in each process moves its writers from CPU
 * to CPU with sched_setaffinity() every 2 ms, so that tasks migrate between
 * taking PAGE_NOT_PRESENT and being woken (run it with preempt=full).
 *
 * With APF_WL_SIGNALS=1 the parent signals tasks while they are parked by
 * APF (state D in /proc, which nothing else in this guest causes): it stops
 * and continues process 0 (SIGSTOP, SIGCONT), attaches to a writer of
 * process 1 with ptrace and detaches, and kills extra processes that keep
 * touching their memory (SIGKILL) until the guest kernel has counted three
 * parks ended by SIGKILL (/proc/kvm_apf "killed"; at most 30 kills). Each
 * signal must take effect (waitpid says so), and the writers must still
 * finish with intact data.
 *
 * Output (stdout): progress lines "workload: round R/N done (proc P, APF
 * so far: ...)",
 * then "workload: ok procs=.. threads=.. mib=.. rounds=.. pages=..
 * compute_iters=.." or "workload: FAIL ..." (exit 1), then /proc/kvm_apf,
 * if present, as "workload: kvm_apf KEY VALUE" lines. Bad settings: exit 2.
 *
 * Settings come from the environment (the guest kernel passes unknown
 * KEY=value boot parameters to init, and init to its children):
 * APF_WL_PROCS (default 2), APF_WL_THREADS (2), APF_WL_MIB (96),
 * APF_WL_ROUNDS (4), APF_WL_HOTPLUG (0), APF_WL_BOUNCE (0), APF_WL_SIGNALS (0).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include "env.h"

#define EXIT_FAIL 1

#define MAX_PROCS 16
#define MAX_THREADS 16
#define MAX_MIB 4096
#define MAX_ROUNDS 1000

#define HOTPLUG_CYCLES 3
#define CPU1_ONLINE "/sys/devices/system/cpu/cpu1/online"
#define ROUND_PAUSE_US 200000
#define BOUNCE_US 2000
#define VICTIMS 3
#define VICTIM_MIB 2
#define MAX_KILLS 30
/* How long the signal test waits to see a task parked. */
#define PARK_WAIT_MS 60000

struct config {
	long procs, threads, mib, rounds, hotplug, bounce, signals;
};

/* The first mismatch, shared by every process (MAP_SHARED). */
struct shared {
	atomic_int failed;
	int proc, thread;
	long page, word;
	uint64_t expected, got;
	atomic_int procs_done;
	/* The thread ids of the writers, for the bouncer and the signals. */
	atomic_int tids[MAX_PROCS][MAX_THREADS];
};

static struct config cfg;
static struct shared *shared;
static size_t page_size;
static size_t pages_per_thread;

static atomic_int compute_stop;
static atomic_ullong compute_iters;
static int hotplug_cycles;
static char hotplug_error[160];

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* The value of word @w of page @page of (@proc, @thread) in @round. */
static uint64_t page_seed(int proc, int thread, size_t page, long round)
{
	return mix64(((uint64_t)proc << 56) ^ ((uint64_t)thread << 48) ^
		     ((uint64_t)page << 16) ^ (uint64_t)round);
}

static uint64_t pattern(uint64_t seed, size_t w)
{
	return seed ^ ((w + 1) * 0x9e3779b97f4a7c15ULL);
}

static uint64_t checksum_step(uint64_t c, uint64_t word)
{
	return ((c << 7) | (c >> 57)) ^ word;
}

static void record_failure(int proc, int thread, size_t page, size_t word,
			   uint64_t expected, uint64_t got)
{
	int zero = 0;

	if (!atomic_compare_exchange_strong(&shared->failed, &zero, 1))
		return;
	shared->proc = proc;
	shared->thread = thread;
	shared->page = (long)page;
	shared->word = (long)word;
	shared->expected = expected;
	shared->got = got;
}

struct writer {
	int proc, thread;
	uint64_t *mem;
	uint64_t *sums;
	pthread_barrier_t *barrier;
};

/* Writes round @round over page @p and records its checksum. */
static void write_page(struct writer *wr, size_t p, long round)
{
	size_t words = page_size / 8;
	uint64_t *pg = wr->mem + p * words;
	uint64_t seed = page_seed(wr->proc, wr->thread, p, round);
	uint64_t c = 0;

	for (size_t w = 0; w < words; w++) {
		uint64_t v = pattern(seed, w);

		pg[w] = v;
		c = checksum_step(c, v);
	}
	wr->sums[p] = c;
}

/* Checks page @p against round @round; false (and recorded) on mismatch. */
static int verify_page(struct writer *wr, size_t p, long round)
{
	size_t words = page_size / 8;
	volatile uint64_t *pg = wr->mem + p * words;
	uint64_t seed = page_seed(wr->proc, wr->thread, p, round);
	uint64_t c = 0;

	for (size_t w = 0; w < words; w++)
		c = checksum_step(c, pg[w]);
	if (c == wr->sums[p])
		return 1;
	for (size_t w = 0; w < words; w++) {
		uint64_t want = pattern(seed, w), got = pg[w];

		if (got != want) {
			record_failure(wr->proc, wr->thread, p, w, want, got);
			return 0;
		}
	}
	/* Words right, stored checksum wrong: report the checksums. */
	record_failure(wr->proc, wr->thread, p, words, wr->sums[p], c);
	return 0;
}

/* " (APF so far: not_present=N ready=M)" from /proc/kvm_apf, or "". */
static void apf_so_far(char *buf, size_t len)
{
	unsigned long long np = 0, rd = 0, v;
	char key[64];
	FILE *f = fopen("/proc/kvm_apf", "r");

	buf[0] = 0;
	if (!f)
		return;
	while (fscanf(f, "%63s %llu", key, &v) == 2) {
		if (!strcmp(key, "not_present"))
			np = v;
		else if (!strcmp(key, "ready"))
			rd = v;
	}
	fclose(f);
	snprintf(buf, len, ", APF so far: not_present=%llu ready=%llu", np, rd);
}

static void *writer_main(void *arg)
{
	struct writer *wr = arg;
	long round;

	atomic_store(&shared->tids[wr->proc][wr->thread], (int)gettid());
	for (size_t p = 0; p < pages_per_thread; p++)
		write_page(wr, p, 0);
	for (round = 1; round <= cfg.rounds; round++) {
		usleep(ROUND_PAUSE_US);
		for (size_t p = 0; p < pages_per_thread; p++) {
			if (atomic_load(&shared->failed))
				break;
			if (!verify_page(wr, p, round - 1))
				break;
			write_page(wr, p, round);
		}
		if (pthread_barrier_wait(wr->barrier) == PTHREAD_BARRIER_SERIAL_THREAD &&
		    !atomic_load(&shared->failed)) {
			char apf[96];

			apf_so_far(apf, sizeof(apf));
			printf("workload: round %ld/%ld done (proc %d%s)\n", round,
			       cfg.rounds, wr->proc, apf);
		}
	}
	usleep(ROUND_PAUSE_US);
	for (size_t p = 0; p < pages_per_thread && !atomic_load(&shared->failed); p++)
		if (!verify_page(wr, p, cfg.rounds))
			break;
	return NULL;
}

static atomic_int writers_done;

/* Moves this process's writers from CPU to CPU until they are done. */
static void *bouncer_main(void *arg)
{
	int proc = *(int *)arg;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned long step = 0;

	if (cpus < 2)
		return NULL;
	while (!atomic_load(&writers_done)) {
		for (int t = 0; t < cfg.threads; t++) {
			pid_t tid = atomic_load(&shared->tids[proc][t]);
			cpu_set_t set;

			if (!tid)
				continue;
			CPU_ZERO(&set);
			CPU_SET((int)((step + (unsigned long)t) % (unsigned long)cpus), &set);
			/* A writer that just exited is not an error. */
			sched_setaffinity(tid, sizeof(set), &set);
		}
		step++;
		usleep(BOUNCE_US);
	}
	return NULL;
}

/* One forked process: T writer threads. Returns the exit status. */
static int run_proc(int proc)
{
	struct writer wr[MAX_THREADS];
	pthread_t tid[MAX_THREADS], bouncer;
	pthread_barrier_t barrier;
	int bouncing;
	size_t bytes = pages_per_thread * page_size;
	int t, err;

	if (pthread_barrier_init(&barrier, NULL, (unsigned int)cfg.threads)) {
		printf("workload: FAIL proc %d: pthread_barrier_init\n", proc);
		return EXIT_FAIL;
	}
	for (t = 0; t < cfg.threads; t++) {
		wr[t].proc = proc;
		wr[t].thread = t;
		wr[t].barrier = &barrier;
		wr[t].mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		wr[t].sums = calloc(pages_per_thread, sizeof(uint64_t));
		if (wr[t].mem == MAP_FAILED || !wr[t].sums) {
			printf("workload: FAIL proc %d thread %d: cannot allocate %zu bytes: %s\n",
			       proc, t, bytes, strerror(errno));
			return EXIT_FAIL;
		}
	}
	for (t = 0; t < cfg.threads; t++) {
		err = pthread_create(&tid[t], NULL, writer_main, &wr[t]);
		if (err) {
			printf("workload: FAIL proc %d: pthread_create: %s\n", proc,
			       strerror(err));
			/* Threads already started wait at the barrier: end here. */
			return EXIT_FAIL;
		}
	}
	bouncing = cfg.bounce && !pthread_create(&bouncer, NULL, bouncer_main, &proc);
	for (t = 0; t < cfg.threads; t++)
		pthread_join(tid[t], NULL);
	atomic_store(&writers_done, 1);
	if (bouncing)
		pthread_join(bouncer, NULL);
	atomic_fetch_add(&shared->procs_done, 1);
	return atomic_load(&shared->failed) ? EXIT_FAIL : 0;
}

static void *compute_main(void *arg)
{
	uint64_t x = 0x2545f4914f6cdd1dULL;
	unsigned long long n = 0;

	(void)arg;
	while (!atomic_load_explicit(&compute_stop, memory_order_relaxed)) {
		for (int i = 0; i < 4096; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
		}
		n += 4096;
		atomic_store_explicit(&compute_iters, n, memory_order_relaxed);
	}
	/* Keep the loop from being optimised away. */
	return (void *)(uintptr_t)(x & 1);
}

static int write_online(const char *value)
{
	int fd = open(CPU1_ONLINE, O_WRONLY);
	int ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, value, 1) != 1)
		ret = -errno;
	close(fd);
	return ret;
}

static void *hotplug_main(void *arg)
{
	(void)arg;
	for (int i = 0; i < HOTPLUG_CYCLES; i++) {
		int err;

		/* Let faults build up on CPU 1 before taking it away. */
		usleep(300000);
		err = write_online("0");
		if (err) {
			snprintf(hotplug_error, sizeof(hotplug_error),
				 "writing 0 to %s: %s", CPU1_ONLINE, strerror(-err));
			return NULL;
		}
		usleep(200000);
		err = write_online("1");
		if (err) {
			snprintf(hotplug_error, sizeof(hotplug_error),
				 "writing 1 to %s: %s", CPU1_ONLINE, strerror(-err));
			return NULL;
		}
		hotplug_cycles++;
	}
	return NULL;
}

/* The guest kernel's /proc/kvm_apf counter @name, or -1. */
static long kvm_apf_counter(const char *name)
{
	char key[64];
	long value, found = -1;
	FILE *f = fopen("/proc/kvm_apf", "r");

	if (!f)
		return -1;
	while (fscanf(f, "%63s %ld", key, &value) == 2)
		if (!strcmp(key, name))
			found = value;
	fclose(f);
	return found;
}

/* Whether thread @tid of process @pid sleeps uninterruptibly (APF parks so). */
static int task_parked(pid_t pid, pid_t tid)
{
	char path[64], buf[512], *end;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", pid, tid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	end = strrchr(buf, ')');
	return end && end[1] == ' ' && end[2] == 'D';
}

/*
 * Waits until a writer of process @proc (pid @pid) is parked; returns its
 * tid, or 0 after PARK_WAIT_MS.
 */
static pid_t wait_parked(int proc, pid_t pid)
{
	for (int ms = 0; ms < PARK_WAIT_MS; ms++) {
		for (int t = 0; t < cfg.threads; t++) {
			pid_t tid = atomic_load(&shared->tids[proc][t]);

			if (tid && task_parked(pid, tid))
				return tid;
		}
		usleep(1000);
	}
	return 0;
}

/* A process that touches its memory until it is killed. */
static void victim_main(void)
{
	size_t bytes = (size_t)VICTIM_MIB << 20;
	volatile uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		_exit(EXIT_FAIL);
	for (uint64_t n = 0;; n++)
		for (size_t off = 0; off < bytes; off += page_size)
			mem[off / sizeof(*mem)] = n;
}

/*
 * The signal test (APF_WL_SIGNALS=1): each signal goes to a task that is
 * parked by APF, and must take effect. Returns 0, or 1 with a FAIL line.
 */
static int signal_parked(const pid_t *pids, pid_t *victims)
{
	int status, stopped = 0, traced = 0, killed = 0, counted = 0;
	struct sched_param fifo = { .sched_priority = 1 };
	pid_t tid;

	/*
	 * Run ahead of the compute thread, so that a signal follows at once
	 * the sight of a parked task and finds it still parked.
	 */
	if (sched_setscheduler(0, SCHED_FIFO, &fifo))
		printf("workload: signals: no SCHED_FIFO (%s), signals may come late\n",
		       strerror(errno));

	/* SIGSTOP and SIGCONT to process 0 while a writer is parked. */
	tid = wait_parked(0, pids[0]);
	if (!tid) {
		printf("workload: FAIL signals: no writer of proc 0 parked within %d ms\n",
		       PARK_WAIT_MS);
		return 1;
	}
	kill(pids[0], SIGSTOP);
	if (waitpid(pids[0], &status, WUNTRACED) != pids[0] || !WIFSTOPPED(status)) {
		printf("workload: FAIL signals: proc 0 did not stop (status %#x)\n", status);
		return 1;
	}
	stopped++;
	usleep(100000);
	kill(pids[0], SIGCONT);
	if (waitpid(pids[0], &status, WCONTINUED) != pids[0] || !WIFCONTINUED(status)) {
		printf("workload: FAIL signals: proc 0 did not continue (status %#x)\n", status);
		return 1;
	}

	/* A ptrace attach to a parked writer of process 1, and a detach. */
	if (cfg.procs > 1) {
		tid = wait_parked(1, pids[1]);
		if (!tid) {
			printf("workload: FAIL signals: no writer of proc 1 parked within %d ms\n",
			       PARK_WAIT_MS);
			return 1;
		}
		if (ptrace(PTRACE_SEIZE, tid, 0, 0) || ptrace(PTRACE_INTERRUPT, tid, 0, 0)) {
			printf("workload: FAIL signals: ptrace attach to %d: %s\n", tid,
			       strerror(errno));
			return 1;
		}
		if (waitpid(tid, &status, __WALL) != tid || !WIFSTOPPED(status)) {
			printf("workload: FAIL signals: traced %d did not stop (status %#x)\n",
			       tid, status);
			return 1;
		}
		if (ptrace(PTRACE_DETACH, tid, 0, 0)) {
			printf("workload: FAIL signals: ptrace detach from %d: %s\n", tid,
			       strerror(errno));
			return 1;
		}
		traced++;
	}

	/*
	 * SIGKILL to victims while they are parked, until the guest kernel has
	 * counted VICTIMS parks ended by SIGKILL: a victim seen parked may be
	 * woken by its PAGE_READY before the signal lands. Each killed victim
	 * is replaced, so VICTIMS keep faulting.
	 */
	while (counted < VICTIMS && killed < MAX_KILLS) {
		long before = kvm_apf_counter("killed"), after;
		int v = -1;

		for (int ms = 0; ms < PARK_WAIT_MS && v < 0; ms++) {
			for (int i = 0; i < VICTIMS && v < 0; i++)
				if (task_parked(victims[i], victims[i]))
					v = i;
			if (v < 0)
				usleep(1000);
		}
		if (v < 0) {
			printf("workload: FAIL signals: no victim parked within %d ms\n",
			       PARK_WAIT_MS);
			return 1;
		}
		kill(victims[v], SIGKILL);
		if (waitpid(victims[v], &status, 0) != victims[v] || !WIFSIGNALED(status) ||
		    WTERMSIG(status) != SIGKILL) {
			printf("workload: FAIL signals: victim %d did not die of SIGKILL (status %#x)\n",
			       victims[v], status);
			return 1;
		}
		killed++;
		after = kvm_apf_counter("killed");
		counted += after > before;
		victims[v] = fork();
		if (victims[v] == 0)
			victim_main();
		if (victims[v] < 0) {
			printf("workload: FAIL fork: %s\n", strerror(errno));
			return 1;
		}
	}
	if (!counted) {
		printf("workload: FAIL signals: %d victims killed while parked, none ended a park\n",
		       killed);
		return 1;
	}
	printf("workload: signals stopped=%d traced=%d killed=%d (seen parked), of which %d ended a park\n",
	       stopped, traced, killed, counted);
	return 0;
}

static void print_kvm_apf(void)
{
	char line[256];
	FILE *f = fopen("/proc/kvm_apf", "r");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		printf("workload: kvm_apf %s\n", line);
	}
	fclose(f);
}

int main(void)
{
	pid_t pids[MAX_PROCS], victims[VICTIMS];
	pthread_t compute, hotplug;
	long total_pages, threads_total;
	int p, failed = 0, compute_started = 0, err;
	long ps;

	/* A benchmark guest runs apf-bench instead (tests/guest.list). */
	if (getenv("APF_BENCH"))
		return 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	cfg.procs = env_long("workload", "APF_WL_PROCS", 2, 1, MAX_PROCS);
	cfg.threads = env_long("workload", "APF_WL_THREADS", 2, 1, MAX_THREADS);
	cfg.mib = env_long("workload", "APF_WL_MIB", 96, 1, MAX_MIB);
	cfg.rounds = env_long("workload", "APF_WL_ROUNDS", 4, 1, MAX_ROUNDS);
	cfg.hotplug = env_long("workload", "APF_WL_HOTPLUG", 0, 0, 1);
	cfg.bounce = env_long("workload", "APF_WL_BOUNCE", 0, 0, 1);
	cfg.signals = env_long("workload", "APF_WL_SIGNALS", 0, 0, 1);

	ps = sysconf(_SC_PAGESIZE);
	page_size = ps > 0 ? (size_t)ps : 4096;
	threads_total = cfg.procs * cfg.threads;
	pages_per_thread = (size_t)cfg.mib * (1 << 20) / page_size / (size_t)threads_total;
	if (!pages_per_thread) {
		printf("workload: error: APF_WL_MIB=%ld is less than a page per thread (%ld threads)\n",
		       cfg.mib, threads_total);
		return EXIT_USAGE;
	}
	total_pages = (long)pages_per_thread * threads_total;
	if (cfg.hotplug && access(CPU1_ONLINE, W_OK)) {
		printf("workload: error: APF_WL_HOTPLUG=1 needs %s: %s\n", CPU1_ONLINE,
		       strerror(errno));
		return EXIT_USAGE;
	}

	shared = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED) {
		printf("workload: FAIL mmap of the shared page: %s\n", strerror(errno));
		return EXIT_FAIL;
	}
	printf("workload: start procs=%ld threads=%ld mib=%ld rounds=%ld pages=%ld hotplug=%ld bounce=%ld signals=%ld\n",
	       cfg.procs, cfg.threads, cfg.mib, cfg.rounds, total_pages, cfg.hotplug,
	       cfg.bounce, cfg.signals);
	fflush(stdout);

	/* Fork while single-threaded; the parent's threads come after. */
	for (p = 0; p < cfg.procs; p++) {
		pids[p] = fork();
		if (pids[p] == 0)
			_exit(run_proc(p));
		if (pids[p] < 0) {
			printf("workload: FAIL fork: %s\n", strerror(errno));
			for (int q = 0; q < p; q++)
				kill(pids[q], SIGKILL);
			return EXIT_FAIL;
		}
	}
	for (int v = 0; cfg.signals && v < VICTIMS; v++) {
		victims[v] = fork();
		if (victims[v] == 0)
			victim_main();
		if (victims[v] < 0) {
			printf("workload: FAIL fork: %s\n", strerror(errno));
			for (int q = 0; q < v; q++)
				kill(victims[q], SIGKILL);
			for (int q = 0; q < cfg.procs; q++)
				kill(pids[q], SIGKILL);
			return EXIT_FAIL;
		}
	}

	err = pthread_create(&compute, NULL, compute_main, NULL);
	if (err) {
		printf("workload: FAIL pthread_create (compute): %s\n", strerror(err));
		failed = 1;
	} else {
		compute_started = 1;
	}
	if (cfg.hotplug) {
		err = pthread_create(&hotplug, NULL, hotplug_main, NULL);
		if (err) {
			snprintf(hotplug_error, sizeof(hotplug_error),
				 "pthread_create: %s", strerror(err));
			cfg.hotplug = 0;
		}
	}

	if (cfg.signals && signal_parked(pids, victims)) {
		failed = 1;
		for (int v = 0; v < VICTIMS; v++)
			kill(victims[v], SIGKILL);
		for (p = 0; p < cfg.procs; p++)
			kill(pids[p], SIGCONT);
	}
	for (p = 0; p < cfg.procs; p++) {
		int status;

		if (waitpid(pids[p], &status, 0) != pids[p] || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0) {
			failed = 1;
			if (!atomic_load(&shared->failed))
				printf("workload: FAIL proc %d ended abnormally (status %#x)\n",
				       p, status);
		}
	}
	atomic_store(&compute_stop, 1);
	if (compute_started)
		pthread_join(compute, NULL);
	if (cfg.hotplug) {
		pthread_join(hotplug, NULL);
		printf("workload: hotplug cycles=%d\n", hotplug_cycles);
	}

	if (atomic_load(&shared->failed)) {
		printf("workload: FAIL proc=%d thread=%d page=%ld word=%ld expected=%#" PRIx64
		       " got=%#" PRIx64 "\n",
		       shared->proc, shared->thread, shared->page, shared->word,
		       shared->expected, shared->got);
		failed = 1;
	} else if (hotplug_error[0]) {
		printf("workload: FAIL hotplug: %s (after %d cycles)\n", hotplug_error,
		       hotplug_cycles);
		failed = 1;
	} else if (failed) {
		printf("workload: FAIL see above\n");
	} else {
		printf("workload: ok procs=%ld threads=%ld mib=%ld rounds=%ld pages=%ld compute_iters=%llu\n",
		       cfg.procs, cfg.threads, cfg.mib, cfg.rounds, total_pages,
		       (unsigned long long)atomic_load(&compute_iters));
	}
	print_kvm_apf();
	return failed ? EXIT_FAIL : 0;
}
