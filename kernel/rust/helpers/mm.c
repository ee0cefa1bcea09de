// SPDX-License-Identifier: GPL-2.0

#include <linux/mm.h>

phys_addr_t rust_helper_virt_to_phys(void *addr)
{
	return virt_to_phys(addr);
}
