/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The guest side of KVM/arm64 asynchronous page faults, written in Rust
 * (arch/arm64/mm/apf_guest.rs). See Documentation/virt/kvm/arm/apf.rst.
 */
#ifndef __ASM_APF_GUEST_H
#define __ASM_APF_GUEST_H

#include <linux/types.h>

#ifdef CONFIG_KVM_GUEST
/*
 * Called first for an external abort taken from user space. Returns true
 * if it was KVM's PAGE_NOT_PRESENT: the task has been parked until the
 * page was ready, and the faulting instruction is to be retried.
 */
bool kvm_apf_guest_user_abort(u64 esr);
#else
static inline bool kvm_apf_guest_user_abort(u64 esr)
{
	return false;
}
#endif

#endif /* __ASM_APF_GUEST_H */
