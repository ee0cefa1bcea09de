// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! arm64 KVM register ids for KVM_{GET,SET}_ONE_REG.
//!
//! Defined here from the uapi encoding rather than taken from kvm-bindings,
//! whose arm64 module only exists when compiling for arm64, so that the
//! encodings are unit tested on any host (and cross-checked against
//! kvm-bindings when the tests run on arm64).

/// `KVM_REG_ARM64`.
pub const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`.
pub const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_COPROC_SHIFT`.
const COPROC_SHIFT: u64 = 16;
/// `KVM_REG_ARM_CORE`: coprocessor 0x10.
const KVM_REG_ARM_CORE: u64 = 0x0010 << COPROC_SHIFT;
/// `KVM_REG_ARM64_SYSREG`: coprocessor 0x13.
const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << COPROC_SHIFT;
/// `KVM_REG_ARM_FW`: coprocessor 0x14 (PSCI and SMCCC versions).
const KVM_REG_ARM_FW: u64 = 0x0014 << COPROC_SHIFT;
/// `KVM_REG_ARM_COPROC_MASK`.
const COPROC_MASK: u64 = 0x0fff_0000;
/// `KVM_REG_ARM_FW_FEAT_BMAP`: coprocessor 0x16.
const KVM_REG_ARM_FW_FEAT_BMAP: u64 = 0x0016 << COPROC_SHIFT;

/// Id of a 64-bit core register at byte `offset` in `struct kvm_regs`.
pub const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// `KVM_REG_ARM_FW_FEAT_BMAP_REG(r)`.
pub const fn fw_feat_bmap_reg(r: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW_FEAT_BMAP | (r & 0xffff)
}

/// Whether `id` is a firmware pseudo-register (`KVM_REG_ARM_FW` or
/// `KVM_REG_ARM_FW_FEAT_BMAP`): the VM's, writable only before it first runs.
pub const fn is_firmware_reg(id: u64) -> bool {
    let coproc = id & COPROC_MASK;
    coproc == KVM_REG_ARM_FW || coproc == KVM_REG_ARM_FW_FEAT_BMAP
}

/// The op0/op1/CRn/CRm/op2 encoding of a system register, as
/// `ARM64_SYS_REG` and the vGIC's CPU_SYSREGS group use it (bits 15:0).
pub const fn sys_reg_encoding(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

/// `ARM64_SYS_REG(op0, op1, crn, crm, op2)`.
pub const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | sys_reg_encoding(op0, op1, crn, crm, op2)
}

/// `MPIDR_EL1`.
pub const MPIDR_EL1: u64 = sys_reg(3, 0, 0, 0, 5);

/// x0: `regs.regs[0]`, offset 0 of `struct user_pt_regs`.
pub const X0: u64 = core_reg(0);
/// pc: after the 31 general registers and sp.
pub const PC: u64 = core_reg(32 * 8);
/// pstate: after pc.
pub const PSTATE: u64 = core_reg(33 * 8);

/// EL1h with D, A, I and F masked: the state the boot protocol requires.
pub const PSTATE_EL1H_DAIF_MASKED: u64 = 0x3c5;

/// `KVM_REG_ARM_VENDOR_HYP_BMAP_2` (`KVM_REG_ARM_FW_FEAT_BMAP_REG(3)`):
/// vendor hypervisor functions 64..127, bit n = function 64 + n.
pub const KVM_REG_ARM_VENDOR_HYP_BMAP_2: u64 = fw_feat_bmap_reg(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        // Values as printed by QEMU and the KVM selftests.
        assert_eq!(X0, 0x6030_0000_0010_0000);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(fw_feat_bmap_reg(0), 0x6030_0000_0016_0000);
        assert_eq!(KVM_REG_ARM_VENDOR_HYP_BMAP_2, 0x6030_0000_0016_0003);
        assert!(is_firmware_reg(KVM_REG_ARM_VENDOR_HYP_BMAP_2));
        assert!(is_firmware_reg(0x6030_0000_0014_0000)); // PSCI version
        assert!(!is_firmware_reg(PC) && !is_firmware_reg(MPIDR_EL1));
        // As QEMU's cpreg list names MPIDR_EL1.
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn matches_kvm_bindings() {
        use kvm_bindings as kb;
        assert_eq!(KVM_REG_ARM64, kb::KVM_REG_ARM64);
        assert_eq!(KVM_REG_SIZE_U64, kb::KVM_REG_SIZE_U64);
        assert_eq!(KVM_REG_ARM_CORE, u64::from(kb::KVM_REG_ARM_CORE));
        assert_eq!(
            KVM_REG_ARM_FW_FEAT_BMAP,
            u64::from(kb::KVM_REG_ARM_FW_FEAT_BMAP)
        );
        assert_eq!(
            PC,
            core_reg(std::mem::offset_of!(kb::user_pt_regs, pc) as u64)
        );
        assert_eq!(
            PSTATE,
            core_reg(std::mem::offset_of!(kb::user_pt_regs, pstate) as u64)
        );
        assert_eq!(KVM_REG_ARM64_SYSREG, u64::from(kb::KVM_REG_ARM64_SYSREG));
        assert_eq!(KVM_REG_ARM_FW, u64::from(kb::KVM_REG_ARM_FW));
        assert_eq!(COPROC_MASK, u64::from(kb::KVM_REG_ARM_COPROC_MASK));
    }
}
