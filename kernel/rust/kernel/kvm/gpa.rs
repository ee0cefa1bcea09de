// SPDX-License-Identifier: GPL-2.0

//! Guest physical addresses and guest frame numbers.
//!
//! C header: [`include/linux/kvm_types.h`](srctree/include/linux/kvm_types.h).

use crate::page::PAGE_SHIFT;

/// A guest physical address (an IPA, on arm64).
///
/// # Examples
///
/// ```
/// use kernel::kvm::Gpa;
///
/// let gpa = Gpa::new(0x8000_1040);
/// assert!(gpa.is_aligned(64));
/// assert!(!gpa.is_aligned(128));
/// assert_eq!(gpa.gfn().gpa(), Gpa::new(0x8000_1000));
/// assert_eq!(gpa.checked_add(u64::MAX), None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Gpa(u64);

impl Gpa {
    /// Creates a guest physical address from its raw value.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// Returns the raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Returns the frame that holds this address.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }

    /// Returns whether the address is a multiple of `align`, a power of two.
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }

    /// Returns the address `len` bytes further, or `None` on overflow.
    pub fn checked_add(self, len: u64) -> Option<Self> {
        self.0.checked_add(len).map(Self)
    }
}

/// A guest frame number: a guest physical address divided by the page size.
///
/// # Examples
///
/// ```
/// use kernel::kvm::{Gfn, Gpa};
///
/// let gfn = Gpa::new(0x4_2345).gfn();
/// assert_eq!(gfn, Gfn::new(0x42));
/// assert_eq!(gfn.gpa().as_u64(), 0x4_2000);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Gfn(u64);

impl Gfn {
    /// Creates a guest frame number from its raw value.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// Returns the raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Returns the address of the first byte of the frame.
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0 << PAGE_SHIFT)
    }
}
