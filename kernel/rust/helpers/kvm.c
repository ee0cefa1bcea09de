// SPDX-License-Identifier: GPL-2.0

/*
 * KVM/arm64 helpers for rust/kernel/kvm: only what the asynchronous page
 * fault code needs.
 */
#ifdef CONFIG_KVM_ARM_ASYNC_PF
#include <linux/kvm_host.h>
#include <asm/kvm_emulate.h>
#include <asm/kvm_nested.h>
#include <kvm/arm_hypercalls.h>
#include <trace/events/kvm.h>

bool rust_helper_kvm_vm_has_ran_once(struct kvm *kvm)
{
	return kvm_vm_has_ran_once(kvm);
}

bool rust_helper_irqchip_in_kernel(struct kvm *kvm)
{
	return irqchip_in_kernel(kvm);
}

u64 rust_helper_kvm_vcpu_get_esr(const struct kvm_vcpu *vcpu)
{
	return kvm_vcpu_get_esr(vcpu);
}

u64 rust_helper_kvm_vcpu_get_spsr(struct kvm_vcpu *vcpu)
{
	return *vcpu_cpsr(vcpu);
}

u64 rust_helper_kvm_vcpu_get_far(const struct kvm_vcpu *vcpu)
{
	return kvm_vcpu_get_hfar(vcpu);
}

u64 rust_helper_vcpu_get_reg(const struct kvm_vcpu *vcpu, u8 reg_num)
{
	return vcpu_get_reg(vcpu, reg_num);
}

void rust_helper_smccc_set_retval(struct kvm_vcpu *vcpu, u64 a0, u64 a1,
				  u64 a2, u64 a3)
{
	smccc_set_retval(vcpu, a0, a1, a2, a3);
}

/* KVM_REQ_ASYNC_PF is a statement expression, which bindgen cannot bind */
void rust_helper_kvm_request_async_pf(struct kvm_vcpu *vcpu)
{
	kvm_make_request(KVM_REQ_ASYNC_PF, vcpu);
	kvm_vcpu_kick(vcpu);
}

void rust_helper_trace_kvm_async_pf_not_present(u64 token, u64 gpa)
{
	trace_kvm_async_pf_not_present(token, gpa);
}

void rust_helper_trace_kvm_async_pf_ready(u64 token, u64 gpa)
{
	trace_kvm_async_pf_ready(token, gpa);
}

void rust_helper_trace_kvm_async_pf_repeated_fault(u64 gpa, u64 gfn)
{
	trace_kvm_async_pf_repeated_fault(gpa, gfn);
}

int rust_helper_kvm_srcu_read_lock(struct kvm *kvm)
{
	return srcu_read_lock(&kvm->srcu);
}

void rust_helper_kvm_srcu_read_unlock(struct kvm *kvm, int idx)
{
	srcu_read_unlock(&kvm->srcu, idx);
}

bool rust_helper_vcpu_has_nv(const struct kvm_vcpu *vcpu)
{
	return vcpu_has_nv(vcpu);
}

bool rust_helper_vcpu_mode_is_32bit(const struct kvm_vcpu *vcpu)
{
	return vcpu_mode_is_32bit(vcpu);
}

bool rust_helper_kvm_vcpu_initialized(const struct kvm_vcpu *vcpu)
{
	return kvm_vcpu_initialized(vcpu);
}

void rust_helper_kvm_config_lock(struct kvm *kvm)
{
	mutex_lock(&kvm->arch.config_lock);
}

void rust_helper_kvm_config_unlock(struct kvm *kvm)
{
	mutex_unlock(&kvm->arch.config_lock);
}

int rust_helper_kvm_online_vcpus(struct kvm *kvm)
{
	return atomic_read(&kvm->online_vcpus);
}

struct kvm_vcpu *rust_helper_kvm_get_vcpu(struct kvm *kvm, int i)
{
	return kvm_get_vcpu(kvm, i);
}

int rust_helper_kvm_vcpu_pmu_irq(struct kvm_vcpu *vcpu)
{
	return kvm_arm_pmu_irq_initialized(vcpu) ? vcpu->arch.pmu.irq_num : 0;
}

int rust_helper_kvm_vgic_inject_owned_ppi(struct kvm_vcpu *vcpu, u32 intid,
					  bool level, void *owner)
{
	return kvm_vgic_inject_irq(vcpu->kvm, vcpu, intid, level, owner);
}

bool rust_helper_kvm_async_pf_done_empty(struct kvm_vcpu *vcpu)
{
	return list_empty_careful(&vcpu->async_pf.done);
}
#endif /* CONFIG_KVM_ARM_ASYNC_PF */
