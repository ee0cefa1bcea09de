/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
#ifndef _UAPI_ASM_ARM64_KVM_PARA_H
#define _UAPI_ASM_ARM64_KVM_PARA_H

#include <linux/types.h>

/*
 * Asynchronous page faults (APF) for KVM/arm64.
 *
 * The protocol is described in Documentation/virt/kvm/arm/apf.rst.
 *
 * All APF operations share one SMCCC function ID in the KVM vendor
 * hypervisor service range (ARM_SMCCC_VENDOR_HYP_KVM_ASYNC_PF_FUNC_ID,
 * see include/linux/arm-smccc.h). The guest passes one of the subcall
 * numbers below in x1; x0 returns the SMCCC status and x1 the result.
 */

/* x1 = KVM_ASYNC_PF_VERSION_1_0 */
#define KVM_ASYNC_PF_CALL_VERSION	0
/* x1 = most faults that may be outstanding per vCPU */
#define KVM_ASYNC_PF_CALL_SLOTS		1
/* x1 = INTID of the PPI that signals PAGE_READY */
#define KVM_ASYNC_PF_CALL_IRQ		2
/* x2 = control block IPA, x3 = flags (KVM_ASYNC_PF_ENABLED) */
#define KVM_ASYNC_PF_CALL_ENABLE	3
/* stop APF on this vCPU; the host no longer touches the block */
#define KVM_ASYNC_PF_CALL_DISABLE	4
/* the guest has consumed a PAGE_READY; the host may send the next one */
#define KVM_ASYNC_PF_CALL_ACK		5

/* Protocol version: major in bits [31:16], minor in bits [15:0] */
#define KVM_ASYNC_PF_VERSION_1_0	0x00010000

/*
 * Flags for KVM_ASYNC_PF_CALL_ENABLE (x3) and the low bits of the
 * KVM_ARM_VCPU_ASYNC_PF_BLOCK vCPU attribute. Every other bit is
 * reserved and must be zero.
 */
#define KVM_ASYNC_PF_ENABLED		1	/* bit 0 */

/* Required alignment, in bytes, of the control block IPA */
#define KVM_ASYNC_PF_BLOCK_ALIGN	64

/* PPI used for PAGE_READY unless the VMM chose another one */
#define KVM_ASYNC_PF_DEFAULT_IRQ	18

/* Values of kvm_vcpu_pv_apf_data.reason; 0 means the block is free */
#define KVM_PV_REASON_PAGE_NOT_PRESENT	1
#define KVM_PV_REASON_PAGE_READY	2

/*
 * PAGE_READY token saying that every fault this vCPU has outstanding is
 * gone: wake all tasks parked on its tokens (they retry the access).
 */
#define KVM_ASYNC_PF_WAKE_ALL_TOKEN	0xffffffff

/*
 * Per-vCPU control block, registered with KVM_ASYNC_PF_CALL_ENABLE.
 * It lives in guest memory, is KVM_ASYNC_PF_BLOCK_ALIGN aligned and
 * exactly 64 bytes long. The host writes token first and reason second;
 * the guest writes reason = 0 once it has read the event.
 */
struct kvm_vcpu_pv_apf_data {
	/* 0 (free) or KVM_PV_REASON_* */
	__u32 reason;

	/* identifies the fault; never 0 and, except for wake-all, never ~0 */
	__u32 token;

	/* reserved, the host leaves it alone */
	__u8 pad[56];
};

#endif /* _UAPI_ASM_ARM64_KVM_PARA_H */
