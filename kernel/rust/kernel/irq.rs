// SPDX-License-Identifier: GPL-2.0

//! Interrupts: local masking, per-CPU interrupts and GIC PPI mapping.
//!
//! Only what per-CPU paravirtual features need: a scoped guard that masks
//! interrupts on the local CPU, and a per-CPU interrupt line (a PPI on arm64)
//! whose handler runs on the CPU that took it.
//!
//! C headers: [`include/linux/interrupt.h`](srctree/include/linux/interrupt.h),
//! [`include/linux/irqflags.h`](srctree/include/linux/irqflags.h).

use crate::{bindings, error::to_result, prelude::*, str::CStr};
use core::{ffi::c_void, marker::PhantomData};

/// Proof that interrupts are masked on the local CPU, given to the closure
/// of [`LocalIrqDisabled::with`].
///
/// While interrupts are masked the task cannot be preempted or migrated,
/// and no interrupt handler runs on this CPU, so data shared only with this
/// CPU's interrupt handlers may be locked with a plain spinlock. Only
/// [`LocalIrqDisabled::with`] makes one, and only lends it, so masking
/// always nests: the state it restores is the one it saved.
///
/// # Invariants
///
/// Interrupts are masked on the CPU that runs the closure it was lent to,
/// for as long as the reference lives.
///
/// # Examples
///
/// ```
/// use kernel::irq::LocalIrqDisabled;
///
/// let cpu = LocalIrqDisabled::with(|irqs_off| irqs_off.cpu());
/// assert!(cpu < kernel::irq::nr_cpu_ids());
/// ```
pub struct LocalIrqDisabled {
    // Stays on the CPU it was made on.
    _not_send: PhantomData<*mut ()>,
}

impl LocalIrqDisabled {
    /// Runs `f` with interrupts masked on the local CPU, then restores their
    /// previous state.
    ///
    /// `f` must not sleep: the kernel reports a sleep with interrupts masked
    /// as a bug (`CONFIG_DEBUG_ATOMIC_SLEEP`), and the task could come back
    /// on another CPU, so [`LocalIrqDisabled::cpu`] would no longer be the
    /// CPU it runs on. Any context may call it.
    pub fn with<R>(f: impl FnOnce(&LocalIrqDisabled) -> R) -> R {
        // SAFETY: Saving and masking the local interrupt state is always
        // allowed; it is restored below, on this CPU, since the task
        // cannot migrate meanwhile.
        let flags = unsafe { bindings::local_irq_save() };
        // INVARIANT: interrupts are masked until `local_irq_restore()`,
        // and the reference does not outlive `f`.
        let r = f(&LocalIrqDisabled {
            _not_send: PhantomData,
        });
        // SAFETY: `flags` was saved just above on this CPU; anything `f`
        // masked or unmasked in between it restored, as masking nests.
        unsafe { bindings::local_irq_restore(flags) };
        r
    }

    /// Returns the number of the CPU the caller runs on, which cannot change
    /// while interrupts are masked.
    pub fn cpu(&self) -> u32 {
        // SAFETY: Always callable; with interrupts masked the result is stable.
        unsafe { bindings::raw_smp_processor_id() as u32 }
    }
}

/// Returns one more than the highest possible CPU number.
pub fn nr_cpu_ids() -> u32 {
    // SAFETY: `nr_cpu_ids` is set during early boot and not written after.
    #[cfg(CONFIG_SMP)]
    return unsafe { bindings::nr_cpu_ids };
    // Without SMP, C makes it the constant `NR_CPUS`, which is 1.
    #[cfg(not(CONFIG_SMP))]
    1
}

/// Makes the scheduler run on this CPU before it goes back to the task an
/// interrupt interrupted (and, without kernel preemption, before that task
/// next returns to user space), so that a task the handler woke competes
/// for the CPU at once instead of at the next tick.
///
/// Any context may call it: it only flags the current task.
pub fn resched_current() {
    // SAFETY: Setting the need-resched flag of the current task is valid
    // in any context; the scheduler clears it when it runs.
    unsafe { bindings::resched_current() }
}

