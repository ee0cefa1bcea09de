/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * KVM/arm64 asynchronous page faults: the entry points of
 * arch/arm64/kvm/async_pf.rs, whose state lives in asm/kvm_host.h. The
 * protocol is in Documentation/virt/kvm/arm/apf.rst.
 */
#ifndef __ARM64_KVM_ASYNC_PF_H__
#define __ARM64_KVM_ASYNC_PF_H__

#include <linux/kvm_host.h>

#ifdef CONFIG_KVM_ARM_ASYNC_PF

bool kvm_arm_apf_faultin(struct kvm_vcpu *vcpu, struct kvm_memory_slot *slot,
			 gfn_t gfn, phys_addr_t ipa, unsigned long hva,
			 bool nested, bool write_fault, bool *writable,
			 kvm_pfn_t *pfn);
int kvm_arm_apf_hypercall(struct kvm_vcpu *vcpu);
int kvm_arm_apf_set_attr(struct kvm_vcpu *vcpu, struct kvm_device_attr *attr);
int kvm_arm_apf_get_attr(struct kvm_vcpu *vcpu, struct kvm_device_attr *attr);
int kvm_arm_apf_has_attr(struct kvm_vcpu *vcpu, struct kvm_device_attr *attr);
void kvm_arm_apf_reset(struct kvm_vcpu *vcpu);
void kvm_arm_apf_destroy(struct kvm_vcpu *vcpu);
int kvm_arm_apf_check_bmap(struct kvm *kvm, u64 bmap);
int kvm_arm_apf_first_run(struct kvm_vcpu *vcpu);
void kvm_arm_apf_check_completion(struct kvm_vcpu *vcpu);
bool kvm_arm_apf_pending(struct kvm_vcpu *vcpu);
int kvm_arm_apf_map(struct kvm_vcpu *vcpu, phys_addr_t ipa, u64 esr);

#else /* !CONFIG_KVM_ARM_ASYNC_PF */

static inline bool kvm_arm_apf_faultin(struct kvm_vcpu *vcpu,
				       struct kvm_memory_slot *slot,
				       gfn_t gfn, phys_addr_t ipa,
				       unsigned long hva, bool nested,
				       bool write_fault, bool *writable,
				       kvm_pfn_t *pfn)
{
	*pfn = __gfn_to_pfn_memslot(slot, gfn, false, false, NULL,
				    write_fault, writable, NULL);
	return false;
}

static inline int kvm_arm_apf_set_attr(struct kvm_vcpu *vcpu,
				       struct kvm_device_attr *attr)
{
	return -ENXIO;
}

static inline int kvm_arm_apf_get_attr(struct kvm_vcpu *vcpu,
				       struct kvm_device_attr *attr)
{
	return -ENXIO;
}

static inline int kvm_arm_apf_has_attr(struct kvm_vcpu *vcpu,
				       struct kvm_device_attr *attr)
{
	return -ENXIO;
}

static inline void kvm_arm_apf_reset(struct kvm_vcpu *vcpu) {}
static inline int kvm_arm_apf_check_bmap(struct kvm *kvm, u64 bmap) { return 0; }
static inline void kvm_arm_apf_destroy(struct kvm_vcpu *vcpu) {}
static inline int kvm_arm_apf_first_run(struct kvm_vcpu *vcpu) { return 0; }
static inline void kvm_arm_apf_check_completion(struct kvm_vcpu *vcpu) {}
static inline bool kvm_arm_apf_pending(struct kvm_vcpu *vcpu) { return false; }
static inline int kvm_arm_apf_hypercall(struct kvm_vcpu *vcpu)
{
	smccc_set_retval(vcpu, SMCCC_RET_NOT_SUPPORTED, 0, 0, 0);
	return 1;
}

#endif /* CONFIG_KVM_ARM_ASYNC_PF */
#endif /* __ARM64_KVM_ASYNC_PF_H__ */
