// SPDX-License-Identifier: GPL-2.0

//! KVM/arm64 asynchronous page faults: the host's policy and protocol.
//!
//! When guest user space faults on a page that is not resident (swapped
//! out, or missing behind userfaultfd), the vCPU does not wait for the
//! fetch: the guest gets PAGE_NOT_PRESENT with a token, the page is fetched
//! by the generic `virt/kvm/async_pf.c` machinery, and PAGE_READY with the
//! same token follows as a PPI. Every other fault takes the synchronous
//! path, which is always correct, and the reason is counted.
//!
//! Everything here runs on the vCPU's own thread, except
//! [`kvm_arch_async_page_present_queued`], which a work item calls.
//!
//! Protocol: [`Documentation/virt/kvm/arm/apf.rst`](srctree/Documentation/virt/kvm/arm/apf.rst),
//! ABI: [`arch/arm64/include/uapi/asm/kvm_para.h`](srctree/arch/arm64/include/uapi/asm/kvm_para.h).

use core::ffi::c_int;
use kernel::{
    bindings,
    kvm::{
        async_pf::{self, AsyncPf},
        guest_cache::GuestCache,
        smccc::{self, SmcccError, SmcccResult},
        Gfn, Gpa, Kvm, Memslot, OwnedVcpu, Vcpu, PPIS,
    },
    macros::export,
    prelude::*,
    uaccess::UserSlice,
};

const ENABLED: u64 = bindings::KVM_ASYNC_PF_ENABLED as u64;
const PAGE_READY: u32 = bindings::KVM_PV_REASON_PAGE_READY;
const WAKE_ALL: u32 = bindings::KVM_ASYNC_PF_WAKE_ALL_TOKEN;
/// Attribute ids, compared in full width.
const ATTR_IRQ: u64 = bindings::KVM_ARM_VCPU_ASYNC_PF_IRQ as u64;
const ATTR_BLOCK: u64 = bindings::KVM_ARM_VCPU_ASYNC_PF_BLOCK as u64;
/// Subcalls, compared in full width.
const CALL_VERSION: u64 = bindings::KVM_ASYNC_PF_CALL_VERSION as u64;
const CALL_SLOTS: u64 = bindings::KVM_ASYNC_PF_CALL_SLOTS as u64;
const CALL_IRQ: u64 = bindings::KVM_ASYNC_PF_CALL_IRQ as u64;
const CALL_ENABLE: u64 = bindings::KVM_ASYNC_PF_CALL_ENABLE as u64;
const CALL_DISABLE: u64 = bindings::KVM_ASYNC_PF_CALL_DISABLE as u64;
const CALL_ACK: u64 = bindings::KVM_ASYNC_PF_CALL_ACK as u64;
const APF_FUNC: u32 = bindings::ARM_SMCCC_KVM_FUNC_ASYNC_PF;
const BLOCK_SIZE: usize = core::mem::size_of::<bindings::kvm_vcpu_pv_apf_data>();
const BLOCK_ALIGN: u64 = bindings::KVM_ASYNC_PF_BLOCK_ALIGN as u64;
const REASON_OFFSET: usize = core::mem::offset_of!(bindings::kvm_vcpu_pv_apf_data, reason);
const TOKEN_OFFSET: usize = core::mem::offset_of!(bindings::kvm_vcpu_pv_apf_data, token);
/// A pfn with these bits set is an error or no memslot (`is_error_noslot_pfn()`).
const PFN_ERR_NOSLOT_MASK: u64 = bindings::KVM_PFN_ERR_NOSLOT_MASK as u64;
const TOKEN_VCPU_BITS: u32 = 12;
const TOKEN_SEQ_MASK: u32 = (1 << (32 - TOKEN_VCPU_BITS)) - 1;

/// Why a fault that needed I/O was handled synchronously.
#[derive(Clone, Copy)]
enum Fallback {
    /// Not from AArch64 EL0, or in a nested guest: the guest cannot switch
    /// tasks there.
    NotEl0,
    /// The guest has not enabled APF on this vCPU.
    Disabled,
    /// The control block still holds an event the guest has not consumed,
    /// or a PAGE_READY waits to be written into it.
    Busy,
    /// As many faults as the guest was told (SLOTS) are already outstanding.
    QueueFull,
    /// This page is already being fetched for an earlier fault.
    Repeat,
    /// The guest retries after PAGE_READY and the page is still not in:
    /// the fetch could not map it (e.g. a write to a read-only mapping, or
    /// an error). Going asynchronous again would loop for good; the
    /// synchronous fault gives the VMM the exit it gets without APF.
    Refault,
}

