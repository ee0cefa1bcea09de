// SPDX-License-Identifier: GPL-2.0

//! Glue over the generic asynchronous page fault machinery.
//!
//! `virt/kvm/async_pf.c` queues a work item per fault that fetches the page
//! in the background, and hands completed items back to the vCPU thread,
//! which calls the arch's `kvm_arch_async_page_*()` hooks. This module lets
//! arch code written in Rust drive it and look at the items.
//!
//! C header: [`include/linux/kvm_host.h`](srctree/include/linux/kvm_host.h),
//! implementation: [`virt/kvm/async_pf.c`](srctree/virt/kvm/async_pf.c).

use super::{Gfn, Gpa, Vcpu};
use crate::{bindings, container_of, error::to_result, prelude::*, types::Opaque};

/// Most faults a vCPU may have outstanding (`ASYNC_PF_PER_VCPU`).
pub const SLOTS: u32 = bindings::ASYNC_PF_PER_VCPU;

/// One outstanding asynchronous page fault (`struct kvm_async_pf`).
///
/// # Invariants
///
/// The wrapped item is valid and queued on the vCPU that the reference was
/// obtained from, which only that vCPU's thread removes it from.
#[repr(transparent)]
pub struct AsyncPf(Opaque<bindings::kvm_async_pf>);

impl AsyncPf {
    /// Returns a reference to a work item KVM passed to a hook.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid work item that stays valid for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::kvm_async_pf) -> &'a Self {
        // SAFETY: `AsyncPf` is a transparent wrapper; the caller guarantees
        // validity for `'a`.
        unsafe { &*ptr.cast() }
    }

    fn raw(&self) -> *mut bindings::kvm_async_pf {
        self.0.get()
    }

    /// Returns the arch data the fault was queued with.
    pub fn arch(&self) -> bindings::kvm_arch_async_pf {
        // SAFETY: The item is valid by the type invariant; `arch` is only
        // written before the item is queued.
        unsafe { (*self.raw()).arch }
    }

    /// Returns the guest physical address that faulted.
    pub fn gpa(&self) -> Gpa {
        // SAFETY: As above, written before the item is queued.
        Gpa::new(unsafe { (*self.raw()).cr2_or_gpa })
    }

    /// Returns whether this is a "wake all" item rather than a fault.
    pub fn is_wakeup_all(&self) -> bool {
        // SAFETY: As above, written before the item is queued.
        unsafe { (*self.raw()).wakeup_all }
    }

    /// Returns whether the guest was told the page was not present.
    pub fn notpresent_injected(&self) -> bool {
        // SAFETY: As above; set by the vCPU thread when it queued the item.
        unsafe { (*self.raw()).notpresent_injected }
    }
}

impl Vcpu {
    fn apf_queue(&self) -> *mut bindings::list_head {
        // SAFETY: The vCPU is valid by the type invariant.
        unsafe { core::ptr::addr_of_mut!((*self.as_raw()).async_pf.queue) }
    }

    /// Returns how many faults the vCPU has outstanding.
    pub fn async_pf_queued(&self) -> u32 {
        // SAFETY: The vCPU is valid, and `queued` is only changed by the
        // vCPU's own thread, which is the caller.
        unsafe { (*self.as_raw()).async_pf.queued }
    }

    /// Calls `f` on each outstanding fault until it returns `true`; returns
    /// whether it did.
    pub fn async_pf_any(&self, mut f: impl FnMut(&AsyncPf) -> bool) -> bool {
        let head = self.apf_queue();
        // SAFETY: Only the vCPU's own thread, the caller, adds items to or
        // removes them from `queue`, so the list is stable while we walk it,
        // and every entry is embedded in a valid `struct kvm_async_pf`.
        unsafe {
            let mut pos = (*head).next;
            while pos != head {
                let item = container_of!(pos, bindings::kvm_async_pf, queue);
                if f(AsyncPf::from_raw(item.cast_mut())) {
                    return true;
                }
                pos = (*pos).next;
            }
        }
        false
    }

    /// Queues a background fetch of the page at `hva` for the fault at
    /// `gpa`. KVM calls `kvm_arch_async_page_not_present()` before this
    /// returns. Returns the queued item, or `None` when the queue is full or
    /// no memory is available, in which case nothing was queued.
    pub fn async_pf_setup(
        &self,
        gpa: Gpa,
        hva: u64,
        arch: bindings::kvm_arch_async_pf,
    ) -> Option<&AsyncPf> {
        let mut arch = arch;
        // SAFETY: The vCPU is valid and owned by the caller; KVM copies
        // `arch` before returning.
        if !unsafe {
            bindings::kvm_setup_async_pf(self.as_raw(), gpa.as_u64(), hva as _, &mut arch)
        } {
            return None;
        }
        // SAFETY: The item was just added at the tail of `queue`, which only
        // this thread changes, and it stays there until this thread removes it.
        unsafe {
            let tail = (*self.apf_queue()).prev;
            let item = container_of!(tail, bindings::kvm_async_pf, queue);
            Some(AsyncPf::from_raw(item.cast_mut()))
        }
    }

    /// Queues a "wake all" item for delivery to the guest.
    pub fn async_pf_wakeup_all(&self) -> Result {
        // SAFETY: The vCPU is valid and owned by the caller.
        to_result(unsafe { bindings::kvm_async_pf_wakeup_all(self.as_raw()) })
    }

    /// Drops every outstanding and completed item. Nothing is delivered to
    /// the guest. Does not wait for a fetch that is running, which may be
    /// blocked in userfaultfd for good: it is detached, holds a reference to
    /// the VM and frees itself when done.
    pub fn async_pf_clear(&self) {
        // SAFETY: The vCPU is valid and owned by the caller.
        unsafe { bindings::kvm_clear_async_pf_completion_queue(self.as_raw()) }
    }
}

/// Returns whether `token` is free for a new fault of `vcpu`.
pub fn token_is_free(vcpu: &Vcpu, token: u32) -> bool {
    !vcpu.async_pf_any(|pf| pf.arch().token == token)
}

/// Returns whether a fault on `gfn` is already outstanding on `vcpu`.
pub fn gfn_is_pending(vcpu: &Vcpu, gfn: Gfn) -> bool {
    vcpu.async_pf_any(|pf| !pf.is_wakeup_all() && pf.arch().gfn == gfn.as_u64())
}

/// Emits the `kvm_async_pf_not_present` trace event.
pub fn trace_not_present(token: u32, gpa: Gpa) {
    // SAFETY: Trace events may be emitted from any context.
    unsafe { bindings::trace_kvm_async_pf_not_present(token.into(), gpa.as_u64()) }
}

/// Emits the `kvm_async_pf_ready` trace event.
pub fn trace_ready(token: u32, gpa: Gpa) {
    // SAFETY: Trace events may be emitted from any context.
    unsafe { bindings::trace_kvm_async_pf_ready(token.into(), gpa.as_u64()) }
}

/// Emits the `kvm_async_pf_repeated_fault` trace event.
pub fn trace_repeated_fault(gpa: Gpa) {
    // SAFETY: Trace events may be emitted from any context.
    unsafe { bindings::trace_kvm_async_pf_repeated_fault(gpa.as_u64(), gpa.gfn().as_u64()) }
}
