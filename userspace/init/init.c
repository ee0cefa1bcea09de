// SPDX-License-Identifier: GPL-2.0
/*
 * PID 1 of the emulated arm64 host: mount what the tests need, run each
 * line of /etc/tests.list under a timeout, report each result on the
 * console in a form scripts/report.py parses, then power off.
 *
 * A line of tests.list is "NAME TIMEOUT_SECONDS COMMAND [ARGS...]".
 */
#define _GNU_SOURCE
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

#define MAX_ARGS 32

static void mnt(const char *src, const char *dst, const char *type)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, 0, NULL) && errno != EBUSY)
		printf("@@ WARN mount %s on %s: %s\n", type, dst, strerror(errno));
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
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
	printf("@@ START %s\n", name);
	fflush(stdout);

	pid = fork();
	if (pid == 0) {
		sigprocmask(SIG_UNBLOCK, &chld, NULL);
		setpgid(0, 0);
		execvp(argv[0], argv);
		printf("@@ exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	if (pid < 0) {
		printf("@@ END %s fork-failed 0\n", name);
		return;
	}
	for (;;) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
		if (sigtimedwait(&chld, NULL, &ts) < 0 && errno == EAGAIN) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			printf("@@ END %s timeout %d\n", name, timeout);
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
		printf("@@ END %s exit %d %.0f\n", name, WEXITSTATUS(status), now() - start);
	else
		printf("@@ END %s signal %d %.0f\n", name, WTERMSIG(status), now() - start);
	fflush(stdout);
}

int main(void)
{
	char line[1024], *argv[MAX_ARGS + 1];
	sigset_t chld;
	FILE *list;

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
		printf("@@ ERROR /etc/tests.list: %s\n", strerror(errno));
	} else {
		printf("@@ BEGIN\n");
		while (fgets(line, sizeof(line), list)) {
			char *name, *tmo, *save = NULL;
			int argc = 0;

			line[strcspn(line, "\n")] = 0;
			name = strtok_r(line, " \t", &save);
			if (!name || name[0] == '#')
				continue;
			tmo = strtok_r(NULL, " \t", &save);
			while (argc < MAX_ARGS && (argv[argc] = strtok_r(NULL, " \t", &save)))
				argc++;
			argv[argc] = NULL;
			if (!tmo || !argc) {
				printf("@@ END %s bad-line 0\n", name);
				continue;
			}
			run_one(name, atoi(tmo), argv);
		}
		fclose(list);
	}
	printf("@@ DONE\n");
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