/// The APF side of one vCPU, in the hands of its owner.
struct Apf<'a> {
    vcpu: OwnedVcpu<'a>,
}

impl<'a> Apf<'a> {
    fn of(vcpu: OwnedVcpu<'a>) -> Self {
        Self { vcpu }
    }

    fn st(&mut self) -> &mut bindings::kvm_apf_state {
        self.vcpu.apf_state()
    }

    fn cache(&mut self) -> GuestCache<'_> {
        self.vcpu.apf_cache()
    }

    fn enabled(&mut self) -> bool {
        self.st().block & ENABLED != 0
    }

    /// Whether this vCPU may use APF at all: not with a virtual EL2, whose
    /// nested guest could reach the hypercall and make the host write into
    /// the L1 guest's memory.
    fn available(&self) -> bool {
        !self.vcpu.has_nv()
    }

    /// Returns the `reason` field of the guest's control block, or `None`
    /// if the block cannot be read. Then a completion must not keep waking
    /// a vCPU that idles: see [`kvm_arm_apf_pending`].
    fn reason(&mut self) -> Option<u32> {
        let reason = self.cache().read::<u32>(REASON_OFFSET).ok();
        self.st().stalled = reason.is_none();
        reason
    }

    /// Writes an event into the control block: the token, then the reason.
    fn post(&mut self, reason: u32, token: u32) -> Result {
        let mut cache = self.cache();
        cache.write(TOKEN_OFFSET, &token)?;
        cache.write(REASON_OFFSET, &reason)
    }

    /// Returns whether a new event may be written into the control block.
    fn block_free(&mut self) -> bool {
        !self.st().ready_pending && self.reason() == Some(0)
    }

    /// Returns whether the block holds a PAGE_READY the guest has not
    /// consumed. Then the PPI must be up: the guest only looks at the block
    /// when it takes the interrupt.
    fn block_holds_ready(&mut self) -> bool {
        self.reason() == Some(PAGE_READY)
    }

    /// Remembers that the fetch of `gfn` was reported ready: the guest's
    /// retry must not be sent asynchronously again. Holds as many pages as
    /// faults may be outstanding; the oldest is forgotten first.
    fn note_refault(&mut self, gfn: Gfn) {
        let r = self.vcpu.apf_refault();
        let slot = r.next as usize % r.gfn.len();
        // Stored plus one: 0 marks a free entry.
        r.gfn[slot] = gfn.as_u64() + 1;
        r.next = r.next.wrapping_add(1);
    }

    /// Forgets `gfn` if a PAGE_READY for it is still unanswered by a
    /// retry; returns whether it was.
    fn take_refault(&mut self, gfn: Gfn) -> bool {
        let r = self.vcpu.apf_refault();
        match r.gfn.iter_mut().find(|g| **g == gfn.as_u64() + 1) {
            Some(g) => {
                *g = 0;
                true
            }
            None => false,
        }
    }

    /// Returns a token that no outstanding fault uses. It is never 0 (the
    /// sequence skips 0) and never ~0 (vCPU indices are far below 0xfff).
    fn next_token(&mut self) -> u32 {
        let idx = self.vcpu.idx() & ((1 << TOKEN_VCPU_BITS) - 1);
        loop {
            let st = self.st();
            st.seq = st.seq.wrapping_add(1) & TOKEN_SEQ_MASK;
            let seq = st.seq;
            let token = (seq << TOKEN_VCPU_BITS) | idx;
            // At most SLOTS tokens are in use, so this ends quickly.
            if seq != 0 && !self.vcpu.async_pf_any(|pf| pf.arch().token == token) {
                return token;
            }
        }
    }

    fn set_ready_pending(&mut self, pending: bool) {
        if pending == self.st().ready_pending {
            return;
        }
        self.st().ready_pending = pending;
        // The line stays up until the guest acks, like a level interrupt.
        // APF is only enabled with a vGIC, and its first run claimed the
        // PPI for us, so the vGIC takes the change.
        let irq = irq_of(self.st());
        let owner = self.vcpu.shared();
        let _ = self.vcpu.set_ppi_level(irq, pending, owner);
    }

    /// Writes the PAGE_READY that is owed, if the block is free. Returns
    /// whether none is owed any more. A failed access to the block keeps
    /// it owed, for the next guest entry.
    fn deliver_owed(&mut self) -> bool {
        let (token, gfn) = (self.st().owed_token, Gfn::new(self.st().owed_gfn));
        if token == 0 {
            return true;
        }
        if self.st().ready_pending {
            return false;
        }
        match self.reason() {
            Some(0) => {}
            // The guest has not consumed the last event yet.
            Some(_) => return false,
            None => return false,
        }
        if self.post(PAGE_READY, token).is_err() {
            // Kept, and retried at the next entry.
            self.st().stalled = true;
            return false;
        }
        self.st().owed_token = 0;
        if token != WAKE_ALL {
            if self.st().owed_mapped {
                self.vcpu.count(|s| &s.apf_ready_mapped);
            } else {
                self.note_refault(gfn);
            }
        }
        self.set_ready_pending(true);
        self.vcpu.count(|s| &s.apf_ready);
        async_pf::trace_ready(token, gfn.gpa());
        true
    }

    /// Forgets every fault in flight and every event, and unregisters the
    /// block. Writes nothing to the guest, now or later.
    fn forget(&mut self) {
        self.vcpu.async_pf_clear();
        self.set_ready_pending(false);
        let st = self.st();
        st.block = 0;
        st.owed_token = 0;
        st.owed_gfn = 0;
        st.owed_mapped = false;
        st.stalled = false;
        *self.vcpu.apf_refault() = Default::default();
    }

    /// DISABLE, vCPU reset: as [`Apf::forget`], and the block's address is
    /// dropped too.
    fn disable(&mut self) {
        self.forget();
        self.cache().reset();
    }

    /// Registers the control block at `gpa` and owes the guest a wake-all,
    /// which also wakes tasks a migration source had parked. Allocates
    /// nothing, so that it either succeeds or changes nothing.
    fn enable(&mut self, gpa: Gpa) -> Result {
        if gpa.as_u64() == 0 || !gpa.is_aligned(BLOCK_ALIGN) {
            return Err(EINVAL);
        }
        if !self.vcpu.shared().kvm().has_irqchip() {
            return Err(ENODEV);
        }
        // Leaves the cache as it was on failure; nothing else changed yet.
        self.cache().set(gpa, BLOCK_SIZE)?;
        self.forget();
        self.st().block = gpa.as_u64() | ENABLED;
        // A block restored by a VMM may hold a PAGE_READY that was sent,
        // and maybe acked, on the source: whether it is outstanding is in
        // guest memory, so the line level follows from it.
        if self.block_holds_ready() {
            self.set_ready_pending(true);
        }
        self.st().owed_token = WAKE_ALL;
        self.vcpu.shared().request_async_pf();
        Ok(())
    }

    /// Turns a fault that needs I/O into PAGE_NOT_PRESENT, if allowed.
    fn try_async(&mut self, gfn: Gfn, ipa: Gpa, hva: u64, nested: bool) -> Result<(), Fallback> {
        if nested || !self.available() || !self.vcpu.abort().is_from_el0() {
            return Err(Fallback::NotEl0);
        }
        if !self.enabled() {
            return Err(Fallback::Disabled);
        }
        if self.take_refault(gfn) {
            return Err(Fallback::Refault);
        }
        if self.st().owed_token != 0 || !self.block_free() {
            return Err(Fallback::Busy);
        }
        if self
            .vcpu
            .async_pf_any(|pf| !pf.is_wakeup_all() && pf.arch().gfn == gfn.as_u64())
        {
            async_pf::trace_repeated_fault(ipa);
            return Err(Fallback::Repeat);
        }
        if self.vcpu.async_pf_queued() >= async_pf::SLOTS {
            return Err(Fallback::QueueFull);
        }
        let arch = bindings::kvm_arch_async_pf {
            token: self.next_token(),
            gfn: gfn.as_u64(),
            esr: self.vcpu.abort().esr(),
        };
        match self.vcpu.async_pf_setup(ipa, hva, arch) {
            Some(true) => Ok(()),
            // The block could not be written: the fetch goes on, but the
            // guest never hears of it, so take the fault synchronously.
            Some(false) => Err(Fallback::Busy),
            None => Err(Fallback::QueueFull),
        }
    }

    /// Maps the page a completed fetch brought in, before PAGE_READY tells
    /// the guest, so that its retry does not fault: one exit fewer per
    /// event. Returns whether the page is mapped. If it went away again
    /// meanwhile, nothing is fetched: the retry faults as without this.
    /// A page mapped here and evicted again before the retry faults anew,
    /// like any other page.
    fn map_ready(&mut self, work: &AsyncPf) -> bool {
        self.st().mapping = true;
        let mapped = self.vcpu.map_abort(work.gpa(), work.arch().esr).is_ok();
        self.st().mapping = false;
        mapped
    }

    fn count(&mut self, why: Fallback) {
        self.vcpu.count(|s| match why {
            Fallback::NotEl0 => &s.apf_sync_not_el0,
            Fallback::Disabled => &s.apf_sync_disabled,
            Fallback::Busy => &s.apf_sync_busy,
            Fallback::QueueFull => &s.apf_sync_queue_full,
            Fallback::Repeat => &s.apf_sync_repeat,
            Fallback::Refault => &s.apf_sync_refault,
        });
    }

    fn hypercall(&mut self) -> SmcccResult {
        if self.vcpu.is_32bit() || !self.available() {
            return Err(SmcccError::NotSupported);
        }
        match self.vcpu.reg(1) {
            CALL_VERSION => Ok(bindings::KVM_ASYNC_PF_VERSION_1_0.into()),
            CALL_SLOTS => Ok(async_pf::SLOTS.into()),
            CALL_IRQ => Ok(irq_of(self.st()).into()),
            CALL_ENABLE => {
                let (gpa, flags) = (self.vcpu.reg(2), self.vcpu.reg(3));
                if flags & !ENABLED != 0 {
                    return Err(SmcccError::InvalidParameter);
                }
                if gpa == 0 || flags & ENABLED == 0 {
                    self.disable();
                    return Ok(0);
                }
                match self.enable(Gpa::new(gpa)) {
                    Ok(()) => Ok(0),
                    Err(e) if e == ENODEV => Err(SmcccError::NotSupported),
                    Err(_) => Err(SmcccError::InvalidParameter),
                }
            }
            CALL_DISABLE => {
                self.disable();
                Ok(0)
            }
            // The next event goes out before the guest is next entered. An
            // ACK cannot lose an event: while the block still holds a
            // PAGE_READY (e.g. the wake-all of a restore, reached by an ACK
            // the guest issued before the VM was saved), the line stays up.
            CALL_ACK => {
                let still_ready = self.block_holds_ready();
                self.set_ready_pending(still_ready);
                Ok(0)
            }
            _ => Err(SmcccError::NotSupported),
        }
    }

    /// Checks a PPI for the IRQ attribute: not one the VM's timers or PMU
    /// use, and the same as any other vCPU of the VM was given.
    fn ppi_ok(&self, irq: u32) -> Result {
        if !PPIS.contains(&irq) {
            return Err(EINVAL);
        }
        let kvm = self.vcpu.shared().kvm();
        if kvm.timer_uses_ppi(irq) {
            return Err(EBUSY);
        }
        let me = self.vcpu.idx();
        if kvm.any_vcpu(|v| v.pmu_ppi() == Some(irq)) {
            return Err(EBUSY);
        }
        if kvm.any_vcpu(|v| {
            let other = v.apf_state_racy().irq;
            v.idx() != me && other != 0 && other != irq
        }) {
            return Err(EINVAL);
        }
        Ok(())
    }

    fn set_attr(&mut self, attr: u64, user: UserSlice) -> Result {
        let mut reader = user.reader();
        match attr {
            ATTR_IRQ => {
                let irq: u32 = reader.read()?;
                let kvm = self.vcpu.shared().kvm();
                kvm.with_config_lock(|| {
                    if kvm.has_ran_once() {
                        return Err(EBUSY);
                    }
                    self.ppi_ok(irq)?;
                    self.st().irq = irq;
                    Ok(())
                })
            }
            ATTR_BLOCK => {
                let val: u64 = reader.read()?;
                let flags = val & (BLOCK_ALIGN - 1);
                if flags & !ENABLED != 0 {
                    return Err(EINVAL);
                }
                // KVM_ARM_VCPU_INIT resets the vCPU, which would wipe it.
                if !self.vcpu.initialized() {
                    return Err(ENOEXEC);
                }
                let kvm = self.vcpu.shared().kvm();
                kvm.with_config_lock(|| {
                    if kvm.has_ran_once() {
                        return Err(EBUSY);
                    }
                    if flags & ENABLED == 0 {
                        self.disable();
                        return Ok(());
                    }
                    // A guest that cannot see the service must get no event.
                    if !self.available() || !kvm.vendor_hyp_func_visible(APF_FUNC) {
                        return Err(EINVAL);
                    }
                    // The block's memslot is looked up, and read.
                    kvm.srcu_read(|| self.enable(Gpa::new(val & !(BLOCK_ALIGN - 1))))
                })
            }
            _ => Err(ENXIO),
        }
    }

    fn get_attr(&mut self, attr: u64, user: UserSlice) -> Result {
        let mut writer = user.writer();
        match attr {
            ATTR_IRQ => writer.write(&irq_of(self.st())),
            ATTR_BLOCK => writer.write(&self.st().block),
            _ => Err(ENXIO),
        }
    }

    /// First `KVM_RUN` of the vCPU, after the timer and the PMU claimed
    /// their PPIs: claim ours, if the guest may see the service. Every vCPU
    /// must use the same one.
    fn first_run(&mut self) -> Result {
        let kvm = self.vcpu.shared().kvm();
        if !kvm.has_irqchip() || !kvm.vendor_hyp_func_visible(APF_FUNC) || !self.available() {
            return Ok(());
        }
        let irq = irq_of(self.st());
        if kvm.any_vcpu(|v| irq_of(&v.apf_state_racy()) != irq) {
            return Err(EINVAL);
        }
        let owner = self.vcpu.shared();
        match self.vcpu.claim_ppi(irq, owner) {
            // The timer or the PMU has it: the same answer as the attribute.
            Err(e) if e == EEXIST => Err(EBUSY),
            res => res,
        }
    }
}

