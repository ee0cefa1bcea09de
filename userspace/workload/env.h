/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Settings of the guest programs: KEY=value parameters on the guest's
 * kernel command line, which the kernel passes to init and init to them.
 */
#ifndef APF_WORKLOAD_ENV_H
#define APF_WORKLOAD_ENV_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* Exit status for bad settings. */
#define EXIT_USAGE 2

/*
 * Returns env var @name as a decimal in [min, max], or @def if unset; on
 * bad input says so as "@prog: error: ..." and exits EXIT_USAGE.
 */
static inline long env_long(const char *prog, const char *name, long def,
			    long min, long max)
{
	const char *s = getenv(name);
	char *end;
	long v;

	if (!s)
		return def;
	errno = 0;
	v = strtol(s, &end, 10);
	if (!*s || *end || errno || v < min || v > max) {
		printf("%s: error: %s='%s': expected a number %ld..%ld\n",
		       prog, name, s, min, max);
		exit(EXIT_USAGE);
	}
	return v;
}

#endif /* APF_WORKLOAD_ENV_H */