/// Whether an interrupt handler dealt with its interrupt (`irqreturn_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqReturn {
    /// The interrupt was not from this device.
    None,
    /// The interrupt was handled.
    Handled,
}

/// The handler of a per-CPU interrupt, with the data it needs.
///
/// One value serves every CPU, from hard interrupt context, possibly on
/// several CPUs at once: hence `Sync`.
pub trait PercpuHandler: Send + Sync {
    /// Handles the interrupt on `cpu`, the CPU running it, with interrupts
    /// masked. It must not sleep.
    fn handle(&self, cpu: u32) -> IrqReturn;
}

/// A requested per-CPU interrupt (`request_percpu_irq()`) and its handler.
///
/// The line starts disabled on every CPU; each CPU enables its own with
/// [`PercpuIrq::enable_local`], typically from a CPU hotplug callback.
/// Dropping it disables the line on every CPU, waits for running handlers,
/// frees it, and only then drops the handler.
///
/// # Invariants
///
/// `irq` was requested with `H`'s trampoline and `slots` as its per-CPU
/// device id; `slots` is a live per-CPU allocation in which every possible
/// CPU's slot points to `*handler`. Both are freed on drop, before `handler`.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::{AtomicU64, Ordering};
/// use kernel::c_str;
/// use kernel::irq::{IrqReturn, PercpuHandler, PercpuIrq};
///
/// struct Ticks(AtomicU64);
///
/// impl PercpuHandler for Ticks {
///     fn handle(&self, _cpu: u32) -> IrqReturn {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         IrqReturn::Handled
///     }
/// }
///
/// /// Requests `virq` (from [`kernel::irq::gic_ppi`], say); each CPU then
/// /// calls `enable_local()` from its hotplug callback.
/// fn request(virq: u32) -> Result<PercpuIrq<Ticks>> {
///     PercpuIrq::request(virq, c_str!("ticks"), Ticks(AtomicU64::new(0)))
/// }
///
/// fn ticks(irq: &PercpuIrq<Ticks>) -> u64 {
///     irq.handler().0.load(Ordering::Relaxed)
/// }
/// # let _ = (request, ticks);
/// ```
pub struct PercpuIrq<H: PercpuHandler> {
    irq: u32,
    slots: *mut *const H,
    handler: KBox<H>,
}

// SAFETY: The line may be enabled, disabled and freed from any CPU, and
// `H: Send`, so the handler may be dropped on any.
unsafe impl<H: PercpuHandler> Send for PercpuIrq<H> {}
// SAFETY: `enable_local` and `disable_local` only touch the calling CPU's
// state, which the C side synchronises; `H: Sync`, so the handler may be
// shared.
unsafe impl<H: PercpuHandler> Sync for PercpuIrq<H> {}

/// The handler of a line requested by [`PercpuIrq::request`].
///
/// # Safety
///
/// Called by the interrupt core only, in hard interrupt context on the CPU
/// that took the interrupt, with `dev` that CPU's slot of the line's
/// per-CPU device id (`this_cpu_ptr()`).
unsafe extern "C" fn percpu_trampoline<H: PercpuHandler>(
    _irq: core::ffi::c_int,
    dev: *mut c_void,
) -> bindings::irqreturn_t {
    // SAFETY: `dev` is this CPU's slot, which by the type invariant of the
    // `PercpuIrq` that requested the line points to its handler; the
    // handler is dropped only after the line is freed, and a freed line
    // runs no handler.
    let handler = unsafe { &**dev.cast::<*const H>() };
    // SAFETY: Hard interrupt context: interrupts are masked, so the CPU
    // number is stable.
    let cpu = unsafe { bindings::raw_smp_processor_id() as u32 };
    match handler.handle(cpu) {
        IrqReturn::None => bindings::irqreturn_IRQ_NONE,
        IrqReturn::Handled => bindings::irqreturn_IRQ_HANDLED,
    }
}