/// The PPI that signals PAGE_READY: the VMM's choice, or the default until
/// it makes one.
fn irq_of(st: &bindings::kvm_apf_state) -> u32 {
    match st.irq {
        0 => bindings::KVM_ASYNC_PF_DEFAULT_IRQ,
        irq => irq,
    }
}

fn errno(res: Result) -> c_int {
    match res {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

// The entry points below are what C calls: the hooks of
// `asm/kvm_async_pf.h` and the `kvm_arch_async_page_*()` hooks of
// `virt/kvm/async_pf.c`. `#[export]` checks each prototype against C's at
// build time.

/// Faults in `gfn` for `user_mem_abort()`, or turns the fault into
/// PAGE_NOT_PRESENT. Returns `true` in the latter case, and when
/// [`Apf::map_ready`] finds the page not resident: nothing is to be mapped.
/// Otherwise `*pfn` and `*writable` are set as by `__gfn_to_pfn_memslot()`.
///
/// # Safety
///
/// Called from `user_mem_abort()` on the vCPU's thread with `kvm->srcu`
/// held: `vcpu` and `slot` are valid, and `writable` and `pfn` are valid for
/// writes.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_faultin(
    vcpu: *mut bindings::kvm_vcpu,
    slot: *mut bindings::kvm_memory_slot,
    gfn: bindings::gfn_t,
    ipa: bindings::phys_addr_t,
    hva: usize,
    nested: bool,
    write_fault: bool,
    writable: *mut bool,
    pfn: *mut bindings::kvm_pfn_t,
) -> bool {
    // SAFETY: The caller owns the vCPU (its outer view, if any, is lent to
    // this call: `Apf::map_ready()`) and holds `kvm->srcu` (see above).
    let (vcpu, slot) = unsafe { (OwnedVcpu::from_raw(vcpu), Memslot::from_raw(slot)) };
    let gfn = Gfn::new(gfn);
    let mut apf = Apf::of(vcpu);
    let (p, w) = match slot.faultin_nowait(gfn, write_fault) {
        // Apf::map_ready() maps a page that is there, and leaves an error
        // (e.g. a poisoned page, which signals the VMM) to the retry.
        Some((p, _)) if apf.st().mapping && p & PFN_ERR_NOSLOT_MASK != 0 => return true,
        Some(done) => {
            // The retry after PAGE_READY found the page: nothing to remember.
            apf.take_refault(gfn);
            done
        }
        // Apf::map_ready() takes only a page that is resident.
        None if apf.st().mapping => return true,
        None => {
            match apf.try_async(gfn, Gpa::new(ipa), hva as u64, nested) {
                Ok(()) => return true,
                Err(why) => apf.count(why),
            }
            slot.faultin(gfn, write_fault)
        }
    };
    // SAFETY: The caller passes pointers valid for writes.
    unsafe {
        *pfn = p;
        *writable = w;
    }
    false
}

/// Handles `ARM_SMCCC_VENDOR_HYP_KVM_ASYNC_PF_FUNC_ID`. The SMCCC filter
/// has already refused the call if the VMM hid the service.
///
/// # Safety
///
/// Called by the SMCCC dispatcher on the vCPU's thread; `vcpu` is valid.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_hypercall(vcpu: *mut bindings::kvm_vcpu) -> c_int {
    // SAFETY: The caller owns the vCPU.
    let mut apf = Apf::of(unsafe { OwnedVcpu::from_raw(vcpu) });
    let res = apf.hypercall();
    apf.vcpu.set_smccc_ret(smccc::to_regs(res));
    1
}

