// SPDX-License-Identifier: GPL-2.0
/*
 * kmemleak-scan: ask kmemleak for a scan and fail if it reports a leak.
 * Run last by `make test-debug`, after every other test of the debug host.
 * kmemleak only reports an object that stayed unreferenced through two
 * scans, at least a few seconds apart, so it scans twice.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define KMEMLEAK "/sys/kernel/debug/kmemleak"

static int scan(void)
{
	FILE *f = fopen(KMEMLEAK, "w");

	if (!f) {
		perror(KMEMLEAK);
		return -1;
	}
	fputs("scan", f);
	return fclose(f) ? -1 : 0;
}

int main(void)
{
	unsigned int leaks = 0;
	char line[512];
	FILE *f;

	if (scan())
		return 1;
	sleep(6);
	if (scan())
		return 1;

	f = fopen(KMEMLEAK, "r");
	if (!f) {
		perror(KMEMLEAK);
		return 1;
	}
	while (fgets(line, sizeof(line), f)) {
		fputs(line, stdout);
		leaks += !!strstr(line, "unreferenced object");
	}
	fclose(f);
	printf("kmemleak: %u unreferenced objects\n", leaks);
	return leaks ? 1 : 0;
}
