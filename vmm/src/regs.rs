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
    }
}
