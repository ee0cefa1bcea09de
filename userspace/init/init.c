// SPDX-License-Identifier: GPL-2.0
/*
 * PID 1 of the emulated arm64 host: mount what the tests need, run each
 * line of /etc/tests.list under a timeout, report each result on the
 * console in a form scripts/report.py parses, then power off.
 *
 * A line of tests.list is "NAME TIMEOUT_SECONDS COMMAND [ARGS...]"; an
 * argument in double quotes may contain spaces.
 *
 * The same init runs in guests booted from the emulated host, whose
 * console ends up in the host's: /etc/marker, if present, names them
 * ("@@guest START ...") so that the host's reports are not confused.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 64

static char tag[32];

static void mnt(const char *src, const char *dst, const char *type)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, 0, NULL) && errno != EBUSY)
		printf("@@%s WARN mount %s on %s: %s\n", tag, type, dst, strerror(errno));
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Print a file's lines, each after a prefix. */
static void cat(const char *path, const char *prefix)
{
	char line[512];
	FILE *f = fopen(path, "r");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		printf("%s%s", prefix, line);
	fclose(f);
}

/*
 * A test ran out of time: print where each thread of its process group
 * waits, so that the console log (and report.py's tail) tells a hang from
 * a slow run.
 */
static void dump_group(pid_t pgid)
{
	char path[320], prefix[400], comm[64];
	struct dirent *p, *t;
	DIR *procs, *tasks;

	procs = opendir("/proc");
	if (!procs)
		return;
	while ((p = readdir(procs))) {
		int pid = atoi(p->d_name), grp = 0;
		FILE *f;

		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/stat", pid);
		f = fopen(path, "r");
		if (!f)
			continue;
		/* pid (comm) state ppid pgrp; comm has no ')' in our tests. */
		if (fscanf(f, "%*d (%63[^)]) %*c %*d %d", comm, &grp) != 2)
			grp = 0;
		fclose(f);
		if (grp != pgid)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task", pid);
		tasks = opendir(path);
		while (tasks && (t = readdir(tasks))) {
			if (t->d_name[0] == '.')
				continue;
			snprintf(prefix, sizeof(prefix), "@@%s STACK %d/%s %s: ", tag, pid,
				 t->d_name, comm);
			snprintf(path, sizeof(path), "/proc/%d/task/%s/stack", pid, t->d_name);
			cat(path, prefix);
		}
		if (tasks)
			closedir(tasks);
	}
	closedir(procs);
	fflush(stdout);
}

/* Run argv with a timeout; print one @@ END line. */
static void run_one(const char *name, int timeout, char **argv)
{
	struct timespec ts = { .tv_sec = timeout };
	double start = now();
	sigset_t chld;
	int status = 0;
	pid_t pid;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	printf("@@%s START %s\n", tag, name);
	fflush(stdout);

	pid = fork();
	if (pid == 0) {
		sigprocmask(SIG_UNBLOCK, &chld, NULL);
		setpgid(0, 0);
		execvp(argv[0], argv);
		printf("@@%s exec %s: %s\n", tag, argv[0], strerror(errno));
		_exit(127);
	}
	if (pid < 0) {
		printf("@@%s END %s fork-failed 0\n", tag, name);
		return;
	}
	for (;;) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
		if (sigtimedwait(&chld, NULL, &ts) < 0 && errno == EAGAIN) {
			dump_group(pid);
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			printf("@@%s END %s timeout %d\n", tag, name, timeout);
			fflush(stdout);
			return;
		}
		/* Recompute what is left of the timeout. */
		double left = timeout - (now() - start);

		ts.tv_sec = left > 0 ? (time_t)left : 0;
		ts.tv_nsec = left > 0 ? (long)((left - ts.tv_sec) * 1e9) : 1;
	}
	/* Reap grandchildren left behind in the group. */
	kill(-pid, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	if (WIFEXITED(status))
		printf("@@%s END %s exit %d %.0f\n", tag, name, WEXITSTATUS(status),
		       now() - start);
	else
		printf("@@%s END %s signal %d %.0f\n", tag, name, WTERMSIG(status),
		       now() - start);
	fflush(stdout);
}

int main(void)
{
	char line[4096], *argv[MAX_ARGS + 1];
	sigset_t chld;
	FILE *list;

	list = fopen("/etc/marker", "r");
	if (list) {
		if (fscanf(list, "%31s", tag) != 1)
			tag[0] = 0;
		fclose(list);
	}

	mnt("proc", "/proc", "proc");
	mnt("sysfs", "/sys", "sysfs");
	mnt("devtmpfs", "/dev", "devtmpfs");
	mnt("tmpfs", "/tmp", "tmpfs");
	mnt("debugfs", "/sys/kernel/debug", "debugfs");
	mnt("tracefs", "/sys/kernel/tracing", "tracefs");
	mnt("cgroup2", "/sys/fs/cgroup", "cgroup2");
	setenv("PATH", "/bin:/tests", 1);
	setvbuf(stdout, NULL, _IOLBF, 0);

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);

	list = fopen("/etc/tests.list", "r");
	if (!list) {
		printf("@@%s ERROR /etc/tests.list: %s\n", tag, strerror(errno));
	} else {
		printf("@@%s BEGIN\n", tag);
		while (fgets(line, sizeof(line), list)) {
			char *name, *tmo, *save = NULL;
			int argc = 0, whole = strchr(line, '\n') || feof(list);

			line[strcspn(line, "\n")] = 0;
			name = strtok_r(line, " \t", &save);
			if (!name || name[0] == '#')
				continue;
			tmo = strtok_r(NULL, " \t", &save);
			while (argc < MAX_ARGS && save && *save) {
				save += strspn(save, " \t");
				if (*save == '"')
					argv[argc] = strtok_r(save + 1, "\"", &save);
				else
					argv[argc] = strtok_r(NULL, " \t", &save);
				if (!argv[argc])
					break;
				argc++;
			}
			argv[argc] = NULL;
			/* A line cut by the buffer or by MAX_ARGS fails, never runs short. */
			if (!whole || (save && save[strspn(save, " \t")])) {
				printf("@@%s END %s too-long 0\n", tag, name);
				if (!whole)
					while (fgets(line, sizeof(line), list) && !strchr(line, '\n'))
						;
				continue;
			}
			if (!tmo || !argc) {
				printf("@@%s END %s bad-line 0\n", tag, name);
				continue;
			}
			run_one(name, atoi(tmo), argv);
		}
		fclose(list);
	}
	printf("@@%s DONE\n", tag);
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
