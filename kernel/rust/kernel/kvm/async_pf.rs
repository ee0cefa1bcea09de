// SPDX-License-Identifier: GPL-2.0

//! Glue over the generic asynchronous page fault machinery.
//!
//! `virt/kvm/async_pf.c` queues a work item per fault that fetches the page
//! in the background, and hands completed items back to the vCPU thread,
//! which calls the arch's `kvm_arch_async_page_*()` hooks. This module lets
//! arch code written in Rust drive it, look at the items, and keep its
//! per-vCPU state (`vcpu->arch.apf`).
//!
//! C header: [`include/linux/kvm_host.h`](srctree/include/linux/kvm_host.h),
//! implementation: [`virt/kvm/async_pf.c`](srctree/virt/kvm/async_pf.c).

use super::{guest_cache::GuestCache, Gpa, OwnedVcpu, Vcpu};
use crate::{bindings, container_of, error::to_result, prelude::*, types::Opaque};

/// Most faults a vCPU may have outstanding (`ASYNC_PF_PER_VCPU`).
pub const SLOTS: u32 = bindings::ASYNC_PF_PER_VCPU;

/// One outstanding asynchronous page fault (`struct kvm_async_pf`).
///
/// # Invariants
///
/// The wrapped item is valid for as long as the reference exists.
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
    /// Returns whether fetches have completed that the vCPU has not looked
    /// at yet. Any thread may ask.
    pub fn async_pf_done(&self) -> bool {
        // SAFETY: The vCPU is valid by the type invariant; the done list is
        // only changed under its lock, and this reads its head once.
        !unsafe { bindings::kvm_async_pf_done_empty(self.as_raw()) }
    }

    /// Raises `KVM_REQ_ASYNC_PF` and kicks the vCPU, so that it looks at its
    /// completed fetches before it next enters the guest, and leaves WFI if
    /// one can be delivered. Any context may do this, e.g. a work item.
    pub fn request_async_pf(&self) {
        // SAFETY: The vCPU is valid by the type invariant; requests and
        // kicks may be issued from any context.
        unsafe { bindings::kvm_request_async_pf(self.as_raw()) }
    }

    /// Returns a copy of the vCPU's APF state, read without the owner's
    /// exclusion: each field is as the owner last wrote it, or older.
    pub fn apf_state_racy(&self) -> bindings::kvm_apf_state {
        // SAFETY: The vCPU is valid by the type invariant, and the state is
        // plain data; the volatile read never tears a naturally aligned
        // field, and any stale value is a valid one.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*self.arch_ptr()).apf.st)) }
    }
}

