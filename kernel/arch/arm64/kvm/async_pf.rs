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
        Gfn, Gpa, Kvm, Memslot, Vcpu,
    },
    prelude::*,
    uaccess::UserSlice,
};

const ENABLED: u64 = bindings::KVM_ASYNC_PF_ENABLED as u64;
const PAGE_READY: u32 = bindings::KVM_PV_REASON_PAGE_READY;
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
const TOKEN_VCPU_BITS: u32 = 12;
const TOKEN_SEQ_MASK: u32 = (1 << (32 - TOKEN_VCPU_BITS)) - 1;
/// `KVM_REQ_ASYNC_PF` of `asm/kvm_host.h`, which is `KVM_ARCH_REQ(9)`.
const REQ_ASYNC_PF: u32 = bindings::KVM_REQUEST_ARCH_BASE + 9;

/// Why a fault that needed I/O was handled synchronously.
#[derive(Clone, Copy)]
enum Fallback {
    /// Not from AArch64 EL0, or in a nested guest: the guest cannot switch
    /// tasks there.
    NotEl0,
    /// The guest has not enabled APF on this vCPU.
    Disabled,
    /// The control block still holds an event the guest has not consumed.
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

/// The APF state of one vCPU (`struct kvm_vcpu_apf`).
///
/// # Invariants
///
/// `st` points to the state embedded in `vcpu`, which only `vcpu`'s owning
/// thread, the holder of the `&Vcpu`, touches.
struct Apf<'a> {
    vcpu: &'a Vcpu,
    st: *mut bindings::kvm_vcpu_apf,
}

impl<'a> Apf<'a> {
    fn of(vcpu: &'a Vcpu) -> Self {
        // SAFETY: The vCPU is valid, so is its arch state.
        let st = unsafe { core::ptr::addr_of_mut!((*vcpu.arch()).apf) };
        // INVARIANT: `st` is embedded in `vcpu`, which the caller owns.
        Self { vcpu, st }
    }

    fn block(&self) -> u64 {
        // SAFETY: `st` is valid and ours (type invariant).
        unsafe { (*self.st).block }
    }

    fn enabled(&self) -> bool {
        self.block() & ENABLED != 0
    }

    /// The PPI that signals PAGE_READY: the VMM's choice, or the default
    /// until it makes one.
    fn irq(&self) -> u32 {
        // SAFETY: `st` is valid and ours (type invariant).
        match unsafe { (*self.st).irq } {
            0 => bindings::KVM_ASYNC_PF_DEFAULT_IRQ,
            irq => irq,
        }
    }

    /// Whether this vCPU may use APF at all: not with a virtual EL2, whose
    /// nested guest could reach the hypercall and make the host write into
    /// the L1 guest's memory.
    fn available(&self) -> bool {
        !self.vcpu.has_nv()
    }

    fn ready_pending(&self) -> bool {
        // SAFETY: `st` is valid and ours (type invariant).
        unsafe { (*self.st).ready_pending }
    }

    fn cache(&mut self) -> &mut GuestCache {
        // SAFETY: `st` is valid and ours (type invariant); the cache was
        // initialised when the block was registered, and is only used then.
        unsafe { GuestCache::from_raw(core::ptr::addr_of_mut!((*self.st).cache)) }
    }

    /// Returns the `reason` field of the guest's control block.
    fn reason(&mut self) -> Result<u32> {
        let kvm = self.vcpu.kvm();
        self.cache().read::<u32>(kvm, REASON_OFFSET)
    }

    /// Writes an event into the control block: the token, then the reason.
    fn post(&mut self, reason: u32, token: u32) -> Result {
        let kvm = self.vcpu.kvm();
        self.cache().write(kvm, TOKEN_OFFSET, &token)?;
        self.cache().write(kvm, REASON_OFFSET, &reason)
    }

    /// Returns whether a new event may be written into the control block.
    fn block_free(&mut self) -> bool {
        !self.ready_pending() && matches!(self.reason(), Ok(0))
    }

