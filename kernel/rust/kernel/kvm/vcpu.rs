// SPDX-License-Identifier: GPL-2.0

//! Handles to KVM virtual machines, vCPUs and memslots.
//!
//! A vCPU is seen two ways. [`Vcpu`] is a shared view that any thread holding
//! a valid pointer may use: it only reads what never changes and makes
//! requests. [`OwnedVcpu`] is the view of the one thread that owns the vCPU
//! for the length of a call (the thread running it, or the holder of
//! `vcpu->mutex`): it reads and changes the vCPU's registers and arch state.
//!
//! C header: [`include/linux/kvm_host.h`](srctree/include/linux/kvm_host.h).

use super::{abort::Stage2Abort, Gfn};
use crate::{bindings, error::to_result, prelude::*, types::Opaque};
use core::{ffi::c_void, marker::PhantomData, ops::Deref};

/// The INTIDs of a vCPU's private peripheral interrupts (PPIs), after the
/// 16 software-generated ones, as the vGIC numbers them.
pub const PPIS: core::ops::Range<u32> = bindings::VGIC_NR_SGIS..bindings::VGIC_NR_PRIVATE_IRQS;

/// A KVM virtual machine.
///
/// # Invariants
///
/// The wrapped `struct kvm` is valid for as long as the reference exists.
#[repr(transparent)]
pub struct Kvm(Opaque<bindings::kvm>);

impl Kvm {
    /// Creates a reference to a VM from a pointer KVM passed in.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `struct kvm` that stays valid for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::kvm) -> &'a Self {
        // SAFETY: `Kvm` is a transparent wrapper, and the caller guarantees
        // the pointer is valid for `'a`.
        unsafe { &*ptr.cast() }
    }

    /// Returns the raw pointer to the `struct kvm`.
    pub fn as_raw(&self) -> *mut bindings::kvm {
        self.0.get()
    }

    /// Returns whether any vCPU of the VM has run: configuration that the
    /// guest may have seen is frozen from then on.
    pub fn has_ran_once(&self) -> bool {
        // SAFETY: By the type invariant the `struct kvm` is valid.
        unsafe { bindings::kvm_vm_has_ran_once(self.as_raw()) }
    }

    /// Runs `f` inside a `kvm->srcu` read-side critical section, which keeps
    /// the memslots `f` looks at alive.
    pub fn srcu_read<T>(&self, f: impl FnOnce() -> T) -> T {
        // SAFETY: By the type invariant the `struct kvm` is valid.
        let idx = unsafe { bindings::kvm_srcu_read_lock(self.as_raw()) };
        let ret = f();
        // SAFETY: `idx` came from the matching lock above.
        unsafe { bindings::kvm_srcu_read_unlock(self.as_raw(), idx) };
        ret
    }

    /// Returns whether the VMM left KVM vendor hypervisor service function
    /// `func` (64..=127) visible to the guest, in the firmware
    /// pseudo-register `KVM_REG_ARM_VENDOR_HYP_BMAP_2`.
    pub fn vendor_hyp_func_visible(&self, func: u32) -> bool {
        if !(64..128).contains(&func) {
            return false;
        }
        // SAFETY: By the type invariant the `struct kvm` is valid. The VMM
        // may write the bitmap concurrently, so read it once, volatile.
        let bmap = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*self.as_raw()).arch.smccc_feat.vendor_hyp_bmap_2
            ))
        };
        (bmap as u64) & (1 << (func - 64)) != 0
    }

    /// Returns whether one of the VM's architected timers (virtual,
    /// physical, and the EL2 pair) uses PPI `intid`, as the VMM configured
    /// them so far.
    pub fn timer_uses_ppi(&self, intid: u32) -> bool {
        // SAFETY: By the type invariant the `struct kvm` is valid. The VMM
        // changes the PPIs under `config_lock`; read them once.
        let ppi = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*self.as_raw()).arch.timer_data.ppi))
        };
        ppi.iter().any(|&p| u32::from(p) == intid)
    }

    /// Runs `f` with `kvm->arch.config_lock` held, which serialises changes
    /// to VM-wide configuration against the first `KVM_RUN` and against each
    /// other. Sleeps.
    pub fn with_config_lock<T>(&self, f: impl FnOnce() -> T) -> T {
        // SAFETY: By the type invariant the `struct kvm` is valid.
        unsafe { bindings::kvm_config_lock(self.as_raw()) };
        let ret = f();
        // SAFETY: The lock was taken above, by this thread.
        unsafe { bindings::kvm_config_unlock(self.as_raw()) };
        ret
    }

    /// Calls `f` on each vCPU created so far, until it returns `true`;
    /// returns whether it did.
    pub fn any_vcpu(&self, mut f: impl FnMut(&Vcpu) -> bool) -> bool {
        // SAFETY: By the type invariant the `struct kvm` is valid.
        let n = unsafe { bindings::kvm_online_vcpus(self.as_raw()) };
        (0..n).any(|i| {
            // SAFETY: `i` is below `online_vcpus`, and vCPUs are only freed
            // with the VM.
            let vcpu = unsafe { bindings::kvm_get_vcpu(self.as_raw(), i) };
            // SAFETY: A vCPU of a VM we hold stays valid as long as the VM;
            // `Vcpu` only gives shared access.
            !vcpu.is_null() && f(unsafe { Vcpu::from_raw(vcpu) })
        })
    }

    /// Returns whether the VM has an in-kernel interrupt controller.
    pub fn has_irqchip(&self) -> bool {
        // SAFETY: By the type invariant the `struct kvm` is valid.
        unsafe { bindings::irqchip_in_kernel(self.as_raw()) }
    }
}