/// `KVM_SET_DEVICE_ATTR` for group `KVM_ARM_VCPU_ASYNC_PF_CTRL`.
///
/// # Safety
///
/// Called from the vCPU ioctl with `vcpu->mutex` held; `vcpu` and `attr`
/// are valid.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_set_attr(
    vcpu: *mut bindings::kvm_vcpu,
    attr: *mut bindings::kvm_device_attr,
) -> c_int {
    // SAFETY: The caller owns the vCPU and passes a valid `attr`.
    let (vcpu, attr) = unsafe { (OwnedVcpu::from_raw(vcpu), &*attr) };
    let user = UserSlice::new(attr.addr as usize, core::mem::size_of::<u64>());
    errno(Apf::of(vcpu).set_attr(attr.attr, user))
}

/// `KVM_GET_DEVICE_ATTR` for group `KVM_ARM_VCPU_ASYNC_PF_CTRL`.
///
/// # Safety
///
/// As for [`kvm_arm_apf_set_attr`].
#[export]
pub unsafe extern "C" fn kvm_arm_apf_get_attr(
    vcpu: *mut bindings::kvm_vcpu,
    attr: *mut bindings::kvm_device_attr,
) -> c_int {
    // SAFETY: The caller owns the vCPU and passes a valid `attr`.
    let (vcpu, attr) = unsafe { (OwnedVcpu::from_raw(vcpu), &*attr) };
    let len = match attr.attr {
        ATTR_IRQ => core::mem::size_of::<u32>(),
        _ => core::mem::size_of::<u64>(),
    };
    errno(Apf::of(vcpu).get_attr(attr.attr, UserSlice::new(attr.addr as usize, len)))
}

