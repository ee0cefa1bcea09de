// SPDX-License-Identifier: GPL-2.0

//! A view of a stage-2 abort, decoded from its syndrome.
//!
//! The ESR is the single source of truth: every property of the fault is a
//! method that decodes it, so no copy of a decoded bit can go stale. The
//! exception level and execution state the guest was in come from the saved
//! guest PSTATE (SPSR_EL2), which the ESR of an abort taken to EL2 does not
//! encode.
//!
//! C headers: [`arch/arm64/include/asm/esr.h`](srctree/arch/arm64/include/asm/esr.h),
//! [`arch/arm64/include/asm/kvm_emulate.h`](srctree/arch/arm64/include/asm/kvm_emulate.h).

use crate::bindings;

const EC_SHIFT: u32 = bindings::ESR_ELx_EC_SHIFT;
const EC_MASK: u64 = bindings::ESR_ELx_EC_MASK >> EC_SHIFT;
const EC_IABT_LOW: u64 = bindings::ESR_ELx_EC_IABT_LOW;
const EC_DABT_LOW: u64 = bindings::ESR_ELx_EC_DABT_LOW;
const ISS_WNR: u64 = 1 << bindings::ESR_ELx_WNR_SHIFT;
const ISS_S1PTW: u64 = 1 << bindings::ESR_ELx_S1PTW_SHIFT;
const FSC_MASK: u64 = bindings::ESR_ELx_FSC as u64;
const FSC_TYPE_MASK: u64 = bindings::ESR_ELx_FSC_TYPE as u64;
const FSC_TRANS: u64 = bindings::ESR_ELx_FSC_FAULT as u64;
const FSC_ACCESS: u64 = bindings::ESR_ELx_FSC_ACCESS as u64;
const FSC_PERM: u64 = bindings::ESR_ELx_FSC_PERM as u64;
const PSR_MODE_MASK: u64 = bindings::PSR_MODE_MASK as u64;
const PSR_MODE_EL0T: u64 = bindings::PSR_MODE_EL0t as u64;
const PSR_MODE32_BIT: u64 = bindings::PSR_MODE32_BIT as u64;

/// A guest abort taken to the hypervisor because of stage-2 translation.
///
/// # Examples
///
/// A write by guest user space to a page missing from stage 2:
///
/// ```
/// use kernel::kvm::abort::Stage2Abort;
///
/// // EC = DABT_LOW, IL, WnR, FSC = translation fault, level 3.
/// let esr = (0x24 << 26) | (1 << 25) | (1 << 6) | 0x07;
/// let abort = Stage2Abort::new(esr, 0x0 /* EL0t, AArch64 */);
/// assert!(abort.is_dabt() && abort.is_write() && !abort.is_exec());
/// assert!(abort.is_translation() && !abort.is_perm());
/// assert!(abort.is_from_el0());
/// assert_eq!(abort.fsc(), 0x07);
///
/// // The same fault from guest EL1h is not from EL0.
/// assert!(!Stage2Abort::new(esr, 0x5).is_from_el0());
/// // Nor is one from AArch32 EL0 (usr mode, nRW set).
/// assert!(!Stage2Abort::new(esr, 0x10).is_from_el0());
/// ```
///
/// An instruction fetch is an exec fault. A fault on the guest's stage-1
/// page table walk is a write only if it is a permission fault (the walker
/// wants to update a descriptor in a page mapped read-only); otherwise it is
/// a read, so that page tables in a read-only memslot still work. Cache
/// maintenance reports WnR set, and counts as a write, as in
/// `kvm_is_write_fault()`:
///
/// ```
/// use kernel::kvm::abort::Stage2Abort;
///
/// let fetch = Stage2Abort::new((0x20 << 26) | 0x0f, 0x0);
/// assert!(fetch.is_iabt() && fetch.is_exec() && !fetch.is_write() && fetch.is_perm());
///
/// // S1PTW, translation fault at level 2: a read.
/// let walk = Stage2Abort::new((0x24 << 26) | (1 << 7) | 0x06, 0x0);
/// assert!(walk.is_s1ptw() && !walk.is_write() && !walk.is_exec());
/// // S1PTW, permission fault at level 3: a write.
/// let walk = Stage2Abort::new((0x24 << 26) | (1 << 7) | 0x0f, 0x0);
/// assert!(walk.is_s1ptw() && walk.is_write());
/// // An S1PTW during an instruction fetch is neither exec nor, unless a
/// // permission fault, a write.
/// let walk = Stage2Abort::new((0x20 << 26) | (1 << 7) | 0x07, 0x0);
/// assert!(!walk.is_exec() && !walk.is_write());
///
/// // DC CIVAC: CM and WnR set.
/// let cm = Stage2Abort::new((0x24 << 26) | (1 << 8) | (1 << 6) | 0x07, 0x0);
/// assert!(cm.is_write());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Abort {
    esr: u64,
    spsr: u64,
}

impl Stage2Abort {
    /// Creates the view from the raw ESR_EL2 and the guest's saved PSTATE.
    pub const fn new(esr: u64, spsr: u64) -> Self {
        Self { esr, spsr }
    }

    /// Returns the raw syndrome.
    pub const fn esr(&self) -> u64 {
        self.esr
    }

    fn ec(&self) -> u64 {
        (self.esr >> EC_SHIFT) & EC_MASK
    }

    /// Returns whether this is an instruction abort from the guest.
    pub fn is_iabt(&self) -> bool {
        self.ec() == EC_IABT_LOW
    }

    /// Returns whether this is a data abort from the guest.
    pub fn is_dabt(&self) -> bool {
        self.ec() == EC_DABT_LOW
    }

    /// Returns the fault status code.
    pub fn fsc(&self) -> u64 {
        self.esr & FSC_MASK
    }

    /// Returns whether stage 2 had no valid mapping (a translation fault).
    pub fn is_translation(&self) -> bool {
        self.fsc() & FSC_TYPE_MASK == FSC_TRANS
    }

    /// Returns whether this is an access flag fault.
    pub fn is_access_flag(&self) -> bool {
        self.fsc() & FSC_TYPE_MASK == FSC_ACCESS
    }

    /// Returns whether the stage-2 mapping exists but forbids the access.
    pub fn is_perm(&self) -> bool {
        self.fsc() & FSC_TYPE_MASK == FSC_PERM
    }

    /// Returns whether the fault hit the guest's stage-1 page table walk.
    pub fn is_s1ptw(&self) -> bool {
        self.esr & ISS_S1PTW != 0
    }

    /// Returns whether the access needs write permission at stage 2, as
    /// `kvm_is_write_fault()` decides it.
    pub fn is_write(&self) -> bool {
        if self.is_s1ptw() {
            return self.is_perm();
        }
        self.is_dabt() && self.esr & ISS_WNR != 0
    }

    /// Returns whether the fault was an instruction fetch.
    pub fn is_exec(&self) -> bool {
        self.is_iabt() && !self.is_s1ptw()
    }

    /// Returns whether the guest was running AArch32 code.
    pub fn is_aarch32(&self) -> bool {
        self.spsr & PSR_MODE32_BIT != 0
    }

    /// Returns whether the guest was running AArch64 user space (EL0t).
    pub fn is_from_el0(&self) -> bool {
        !self.is_aarch32() && self.spsr & PSR_MODE_MASK == PSR_MODE_EL0T
    }
}