    /// Returns whether the block holds a PAGE_READY the guest has not
    /// consumed. Then the PPI must be up: the guest only looks at the block
    /// when it takes the interrupt.
    fn block_holds_ready(&mut self) -> bool {
        matches!(self.reason(), Ok(PAGE_READY))
    }

    /// Remembers that the fetch of `gfn` was reported ready: the guest's
    /// retry must not be sent asynchronously again. Holds as many pages as
    /// faults may be outstanding; the oldest is forgotten first.
    fn note_refault(&mut self, gfn: Gfn) {
        // SAFETY: `st` is valid and ours (type invariant).
        let st = unsafe { &mut *self.st };
        let slot = st.refault_next as usize % st.refault.len();
        // Stored plus one: 0 marks a free entry.
        st.refault[slot] = gfn.as_u64() + 1;
        st.refault_next = st.refault_next.wrapping_add(1);
    }

    /// Forgets `gfn` if a PAGE_READY for it is still unanswered by a
    /// retry; returns whether it was.
    fn take_refault(&mut self, gfn: Gfn) -> bool {
        // SAFETY: `st` is valid and ours (type invariant).
        let st = unsafe { &mut *self.st };
        match st.refault.iter_mut().find(|g| **g == gfn.as_u64() + 1) {
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
            // SAFETY: `st` is valid and ours (type invariant).
            let seq = unsafe {
                (*self.st).seq = (*self.st).seq.wrapping_add(1) & TOKEN_SEQ_MASK;
                (*self.st).seq
            };
            let token = (seq << TOKEN_VCPU_BITS) | idx;
            // At most SLOTS tokens are in use, so this ends quickly.
            if seq != 0 && async_pf::token_is_free(self.vcpu, token) {
                return token;
            }
        }
    }

    fn set_ready_pending(&mut self, pending: bool) {
        if pending == self.ready_pending() {
            return;
        }
        // SAFETY: `st` is valid and ours (type invariant).
        unsafe { (*self.st).ready_pending = pending };
        // The line stays up until the guest acks, like a level interrupt.
        // It only fails without a vGIC, where APF cannot be enabled.
        let _ = self.vcpu.set_ppi_level(self.irq(), pending);
    }

    /// Forgets the registration and every fault in flight. Writes nothing
    /// to the guest, now or later.
    fn disable(&mut self) {
        self.vcpu.async_pf_clear();
        self.set_ready_pending(false);
        // SAFETY: `st` is valid and ours (type invariant).
        unsafe {
            (*self.st).block = 0;
            (*self.st).refault = [0; async_pf::SLOTS as usize];
        }
    }

    /// Registers the control block at `gpa` and queues a wake-all, which
    /// also wakes tasks a migration source had parked.
    fn enable(&mut self, gpa: Gpa) -> Result {
        if gpa.as_u64() == 0 || !gpa.is_aligned(BLOCK_ALIGN) {
            return Err(EINVAL);
        }
        if !self.vcpu.kvm().has_irqchip() {
            return Err(ENODEV);
        }
        // Validate into a scratch cache, so that failure changes nothing.
        let mut scratch = bindings::gfn_to_hva_cache::default();
        // SAFETY: `scratch` is a local we own.
        unsafe { GuestCache::from_raw(&mut scratch) }.init(self.vcpu.kvm(), gpa, BLOCK_SIZE)?;
        self.disable();
        // SAFETY: `st` is valid and ours (type invariant).
        unsafe {
            (*self.st).cache = scratch;
            (*self.st).block = gpa.as_u64() | ENABLED;
        }
        // A block restored by a VMM may hold a PAGE_READY that was sent,
        // and maybe acked, on the source: whether it is outstanding is in
        // guest memory, so the line level follows from it.
        if self.block_holds_ready() {
            self.set_ready_pending(true);
        }
        self.vcpu.async_pf_wakeup_all()
    }