/// A KVM virtual CPU, shared: what any thread may do with a vCPU it does not
/// own.
///
/// # Invariants
///
/// The wrapped `struct kvm_vcpu` is valid for as long as the reference exists.
#[repr(transparent)]
pub struct Vcpu(Opaque<bindings::kvm_vcpu>);

impl Vcpu {
    /// Creates a shared reference to a vCPU.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `struct kvm_vcpu` that stays valid for
    /// `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::kvm_vcpu) -> &'a Self {
        // SAFETY: `Vcpu` is a transparent wrapper, and the caller guarantees
        // the pointer is valid for `'a`.
        unsafe { &*ptr.cast() }
    }

    /// Returns the raw pointer to the `struct kvm_vcpu`.
    pub fn as_raw(&self) -> *mut bindings::kvm_vcpu {
        self.0.get()
    }

    /// Returns the VM the vCPU belongs to.
    pub fn kvm(&self) -> &Kvm {
        // SAFETY: The vCPU is valid by the type invariant, and a vCPU never
        // outlives its VM, whose pointer it holds for its whole life.
        unsafe { Kvm::from_raw((*self.as_raw()).kvm) }
    }

    /// Returns the vCPU's index in the VM, which is below `KVM_MAX_VCPUS`.
    pub fn idx(&self) -> u32 {
        // SAFETY: The vCPU is valid by the type invariant; the index is set
        // at creation and never changes.
        unsafe { (*self.as_raw()).vcpu_idx as u32 }
    }

    /// Returns whether the vCPU has nested virtualization (a virtual EL2):
    /// its guest may run guests of its own. Fixed by the first
    /// `KVM_ARM_VCPU_INIT`.
    pub fn has_nv(&self) -> bool {
        // SAFETY: The vCPU is valid by the type invariant.
        unsafe { bindings::vcpu_has_nv(self.as_raw()) }
    }

    /// Returns the PPI of the vCPU's PMU overflow interrupt, if the VMM
    /// chose one.
    pub fn pmu_ppi(&self) -> Option<u32> {
        // SAFETY: The vCPU is valid by the type invariant.
        let irq = unsafe { bindings::kvm_vcpu_pmu_irq(self.as_raw()) };
        u32::try_from(irq).ok().filter(|i| PPIS.contains(i))
    }

    /// Returns a pointer to the vCPU's arch state, for a shared reader that
    /// knows which fields may be read racily.
    pub(crate) fn arch_ptr(&self) -> *mut bindings::kvm_vcpu_arch {
        // SAFETY: The vCPU is valid by the type invariant.
        unsafe { core::ptr::addr_of_mut!((*self.as_raw()).arch) }
    }
}

/// A KVM virtual CPU in the hands of the thread that owns it.
///
/// KVM calls into arch code for a vCPU either from the thread running it or
/// with `vcpu->mutex` held, so that caller has exclusive use of the vCPU's
/// registers and arch state for the length of the call. Methods that change
/// them take `&mut self`.
///
/// # Invariants
///
/// `vcpu` is owned by the current thread, as described above, for `'a`, and
/// no other `OwnedVcpu` of it exists meanwhile.
pub struct OwnedVcpu<'a> {
    vcpu: &'a Vcpu,
    // The owner is a thread: not `Send` or `Sync`.
    _not_send: PhantomData<*mut ()>,
}