impl<H: PercpuHandler> PercpuIrq<H> {
    /// Requests the per-CPU interrupt `irq` (a Linux interrupt number) for
    /// `handler`.
    ///
    /// Process context: it allocates and may sleep.
    pub fn request(irq: u32, name: &'static CStr, handler: H) -> Result<Self> {
        let handler = KBox::new(handler, GFP_KERNEL)?;
        let size = core::mem::size_of::<*const H>();
        let align = core::mem::align_of::<*const H>();
        // SAFETY: A per-CPU allocation (`__alloc_percpu()`) of one pointer.
        let slots =
            unsafe { bindings::pcpu_alloc_noprof(size, align, false, bindings::GFP_KERNEL) };
        let slots = slots.cast::<*const H>();
        if slots.is_null() {
            return Err(ENOMEM);
        }
        let target: *const H = &*handler;
        for cpu in 0..nr_cpu_ids() {
            // SAFETY: Reads the possible mask, which is fixed after boot.
            if unsafe { bindings::cpu_possible(cpu) } {
                // SAFETY: `slots` is a live per-CPU allocation and `cpu` a
                // possible CPU, so this is that CPU's slot, which nothing
                // else uses yet.
                unsafe { *bindings::per_cpu_ptr(slots.cast(), cpu).cast::<*const H>() = target };
            }
        }
        // SAFETY: `name` is static, `slots` is a live per-CPU allocation
        // whose every slot points to the boxed handler, and the trampoline
        // has the signature of `irq_handler_t` and expects exactly that.
        let ret = unsafe {
            bindings::__request_percpu_irq(
                irq,
                Some(percpu_trampoline::<H>),
                0,
                name.as_char_ptr(),
                slots.cast(),
            )
        };
        if let Err(e) = to_result(ret) {
            // SAFETY: `slots` came from `__alloc_percpu()` and is unused.
            unsafe { bindings::free_percpu(slots.cast()) };
            return Err(e);
        }
        // INVARIANT: `irq` is now requested with `slots`, which points to
        // `handler` on every possible CPU.
        Ok(Self {
            irq,
            slots,
            handler,
        })
    }

    /// The handler, which may be running on other CPUs meanwhile.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Enables the interrupt on the calling CPU, with the trigger type the
    /// firmware description gave it.
    ///
    /// The caller must stay on its CPU: call it from a CPU hotplug callback
    /// or with preemption disabled.
    pub fn enable_local(&self) {
        // SAFETY: By the type invariant `irq` is a requested per-CPU line.
        unsafe { bindings::enable_percpu_irq(self.irq, bindings::IRQ_TYPE_NONE) };
    }

    /// Disables the interrupt on the calling CPU.
    ///
    /// The caller must stay on its CPU, as for [`PercpuIrq::enable_local`].
    pub fn disable_local(&self) {
        // SAFETY: By the type invariant `irq` is a requested per-CPU line.
        unsafe { bindings::disable_percpu_irq(self.irq) };
    }
}

impl<H: PercpuHandler> Drop for PercpuIrq<H> {
    /// Process context: it waits for every online CPU.
    fn drop(&mut self) {
        let irq = self.irq;
        crate::cpuhp::with_hotplug_held(|| self.disable_and_free(irq));
    }
}

impl<H: PercpuHandler> PercpuIrq<H> {
    /// The body of `drop`, with CPU hotplug held off.
    fn disable_and_free(&mut self, irq: u32) {
        // `free_percpu_irq()` leaves the handler installed on every CPU that
        // still has the line enabled: disable it everywhere first. The call
        // runs on each online CPU in turn, between two interrupts, so once it
        // returns no handler runs nor can start. An offline CPU runs none,
        // and with the action gone it will not run one when it comes back.
        crate::cpuhp::on_each_online_cpu(|_cpu| {
            // SAFETY: By the type invariant `irq` is a requested per-CPU
            // line; this runs pinned to the CPU it disables it on.
            unsafe { bindings::disable_percpu_irq(irq) }
        });
        // SAFETY: By the type invariant the line was requested with `slots`,
        // and now no CPU can run its handler; `slots` is not used after.
        // The handler itself is dropped after this function returns.
        unsafe {
            bindings::free_percpu_irq(irq, self.slots.cast());
            bindings::free_percpu(self.slots.cast());
        }
    }
}

