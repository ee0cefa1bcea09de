// SPDX-License-Identifier: GPL-2.0

#include <linux/crash_dump.h>

bool rust_helper_is_kdump_kernel(void)
{
	return is_kdump_kernel();
}