/// `KVM_HAS_DEVICE_ATTR` for group `KVM_ARM_VCPU_ASYNC_PF_CTRL`.
///
/// # Safety
///
/// `attr` is valid.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_has_attr(
    _vcpu: *mut bindings::kvm_vcpu,
    attr: *mut bindings::kvm_device_attr,
) -> c_int {
    // SAFETY: The caller passes a valid `attr`.
    match unsafe { (*attr).attr } {
        ATTR_IRQ | ATTR_BLOCK => 0,
        _ => ENXIO.to_errno(),
    }
}

/// First `KVM_RUN` of a vCPU: claim the PPI in the vGIC. Returns 0,
/// `-EBUSY` if the timer or the PMU has it, or `-EINVAL` if the vCPUs of
/// the VM were given different ones.
///
/// # Safety
///
/// Called from `kvm_arch_vcpu_run_pid_change()` by the vCPU's thread.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_first_run(vcpu: *mut bindings::kvm_vcpu) -> c_int {
    // SAFETY: The caller owns the vCPU.
    errno(Apf::of(unsafe { OwnedVcpu::from_raw(vcpu) }).first_run())
}

/// Before each guest entry: write a PAGE_READY that is owed, then hand the
/// fetches that completed to the hooks below.
///
/// # Safety
///
/// Called from `check_vcpu_requests()` on the vCPU's thread.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_check_completion(vcpu: *mut bindings::kvm_vcpu) {
    // SAFETY: The caller owns the vCPU.
    let mut apf = Apf::of(unsafe { OwnedVcpu::from_raw(vcpu) });
    if apf.enabled() {
        apf.deliver_owed();
    }
    apf.vcpu.async_pf_check_completion();
}