    fn count(&self, why: Fallback) {
        let stat = self.vcpu.stat();
        // SAFETY: The stats are valid and only the vCPU's thread writes them.
        unsafe {
            match why {
                Fallback::NotEl0 => (*stat).apf_sync_not_el0 += 1,
                Fallback::Disabled => (*stat).apf_sync_disabled += 1,
                Fallback::Busy => (*stat).apf_sync_busy += 1,
                Fallback::QueueFull => (*stat).apf_sync_queue_full += 1,
                Fallback::Repeat => (*stat).apf_sync_repeat += 1,
                Fallback::Refault => (*stat).apf_sync_refault += 1,
            }
        }
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
        if !self.block_free() {
            return Err(Fallback::Busy);
        }
        if async_pf::gfn_is_pending(self.vcpu, gfn) {
            async_pf::trace_repeated_fault(ipa);
            return Err(Fallback::Repeat);
        }
        if self.vcpu.async_pf_queued() >= async_pf::SLOTS {
            return Err(Fallback::QueueFull);
        }
        let arch = bindings::kvm_arch_async_pf {
            token: self.next_token(),
            gfn: gfn.as_u64(),
        };
        match self.vcpu.async_pf_setup(ipa, hva, arch) {
            Some(pf) if pf.notpresent_injected() => Ok(()),
            // The block could not be written: the fetch goes on, but the
            // guest never hears of it, so take the fault synchronously.
            Some(_) => Err(Fallback::Busy),
            None => Err(Fallback::QueueFull),
        }
    }

