// SPDX-License-Identifier: GPL-2.0

#include <linux/jump_label.h>

/*
 * static_branch_enable() is a macro, and static_key_enable() an inline
 * function without CONFIG_JUMP_LABEL.
 */
void rust_helper_static_key_false_enable(struct static_key_false *key)
{
	static_branch_enable(key);
}