/// Part of `kvm_arch_vcpu_runnable()`: can a PAGE_READY be delivered now?
/// Not while the last one waits for its ACK, nor while the block cannot be
/// accessed: the guest may idle in WFI meanwhile, and waking the vCPU for
/// nothing would burn a host CPU. Delivery is retried at each entry.
///
/// # Safety
///
/// `vcpu` is valid. Other vCPUs' threads may call this too
/// (`kvm_vcpu_on_spin()`), so it only reads.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_pending(vcpu: *mut bindings::kvm_vcpu) -> bool {
    // SAFETY: The caller passes a valid vCPU; the view is shared.
    let vcpu = unsafe { Vcpu::from_raw(vcpu) };
    let st = vcpu.apf_state_racy();
    st.block & ENABLED != 0
        && !st.ready_pending
        && !st.stalled
        && (st.owed_token != 0 || vcpu.async_pf_done())
}

/// vCPU reset (first `KVM_ARM_VCPU_INIT`, PSCI CPU_ON, system reset): the
/// guest's registration and faults are gone; the VMM's PPI choice stays.
///
/// # Safety
///
/// Called from `kvm_reset_vcpu()` by the vCPU's owner, preemptible.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_reset(vcpu: *mut bindings::kvm_vcpu) {
    // SAFETY: The caller owns the vCPU.
    Apf::of(unsafe { OwnedVcpu::from_raw(vcpu) }).disable();
}