/// The INTIDs of a GIC's private peripheral interrupts (PPIs), after its
/// 16 software-generated ones, by the GIC architecture. Outside KVM's vGIC
/// (`VGIC_NR_SGIS`, `VGIC_NR_PRIVATE_IRQS`) the C side has no constant for
/// it; the device tree binding numbers PPIs from its start.
pub const GIC_PPIS: core::ops::Range<u32> = 16..32;

/// Maps a GIC PPI, given by its INTID (in [`GIC_PPIS`]), to a Linux interrupt
/// number, level-triggered and active high.
///
/// The GIC is found the way the firmware describes it: through ACPI (the
/// MADT), where a PPI is a GSI of the GIC's interrupt domain, or through the
/// device tree, as the interrupt parent of the root with the three-cell
/// specifier of the GICv2 and GICv3 bindings. Returns `ENODEV` if neither
/// describes the system.
///
/// Process context: it may allocate and sleep.
pub fn gic_ppi(intid: u32) -> Result<u32> {
    if !GIC_PPIS.contains(&intid) {
        return Err(EINVAL);
    }
    #[cfg(CONFIG_ACPI)]
    // SAFETY: `acpi_disabled` is set during early boot and not written after.
    if unsafe { bindings::acpi_disabled } == 0 {
        return acpi_ppi(intid);
    }
    #[cfg(CONFIG_OF)]
    return of_ppi(intid);
    #[cfg(not(CONFIG_OF))]
    Err(ENODEV)
}

#[cfg(CONFIG_ACPI)]
fn acpi_ppi(intid: u32) -> Result<u32> {
    let (level, high) = (bindings::ACPI_LEVEL_SENSITIVE, bindings::ACPI_ACTIVE_HIGH);
    // SAFETY: A NULL device is allowed; `gic_ppi()` checked that the GSI is
    // a PPI, which the GIC's ACPI domain maps per CPU.
    let virq =
        unsafe { bindings::acpi_register_gsi(core::ptr::null_mut(), intid, level as _, high as _) };
    u32::try_from(virq).ok().filter(|v| *v != 0).ok_or(ENXIO)
}

#[cfg(CONFIG_OF)]
fn of_ppi(intid: u32) -> Result<u32> {
    /// `GIC_PPI` of `dt-bindings/interrupt-controller/arm-gic.h`.
    const GIC_PPI: u32 = 1;
    // SAFETY: `of_root` is set up during early boot; `of_irq_find_parent()`
    // accepts NULL and returns a node with a reference taken, or NULL.
    let gic = unsafe { bindings::of_irq_find_parent(bindings::of_root) };
    if gic.is_null() {
        return Err(ENODEV);
    }
    let mut param = [0u32; bindings::IRQ_DOMAIN_IRQ_SPEC_PARAMS as usize];
    param[0] = GIC_PPI;
    param[1] = intid - GIC_PPIS.start;
    param[2] = bindings::IRQ_TYPE_LEVEL_HIGH;
    let mut spec = bindings::irq_fwspec {
        // SAFETY: `gic` is a valid node while we hold the reference.
        fwnode: unsafe { core::ptr::addr_of_mut!((*gic).fwnode) },
        param_count: 3,
        param,
    };
    // SAFETY: `spec` is a valid specifier naming a live node.
    let virq = unsafe { bindings::irq_create_fwspec_mapping(&mut spec) };
    // SAFETY: Drops the reference `of_irq_find_parent()` took; the mapping
    // holds its own.
    unsafe { bindings::of_node_put(gic) };
    if virq == 0 {
        Err(ENXIO)
    } else {
        Ok(virq)
    }
}
