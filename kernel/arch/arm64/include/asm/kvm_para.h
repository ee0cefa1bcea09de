/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_ARM64_KVM_PARA_H
#define _ASM_ARM64_KVM_PARA_H

#include <uapi/asm/kvm_para.h>
#include <asm-generic/kvm_para.h>

#endif /* _ASM_ARM64_KVM_PARA_H */