/// Hook of `KVM_SET_ONE_REG` of `KVM_REG_ARM_VENDOR_HYP_BMAP_2`, with
/// `kvm->arch.config_lock` held: a VMM may not hide APF while a vCPU has a
/// control block enabled (restored with the BLOCK attribute), since the
/// guest could then no longer ACK an event. Returns 0 or `-EBUSY`.
///
/// # Safety
///
/// `kvm` is valid and the caller holds its `config_lock`.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_check_bmap(kvm: *mut bindings::kvm, bmap: u64) -> c_int {
    if bmap & (1u64 << (APF_FUNC - 64)) != 0 {
        return 0;
    }
    // SAFETY: The caller passes a valid VM and holds it for the call.
    let kvm = unsafe { Kvm::from_raw(kvm) };
    // Blocks are only enabled under `config_lock` before the first run,
    // which the caller holds, so the racy read is exact here.
    if kvm.any_vcpu(|v| v.apf_state_racy().block & ENABLED != 0) {
        EBUSY.to_errno()
    } else {
        0
    }
}

/// vCPU teardown: free every fault in flight, detaching (not waiting
/// for) the fetches still running.
///
/// # Safety
///
/// Called from `kvm_arch_vcpu_destroy()`; nothing else uses the vCPU.
#[export]
pub unsafe extern "C" fn kvm_arm_apf_destroy(vcpu: *mut bindings::kvm_vcpu) {
    // SAFETY: The caller owns the vCPU.
    unsafe { OwnedVcpu::from_raw(vcpu) }.async_pf_clear();
}

