/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The guest side of KVM/arm64 asynchronous page faults, written in Rust
 * (arch/arm64/mm/apf_guest.rs). See Documentation/virt/kvm/arm/apf.rst.
 */
#ifndef __ASM_APF_GUEST_H
#define __ASM_APF_GUEST_H

#include <linux/jump_label.h>
#include <linux/types.h>

#ifdef CONFIG_KVM_GUEST
DECLARE_STATIC_KEY_FALSE(kvm_apf_key);

u32 kvm_apf_guest_take(u64 esr);
void kvm_apf_guest_wait(u32 ticket);
/* The no-kvmapf boot parameter. */
int kvm_apf_guest_no_kvmapf(char *arg);

/*
 * For an abort taken from user space, before interrupts are unmasked: if
 * this CPU's block holds KVM's PAGE_NOT_PRESENT, registers the task as its
 * waiter and returns a non-zero ticket for kvm_apf_wait(), to be called
 * instead of the abort handler. Returns 0 otherwise.
 */
static __always_inline u32 kvm_apf_take(unsigned long esr)
{
	if (!static_branch_unlikely(&kvm_apf_key))
		return 0;
	return kvm_apf_guest_take(esr);
}

/* Sleeps until the page of @ticket is ready; the access is then retried. */
static inline void kvm_apf_wait(u32 ticket)
{
	kvm_apf_guest_wait(ticket);
}
#else
static __always_inline u32 kvm_apf_take(unsigned long esr)
{
	return 0;
}

static inline void kvm_apf_wait(u32 ticket)
{
}
#endif

#endif /* __ASM_APF_GUEST_H */
