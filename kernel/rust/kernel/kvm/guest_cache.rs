// SPDX-License-Identifier: GPL-2.0

//! Cached access to a small range of guest memory.
//!
//! A wrapper over `struct gfn_to_hva_cache`: the guest physical range is
//! resolved to a host address once, and re-resolved by KVM when the
//! memslots change, so a write never lands in memory the guest no longer
//! maps there.
//!
//! C header: [`include/linux/kvm_host.h`](srctree/include/linux/kvm_host.h).

use super::{Gpa, Kvm};
use crate::{
    bindings,
    error::to_result,
    prelude::*,
    types::{AsBytes, FromBytes, Opaque},
};

/// A registered range of guest memory, writable by the host.
///
/// # Invariants
///
/// The wrapped cache was initialised by `kvm_gfn_to_hva_cache_init()` for a
/// range inside one writable memslot, and only that range is accessed.
#[repr(transparent)]
pub struct GuestCache(Opaque<bindings::gfn_to_hva_cache>);

impl GuestCache {
    /// Returns a mutable reference to a cache embedded in a C structure.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid and exclusively owned by the caller for `'a`, and
    /// must have been initialised with [`GuestCache::init`] if the caller
    /// reads or writes through it.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::gfn_to_hva_cache) -> &'a mut Self {
        // SAFETY: `GuestCache` is a transparent wrapper; the caller
        // guarantees validity and exclusivity for `'a`.
        unsafe { &mut *ptr.cast() }
    }

    /// Points the cache at `len` bytes at `gpa`.
    ///
    /// Fails with `EFAULT` unless the whole range lies in one memslot that
    /// the guest may write, and leaves nothing of the old range usable then.
    pub fn init(&mut self, kvm: &Kvm, gpa: Gpa, len: usize) -> Result {
        // SAFETY: `kvm` is valid, and `self.0` is valid memory we own
        // exclusively; KVM fully initialises it.
        let ret = kvm.srcu_read(|| unsafe {
            bindings::kvm_gfn_to_hva_cache_init(kvm.as_raw(), self.0.get(), gpa.as_u64(), len as _)
        });
        // KVM resolves the range with write intent, so a read-only memslot
        // fails here too.
        to_result(ret)
    }

    /// Returns the guest physical address the cache points at.
    pub fn gpa(&self) -> Gpa {
        // SAFETY: The cache is valid memory we own.
        Gpa::new(unsafe { (*self.0.get()).gpa })
    }

    /// Writes `val` at `offset` into the cached range.
    pub fn write<T: AsBytes>(&mut self, kvm: &Kvm, offset: usize, val: &T) -> Result {
        let len = core::mem::size_of::<T>();
        self.check(offset, len)?;
        // SAFETY: The cache was initialised (type invariant) and the write
        // stays inside the cached range (checked above). `val` is valid for
        // `len` bytes of reads, and `AsBytes` types have no padding.
        to_result(kvm.srcu_read(|| unsafe {
            bindings::kvm_write_guest_offset_cached(
                kvm.as_raw(),
                self.0.get(),
                (val as *const T).cast_mut().cast(),
                offset as _,
                len as _,
            )
        }))
    }

    /// Reads a `T` at `offset` from the cached range.
    pub fn read<T: FromBytes + Default>(&mut self, kvm: &Kvm, offset: usize) -> Result<T> {
        let len = core::mem::size_of::<T>();
        self.check(offset, len)?;
        let mut val = T::default();
        // SAFETY: The cache was initialised (type invariant) and the read
        // stays inside the cached range (checked above). `val` is valid for
        // `len` bytes of writes, and any bytes are a valid `FromBytes` type.
        to_result(kvm.srcu_read(|| unsafe {
            bindings::kvm_read_guest_offset_cached(
                kvm.as_raw(),
                self.0.get(),
                (&mut val as *mut T).cast(),
                offset as _,
                len as _,
            )
        }))?;
        Ok(val)
    }

    fn check(&self, offset: usize, len: usize) -> Result {
        // SAFETY: The cache is valid memory we own.
        let cached = unsafe { (*self.0.get()).len };
        match offset.checked_add(len) {
            Some(end) if end <= cached => Ok(()),
            _ => Err(EINVAL),
        }
    }
}