/// Hook of `kvm_setup_async_pf()`: tell the guest the page is not present.
///
/// # Safety
///
/// Called on the vCPU's thread from [`kvm_arm_apf_faultin`], through
/// `kvm_setup_async_pf()`; `vcpu` and `work` are valid.
#[export]
pub unsafe extern "C" fn kvm_arch_async_page_not_present(
    vcpu: *mut bindings::kvm_vcpu,
    work: *mut bindings::kvm_async_pf,
) -> bool {
    // SAFETY: The caller owns the vCPU (its outer view is lent to this
    // call) and passes a valid work item.
    let (vcpu, work) = unsafe { (OwnedVcpu::from_raw(vcpu), AsyncPf::from_raw(work)) };
    let token = work.arch().token;
    let mut apf = Apf::of(vcpu);
    if apf
        .post(bindings::KVM_PV_REASON_PAGE_NOT_PRESENT, token)
        .is_err()
    {
        return false;
    }
    // An architectural synchronous external abort at the faulting
    // instruction; the block's reason tells the guest what it means.
    let (fetch, va) = (apf.vcpu.abort().is_iabt(), apf.vcpu.fault_va());
    apf.vcpu.inject_external_abort(fetch, va);
    apf.vcpu.count(|s| &s.apf_not_present);
    async_pf::trace_not_present(token, work.gpa());
    true
}

/// Hook of `kvm_check_async_pf_completion()`: may the next completed item
/// be taken off the done list? Once APF is off, items are dropped without
/// delivery. Otherwise only when the PAGE_READY can be written now.
///
/// # Safety
///
/// Called on the vCPU's thread; `vcpu` is valid.
#[export]
pub unsafe extern "C" fn kvm_arch_can_dequeue_async_page_present(
    vcpu: *mut bindings::kvm_vcpu,
) -> bool {
    // SAFETY: The caller owns the vCPU.
    let mut apf = Apf::of(unsafe { OwnedVcpu::from_raw(vcpu) });
    !apf.enabled() || (apf.st().owed_token == 0 && apf.block_free())
}

/// Hook of `kvm_check_async_pf_completion()` before the delivery: nothing
/// to do, as [`kvm_arch_async_page_present`] maps the page, whose outcome
/// decides how the guest's retry is treated.
///
/// # Safety
///
/// Called on the vCPU's thread; nothing is dereferenced.
#[export]
pub unsafe extern "C" fn kvm_arch_async_page_ready(
    _vcpu: *mut bindings::kvm_vcpu,
    _work: *mut bindings::kvm_async_pf,
) {
}

/// Hook of `kvm_check_async_pf_completion()`: map the page and deliver
/// PAGE_READY. The item is freed on return, so its token is owed until it
/// is written.
///
/// # Safety
///
/// Called on the vCPU's thread; `vcpu` and `work` are valid.
#[export]
pub unsafe extern "C" fn kvm_arch_async_page_present(
    vcpu: *mut bindings::kvm_vcpu,
    work: *mut bindings::kvm_async_pf,
) {
    // SAFETY: The caller owns the vCPU and passes a valid work item.
    let (vcpu, work) = unsafe { (OwnedVcpu::from_raw(vcpu), AsyncPf::from_raw(work)) };
    let mut apf = Apf::of(vcpu);
    if !apf.enabled() || !work.notpresent_injected() || work.is_wakeup_all() {
        return;
    }
    let arch = work.arch();
    let mapped = apf.map_ready(work);
    let st = apf.st();
    st.owed_token = arch.token;
    st.owed_gfn = arch.gfn;
    st.owed_mapped = mapped;
    apf.deliver_owed();
}

/// Hook of the work item that fetched a page: kick the vCPU so that it
/// looks at its completion queue, which it does before every guest entry.
/// A vCPU blocked in WFI wakes up, as [`kvm_arm_apf_pending`] makes
/// `kvm_arch_vcpu_runnable()` true.
///
/// # Safety
///
/// `vcpu` is valid; called from a work item, so the vCPU is not ours.
#[export]
pub unsafe extern "C" fn kvm_arch_async_page_present_queued(vcpu: *mut bindings::kvm_vcpu) {
    // SAFETY: `vcpu` is valid; the view is shared.
    unsafe { Vcpu::from_raw(vcpu) }.request_async_pf();
}