impl<'a> OwnedVcpu<'a> {
    /// Takes the owner's view of a vCPU KVM passed in.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `struct kvm_vcpu` that the current thread
    /// owns (runs it, or holds `vcpu->mutex`) for `'a`, and the caller must
    /// not create another `OwnedVcpu` of it for `'a`.
    pub unsafe fn from_raw(ptr: *mut bindings::kvm_vcpu) -> Self {
        // INVARIANT: The caller guarantees ownership and uniqueness.
        Self {
            // SAFETY: The caller guarantees validity for `'a`.
            vcpu: unsafe { Vcpu::from_raw(ptr) },
            _not_send: PhantomData,
        }
    }

    /// Returns the shared view, which outlives this borrow.
    pub fn shared(&self) -> &'a Vcpu {
        self.vcpu
    }

    /// Returns whether `KVM_ARM_VCPU_INIT` has been done on the vCPU.
    pub fn initialized(&self) -> bool {
        // SAFETY: The vCPU is valid and ours by the type invariant.
        unsafe { bindings::kvm_vcpu_initialized(self.as_raw()) }
    }

    /// Returns whether the vCPU is executing in AArch32 state.
    pub fn is_32bit(&self) -> bool {
        // SAFETY: The vCPU is valid and ours by the type invariant.
        unsafe { bindings::vcpu_mode_is_32bit(self.as_raw()) }
    }

    /// Returns the stage-2 abort the vCPU is handling.
    pub fn abort(&self) -> Stage2Abort {
        // SAFETY: The vCPU is valid and ours by the type invariant.
        let (esr, spsr) = unsafe {
            (
                bindings::kvm_vcpu_get_esr(self.as_raw()),
                bindings::kvm_vcpu_get_spsr(self.as_raw()),
            )
        };
        Stage2Abort::new(esr, spsr)
    }

    /// Returns the faulting virtual address of the abort being handled.
    pub fn fault_va(&self) -> u64 {
        // SAFETY: The vCPU is valid and ours by the type invariant.
        unsafe { bindings::kvm_vcpu_get_far(self.as_raw()) }
    }

    /// Returns the guest's general purpose register `x<n>`, or 0 for `n`
    /// 31 (XZR) and above.
    pub fn reg(&self, n: u8) -> u64 {
        if n >= 31 {
            return 0;
        }
        // SAFETY: The vCPU is valid and ours by the type invariant, and `n`
        // names a general purpose register.
        unsafe { bindings::vcpu_get_reg(self.as_raw(), n) }
    }

    /// Sets the guest's `x0..x3` as the result of the SMCCC call it made.
    pub fn set_smccc_ret(&mut self, regs: [u64; 4]) {
        // SAFETY: The vCPU is valid and ours by the type invariant.
        unsafe { bindings::smccc_set_retval(self.as_raw(), regs[0], regs[1], regs[2], regs[3]) }
    }

    /// Makes a synchronous external abort pending at the instruction that
    /// caused the current stage-2 abort: a data abort, or an instruction
    /// abort if `fetch`, reporting `va` in FAR.
    pub fn inject_external_abort(&mut self, fetch: bool, va: u64) {
        // SAFETY: The vCPU is valid and ours by the type invariant, and is
        // handling an abort, which is what these functions report back.
        unsafe {
            if fetch {
                bindings::kvm_inject_pabt(self.as_raw(), va as _)
            } else {
                bindings::kvm_inject_dabt(self.as_raw(), va as _)
            }
        }
    }

    /// Reserves the private peripheral interrupt `intid` (in [`PPIS`]) of this
    /// vCPU's vGIC redistributor for `owner`, as the timer and the PMU
    /// reserve theirs. Fails with `EEXIST` if another owner has it, and with
    /// `EAGAIN` before the vGIC is initialised.
    pub fn claim_ppi<T>(&mut self, intid: u32, owner: &T) -> Result {
        if !PPIS.contains(&intid) {
            return Err(EINVAL);
        }
        let owner: *const T = owner;
        // SAFETY: The vCPU is valid and ours by the type invariant; the
        // owner is only compared as a cookie, never dereferenced.
        to_result(unsafe {
            bindings::kvm_vgic_set_owner(self.as_raw(), intid, owner.cast_mut().cast::<c_void>())
        })
    }

    /// Sets the level of the PPI `intid` that `owner` claimed with
    /// [`OwnedVcpu::claim_ppi`]. The vGIC ignores the change if another
    /// owner has the PPI, which a successful claim rules out.
    pub fn set_ppi_level<T>(&mut self, intid: u32, level: bool, owner: &T) -> Result {
        if !PPIS.contains(&intid) {
            return Err(EINVAL);
        }
        let owner: *const T = owner;
        // SAFETY: The vCPU and its VM are valid by the type invariant, and
        // `intid` is a PPI, which needs the target vCPU.
        to_result(unsafe {
            bindings::kvm_vgic_inject_owned_ppi(
                self.as_raw(),
                intid,
                level,
                owner.cast_mut().cast::<c_void>(),
            )
        })
    }

    /// Increments the binary stats counter that `counter` picks out of the
    /// vCPU's `struct kvm_vcpu_stat`.
    pub fn count(&mut self, counter: impl FnOnce(&bindings::kvm_vcpu_stat) -> &u64) {
        // SAFETY: The vCPU is valid by the type invariant.
        let stat = unsafe { core::ptr::addr_of_mut!((*self.as_raw()).stat) };
        let field: *const u64 = {
            // SAFETY: Only the owner, this thread, writes the counters, and
            // readers of the stats file only read them: a shared view holds.
            counter(unsafe { &*stat })
        };
        let off = (field as usize).wrapping_sub(stat as usize);
        match off.checked_add(core::mem::size_of::<u64>()) {
            Some(end) if end <= core::mem::size_of::<bindings::kvm_vcpu_stat>() => {}
            _ => return,
        }
        // SAFETY: `off` is inside the stats, as checked, and the field is a
        // `u64`. Readers of the stats file read it without locking, as they
        // do in C, so write it in one store.
        unsafe {
            let p = stat.cast::<u8>().add(off).cast::<u64>();
            core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(1));
        }
    }
}