    fn hypercall(&mut self) -> SmcccResult {
        if self.vcpu.is_32bit() || !self.available() {
            return Err(SmcccError::NotSupported);
        }
        match self.vcpu.reg(1) {
            CALL_VERSION => Ok(bindings::KVM_ASYNC_PF_VERSION_1_0.into()),
            CALL_SLOTS => Ok(async_pf::SLOTS.into()),
            CALL_IRQ => Ok(self.irq().into()),
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

    fn set_attr(&mut self, attr: u64, user: UserSlice) -> Result {
        let mut reader = user.reader();
        match attr {
            ATTR_IRQ => {
                let irq: u32 = reader.read()?;
                if !(16..=31).contains(&irq) {
                    return Err(EINVAL);
                }
                let kvm = self.vcpu.kvm();
                kvm.with_config_lock(|| {
                    if kvm.has_ran_once() {
                        return Err(EBUSY);
                    }
                    // SAFETY: `st` is valid and ours (type invariant).
                    unsafe { (*self.st).irq = irq };
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
                let kvm = self.vcpu.kvm();
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

    fn get_attr(&self, attr: u64, user: UserSlice) -> Result {
        let mut writer = user.writer();
        match attr {
            ATTR_IRQ => writer.write(&self.irq()),
            ATTR_BLOCK => writer.write(&self.block()),
            _ => Err(ENXIO),
        }
    }
}

fn errno(res: Result) -> c_int {
    match res {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Faults in `gfn` for `user_mem_abort()`, or turns the fault into
/// PAGE_NOT_PRESENT. Returns `true` in the latter case: the guest is to be
/// resumed without a mapping. Otherwise `*pfn` and `*writable` are set as
/// by `__gfn_to_pfn_memslot()`.
///
/// # Safety
///
/// Called from `user_mem_abort()` on the vCPU's thread with `kvm->srcu`
/// held: `vcpu` and `slot` are valid, and `writable` and `pfn` are valid for
/// writes.
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_faultin(
    vcpu: *mut bindings::kvm_vcpu,
    slot: *mut bindings::kvm_memory_slot,
    gfn: u64,
    ipa: u64,
    hva: u64,
    nested: bool,
    write_fault: bool,
    writable: *mut bool,
    pfn: *mut u64,
) -> bool {
    // SAFETY: The caller owns the vCPU and holds `kvm->srcu` (see above).
    let (vcpu, slot) = unsafe { (Vcpu::from_raw(vcpu), Memslot::from_raw(slot)) };
    let gfn = Gfn::new(gfn);
    let (p, w) = match slot.faultin_nowait(gfn, write_fault) {
        Some(done) => {
            // The retry after PAGE_READY found the page: nothing to remember.
            Apf::of(vcpu).take_refault(gfn);
            done
        }
        None => {
            let mut apf = Apf::of(vcpu);
            match apf.try_async(gfn, Gpa::new(ipa), hva, nested) {
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
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_hypercall(vcpu: *mut bindings::kvm_vcpu) -> c_int {
    // SAFETY: The caller owns the vCPU.
    let vcpu = unsafe { Vcpu::from_raw(vcpu) };
    let res = Apf::of(vcpu).hypercall();
    vcpu.set_smccc_ret(smccc::to_regs(res));
    1
}

/// `KVM_SET_DEVICE_ATTR` for group `KVM_ARM_VCPU_ASYNC_PF_CTRL`.
///
/// # Safety
///
/// Called from the vCPU ioctl with `vcpu->mutex` held; `vcpu` and `attr`
/// are valid.
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_set_attr(
    vcpu: *mut bindings::kvm_vcpu,
    attr: *const bindings::kvm_device_attr,
) -> c_int {
    // SAFETY: The caller owns the vCPU and passes a valid `attr`.
    let (vcpu, attr) = unsafe { (Vcpu::from_raw(vcpu), &*attr) };
    let user = UserSlice::new(attr.addr as usize, core::mem::size_of::<u64>());
    errno(Apf::of(vcpu).set_attr(attr.attr, user))
}

/// `KVM_GET_DEVICE_ATTR` for group `KVM_ARM_VCPU_ASYNC_PF_CTRL`.
///
/// # Safety
///
/// As for [`kvm_arm_apf_set_attr`].
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_get_attr(
    vcpu: *mut bindings::kvm_vcpu,
    attr: *const bindings::kvm_device_attr,
) -> c_int {
    // SAFETY: The caller owns the vCPU and passes a valid `attr`.
    let (vcpu, attr) = unsafe { (Vcpu::from_raw(vcpu), &*attr) };
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
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_has_attr(
    _vcpu: *mut bindings::kvm_vcpu,
    attr: *const bindings::kvm_device_attr,
) -> c_int {
    // SAFETY: The caller passes a valid `attr`.
    match unsafe { (*attr).attr } {
        ATTR_IRQ | ATTR_BLOCK => 0,
        _ => ENXIO.to_errno(),
    }
}

/// vCPU reset (first `KVM_ARM_VCPU_INIT`, PSCI CPU_ON, system reset): the
/// guest's registration and faults are gone; the VMM's PPI choice stays.
///
/// # Safety
///
/// Called from `kvm_reset_vcpu()` by the vCPU's owner, preemptible.
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_reset(vcpu: *mut bindings::kvm_vcpu) {
    // SAFETY: The caller owns the vCPU.
    let vcpu = unsafe { Vcpu::from_raw(vcpu) };
    Apf::of(vcpu).disable();
}

/// Hook of `KVM_SET_ONE_REG` of `KVM_REG_ARM_VENDOR_HYP_BMAP_2`, with
/// `kvm->arch.config_lock` held: a VMM may not hide APF while a vCPU has a
/// control block enabled (restored with the BLOCK attribute), since the
/// guest could then no longer ACK an event. Returns 0 or `-EBUSY`.
///
/// # Safety
///
/// `kvm` is valid and the caller holds its `config_lock`.
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_check_bmap(kvm: *mut bindings::kvm, bmap: u64) -> c_int {
    if bmap & (1u64 << (APF_FUNC - 64)) != 0 {
        return 0;
    }
    // SAFETY: The caller passes a valid VM and holds it for the call.
    let kvm = unsafe { Kvm::from_raw(kvm) };
    let enabled = kvm.any_vcpu(|vcpu| {
        // SAFETY: `vcpu` is valid (see `any_vcpu`); `block` is only changed
        // under `config_lock` before the first run, which the caller holds.
        unsafe { (*vcpu).arch.apf.block & ENABLED != 0 }
    });
    if enabled {
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
#[no_mangle]
pub unsafe extern "C" fn kvm_arm_apf_destroy(vcpu: *mut bindings::kvm_vcpu) {
    // SAFETY: The caller owns the vCPU.
    unsafe { Vcpu::from_raw(vcpu) }.async_pf_clear();
}

/// Hook of `kvm_setup_async_pf()`: tell the guest the page is not present.
///
/// # Safety
///
/// Called on the vCPU's thread from [`kvm_arm_apf_faultin`]; `vcpu` and
/// `work` are valid.
#[no_mangle]
pub unsafe extern "C" fn kvm_arch_async_page_not_present(
    vcpu: *mut bindings::kvm_vcpu,
    work: *mut bindings::kvm_async_pf,
) -> bool {
    // SAFETY: The caller owns the vCPU and passes a valid work item.
    let (vcpu, work) = unsafe { (Vcpu::from_raw(vcpu), AsyncPf::from_raw(work)) };
    let token = work.arch().token;
    if Apf::of(vcpu)
        .post(bindings::KVM_PV_REASON_PAGE_NOT_PRESENT, token)
        .is_err()
    {
        return false;
    }
    // An architectural synchronous external abort at the faulting
    // instruction; the block's reason tells the guest what it means.
    vcpu.inject_external_abort(vcpu.abort().is_iabt(), vcpu.fault_va());
    // SAFETY: The stats are valid and only the vCPU's thread writes them.
    unsafe { (*vcpu.stat()).apf_not_present += 1 };
    async_pf::trace_not_present(token, work.gpa());
    true
}

/// Hook of `kvm_check_async_pf_completion()`: may the next completed item
/// be delivered? Once APF is off, items are dropped without delivery.
///
/// # Safety
///
/// Called on the vCPU's thread; `vcpu` is valid.
#[no_mangle]
pub unsafe extern "C" fn kvm_arch_can_dequeue_async_page_present(
    vcpu: *mut bindings::kvm_vcpu,
) -> bool {
    // SAFETY: The caller owns the vCPU.
    let mut apf = Apf::of(unsafe { Vcpu::from_raw(vcpu) });
    !apf.enabled() || apf.block_free()
}

/// Hook of `kvm_check_async_pf_completion()`: nothing to do before the
/// delivery; the guest's retry faults the now-resident page in.
#[no_mangle]
pub extern "C" fn kvm_arch_async_page_ready(
    _vcpu: *mut bindings::kvm_vcpu,
    _work: *mut bindings::kvm_async_pf,
) {
}

/// Hook of `kvm_check_async_pf_completion()`: deliver PAGE_READY.
///
/// # Safety
///
/// Called on the vCPU's thread; `vcpu` and `work` are valid.
#[no_mangle]
pub unsafe extern "C" fn kvm_arch_async_page_present(
    vcpu: *mut bindings::kvm_vcpu,
    work: *mut bindings::kvm_async_pf,
) {
    // SAFETY: The caller owns the vCPU and passes a valid work item.
    let (vcpu, work) = unsafe { (Vcpu::from_raw(vcpu), AsyncPf::from_raw(work)) };
    let mut apf = Apf::of(vcpu);
    if !apf.enabled() || !(work.is_wakeup_all() || work.notpresent_injected()) {
        return;
    }
    let token = if work.is_wakeup_all() {
        bindings::KVM_ASYNC_PF_WAKE_ALL_TOKEN
    } else {
        work.arch().token
    };
    if apf.post(bindings::KVM_PV_REASON_PAGE_READY, token).is_err() {
        return;
    }
    if !work.is_wakeup_all() {
        apf.note_refault(Gfn::new(work.arch().gfn));
    }
    apf.set_ready_pending(true);
    // SAFETY: The stats are valid and only the vCPU's thread writes them.
    unsafe { (*vcpu.stat()).apf_ready += 1 };
    async_pf::trace_ready(token, work.gpa());
}

/// Hook of the work item that fetched a page: kick the vCPU so that it
/// looks at its completion queue, which it does before every guest entry.
/// A vCPU blocked in WFI wakes up, as a non-empty queue makes
/// `kvm_arch_vcpu_runnable()` true.
///
/// # Safety
///
/// `vcpu` is valid; called from a work item, so the vCPU is not ours.
#[no_mangle]
pub unsafe extern "C" fn kvm_arch_async_page_present_queued(vcpu: *mut bindings::kvm_vcpu) {
    // SAFETY: `vcpu` is valid; requests may be made from any context.
    unsafe { Vcpu::request_raw(vcpu, REQ_ASYNC_PF) };
}
