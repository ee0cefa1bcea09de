// SPDX-License-Identifier: GPL-2.0

//! Cached access to a small range of guest memory.
//!
//! A wrapper over `struct gfn_to_hva_cache`: the guest physical range is
//! resolved to a host address once, and re-resolved by KVM when the
//! memslots change, so a write never lands in memory the guest no longer
//! maps there.
//!
//! A cache only makes sense for the VM it was resolved in: its host address
//! and memslot belong to that VM. So a [`GuestCache`] is bound to its VM when
//! it is taken, and every access goes to that VM.
//!
//! C header: [`include/linux/kvm_host.h`](srctree/include/linux/kvm_host.h).

use super::{Gpa, Kvm};
use crate::{
    bindings,
    error::to_result,
    prelude::*,
    types::{AsBytes, FromBytes},
};
use core::marker::PhantomData;

/// A cached range of one VM's guest memory, writable by the host.
///
/// # Invariants
///
/// `ghc` is valid and exclusively ours for `'a`. It is all zeroes (an empty
/// range, which every access refuses), or it was last set by
/// [`GuestCache::set`] with `kvm`, for a range inside one writable memslot.
pub struct GuestCache<'a> {
    ghc: *mut bindings::gfn_to_hva_cache,
    kvm: &'a Kvm,
    _ghc: PhantomData<&'a mut bindings::gfn_to_hva_cache>,
}

impl<'a> GuestCache<'a> {
    /// Binds a cache embedded in a C structure to its VM.
    ///
    /// # Safety
    ///
    /// `ghc` must be valid and exclusively owned by the caller for `'a`. It
    /// must be all zeroes, or have been last set by a `GuestCache` bound to
    /// `kvm`.
    pub unsafe fn from_raw(ghc: *mut bindings::gfn_to_hva_cache, kvm: &'a Kvm) -> Self {
        // INVARIANT: The caller guarantees all three conditions.
        Self {
            ghc,
            kvm,
            _ghc: PhantomData,
        }
    }

    /// Points the cache at `len` bytes at `gpa`.
    ///
    /// Fails with `EFAULT` unless the whole range lies in one memslot that
    /// the guest may write, and then leaves the cache as it was.
    pub fn set(&mut self, gpa: Gpa, len: usize) -> Result {
        let mut scratch = bindings::gfn_to_hva_cache::default();
        // SAFETY: `kvm` is valid and `scratch` is ours; KVM fully
        // initialises it, and resolves the range with write intent, so a
        // read-only memslot fails too.
        to_result(self.kvm.srcu_read(|| unsafe {
            bindings::kvm_gfn_to_hva_cache_init(
                self.kvm.as_raw(),
                &mut scratch,
                gpa.as_u64(),
                len as _,
            )
        }))?;
        // INVARIANT: The range was resolved in `kvm`, for writing.
        // SAFETY: `ghc` is valid and ours (type invariant).
        unsafe { *self.ghc = scratch };
        Ok(())
    }

    /// Empties the cache: every access fails until the next
    /// [`GuestCache::set`].
    pub fn reset(&mut self) {
        // INVARIANT: All zeroes is an empty range.
        // SAFETY: `ghc` is valid and ours (type invariant).
        unsafe { *self.ghc = bindings::gfn_to_hva_cache::default() };
    }

    /// Returns the guest physical address the cache points at.
    pub fn gpa(&self) -> Gpa {
        // SAFETY: `ghc` is valid and ours (type invariant).
        Gpa::new(unsafe { (*self.ghc).gpa })
    }

    /// Writes `val` at `offset` into the cached range.
    pub fn write<T: AsBytes>(&mut self, offset: usize, val: &T) -> Result {
        let len = core::mem::size_of::<T>();
        self.check(offset, len)?;
        // SAFETY: The cache is `kvm`'s (type invariant) and the write stays
        // inside the cached range (checked above). `val` is valid for `len`
        // bytes of reads, and `AsBytes` types have no padding.
        to_result(self.kvm.srcu_read(|| unsafe {
            bindings::kvm_write_guest_offset_cached(
                self.kvm.as_raw(),
                self.ghc,
                (val as *const T).cast_mut().cast(),
                offset as _,
                len as _,
            )
        }))
    }

    /// Reads a `T` at `offset` from the cached range.
    pub fn read<T: FromBytes + Default>(&mut self, offset: usize) -> Result<T> {
        let len = core::mem::size_of::<T>();
        self.check(offset, len)?;
        let mut val = T::default();
        // SAFETY: The cache is `kvm`'s (type invariant) and the read stays
        // inside the cached range (checked above). `val` is valid for `len`
        // bytes of writes, and any bytes are a valid `FromBytes` type.
        to_result(self.kvm.srcu_read(|| unsafe {
            bindings::kvm_read_guest_offset_cached(
                self.kvm.as_raw(),
                self.ghc,
                (&mut val as *mut T).cast(),
                offset as _,
                len as _,
            )
        }))?;
        Ok(val)
    }

    fn check(&self, offset: usize, len: usize) -> Result {
        // SAFETY: `ghc` is valid and ours (type invariant).
        let cached = unsafe { (*self.ghc).len };
        match offset.checked_add(len) {
            Some(end) if end <= cached => Ok(()),
            _ => Err(EINVAL),
        }
    }
}