impl OwnedVcpu<'_> {
    fn apf_queue(&self) -> *mut bindings::list_head {
        // SAFETY: The vCPU is valid by the type invariant.
        unsafe { core::ptr::addr_of_mut!((*self.as_raw()).async_pf.queue) }
    }

    /// Returns the vCPU's APF state.
    pub fn apf_state(&mut self) -> &mut bindings::kvm_apf_state {
        // SAFETY: The vCPU is valid and ours (type invariant): no other
        // thread writes the state, and `&mut self` makes this the only
        // reference to it. Racy readers copy it with volatile reads.
        unsafe { &mut (*self.arch_ptr()).apf.st }
    }

    /// Returns the pages reported ready whose retry has not come yet.
    pub fn apf_refault(&mut self) -> &mut bindings::kvm_apf_refault {
        // SAFETY: As for `apf_state`; nobody else reads these.
        unsafe { &mut (*self.arch_ptr()).apf.refault }
    }

    /// Returns the cache of the guest's control block, bound to this vCPU's
    /// VM.
    pub fn apf_cache(&mut self) -> GuestCache<'_> {
        let kvm = self.shared().kvm();
        // SAFETY: The cache is embedded in the vCPU, which we own (type
        // invariant), and `&mut self` keeps it ours for the borrow. It is
        // zeroed when the vCPU is allocated and only ever set through this
        // accessor, so with this vCPU's VM.
        unsafe { GuestCache::from_raw(core::ptr::addr_of_mut!((*self.arch_ptr()).apf.cache), kvm) }
    }

    /// Returns how many faults the vCPU has outstanding.
    pub fn async_pf_queued(&self) -> u32 {
        // SAFETY: The vCPU is valid, and `queued` is only changed by the
        // vCPU's own thread, which is the caller.
        unsafe { (*self.as_raw()).async_pf.queued }
    }

    /// Calls `f` on each outstanding fault until it returns `true`; returns
    /// whether it did. The queue cannot change meanwhile: changing it takes
    /// `&mut self`.
    pub fn async_pf_any(&self, mut f: impl FnMut(&AsyncPf) -> bool) -> bool {
        let head = self.apf_queue();
        // SAFETY: Only the vCPU's owner adds items to or removes them from
        // `queue`, through `&mut self` methods, which cannot run while this
        // borrow lasts; so the list is stable while we walk it, and every
        // entry is embedded in a valid `struct kvm_async_pf`.
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
    /// returns. Returns `None` when nothing was queued (the queue is full or
    /// no memory is available), or whether the guest was told.
    pub fn async_pf_setup(
        &mut self,
        gpa: Gpa,
        hva: u64,
        arch: bindings::kvm_arch_async_pf,
    ) -> Option<bool> {
        let mut arch = arch;
        // SAFETY: The vCPU is valid and ours; KVM copies `arch` before
        // returning.
        if !unsafe {
            bindings::kvm_setup_async_pf(self.as_raw(), gpa.as_u64(), hva as _, &mut arch)
        } {
            return None;
        }
        // SAFETY: The item was just added at the tail of `queue`, which only
        // this thread changes.
        let injected = unsafe {
            let tail = (*self.apf_queue()).prev;
            let item = container_of!(tail, bindings::kvm_async_pf, queue);
            (*item).notpresent_injected
        };
        Some(injected)
    }

    /// Hands completed fetches to the arch hooks
    /// (`kvm_check_async_pf_completion()`), which run on this thread.
    pub fn async_pf_check_completion(&mut self) {
        // SAFETY: The vCPU is valid and ours; `&mut self` keeps any borrow
        // of its state from living across the hooks KVM calls back.
        unsafe { bindings::kvm_check_async_pf_completion(self.as_raw()) }
    }

    /// Maps the page at `gpa` in the VM's stage 2 as handling the abort
    /// `esr` (an ESR_EL2 the vCPU took there) would now, so that the guest
    /// does not fault on it again. KVM faults the page in through
    /// `kvm_arm_apf_faultin()`, which the caller tells to take it only if it
    /// is resident. Fails with `EAGAIN` if the page is not mapped afterwards
    /// (it was not resident, or a concurrent stage-2 change won), `EINVAL`
    /// while the vCPU runs a nested guest, `EFAULT` if no memslot backs
    /// `gpa` or it cannot be mapped for that access, and as stage-2 mapping
    /// fails otherwise.
    pub fn map_abort(&mut self, gpa: Gpa, esr: u64) -> Result {
        // SAFETY: The vCPU is valid and ours, and not in the guest: this is
        // what handling an abort on its thread requires. `&mut self` keeps
        // any borrow of its state from living across the fault-in hook KVM
        // calls back.
        to_result(unsafe { bindings::kvm_arm_apf_map(self.as_raw(), gpa.as_u64(), esr) })
    }

    /// Drops every outstanding and completed item. Nothing is delivered to
    /// the guest. Does not wait for a fetch that is running, which may be
    /// blocked in userfaultfd for good: it is detached, holds a reference to
    /// the VM and frees itself when done.
    pub fn async_pf_clear(&mut self) {
        // SAFETY: The vCPU is valid and ours.
        unsafe { bindings::kvm_clear_async_pf_completion_queue(self.as_raw()) }
    }
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