impl Deref for OwnedVcpu<'_> {
    type Target = Vcpu;

    fn deref(&self) -> &Vcpu {
        self.vcpu
    }
}

/// A KVM memory slot: a range of guest frames backed by host memory.
///
/// # Invariants
///
/// The wrapped `struct kvm_memory_slot` is valid for as long as the reference
/// exists (the caller holds `kvm->srcu`).
#[repr(transparent)]
pub struct Memslot(Opaque<bindings::kvm_memory_slot>);

impl Memslot {
    /// Creates a reference to a memslot.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid memslot that stays valid for `'a`, e.g.
    /// because the caller holds `kvm->srcu` for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::kvm_memory_slot) -> &'a Self {
        // SAFETY: `Memslot` is a transparent wrapper; the caller guarantees
        // validity for `'a`.
        unsafe { &*ptr.cast() }
    }

    /// Faults `gfn` in, sleeping for I/O if needed. Returns the pfn, which
    /// may be a KVM error pfn for the caller to check, and whether the page
    /// may be mapped writable.
    pub fn faultin(&self, gfn: Gfn, write: bool) -> (u64, bool) {
        self.gfn_to_pfn(gfn, write, None)
    }

    /// Like [`Memslot::faultin`], but returns `None` instead of sleeping
    /// when the page is not resident and fetching it needs I/O.
    pub fn faultin_nowait(&self, gfn: Gfn, write: bool) -> Option<(u64, bool)> {
        let mut needs_io = false;
        let ret = self.gfn_to_pfn(gfn, write, Some(&mut needs_io));
        (!needs_io).then_some(ret)
    }

    fn gfn_to_pfn(&self, gfn: Gfn, write: bool, needs_io: Option<&mut bool>) -> (u64, bool) {
        let mut writable = false;
        let needs_io = needs_io.map_or(core::ptr::null_mut(), |b| b as *mut bool);
        // SAFETY: The memslot is valid by the type invariant, and the out
        // pointers are valid or null for the call.
        let pfn = unsafe {
            bindings::__gfn_to_pfn_memslot(
                self.0.get(),
                gfn.as_u64(),
                false,
                false,
                needs_io,
                write,
                &mut writable,
                core::ptr::null_mut(),
            )
        };
        (pfn, writable)
    }
}
