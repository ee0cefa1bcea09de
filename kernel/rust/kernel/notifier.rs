// SPDX-License-Identifier: GPL-2.0

//! Reboot, panic and system sleep notifications.
//!
//! Code that handed memory to a hypervisor or a device must take it back
//! before the machine reboots, powers off, jumps into a new kernel with
//! kexec, or panics, and before a system sleep (suspend to RAM,
//! hibernation, `KEXEC_JUMP`) stops the kernel from owning it, and may hand
//! it out again on resume. [`Notifier`] and [`Syscore`] are where.
//!
//! C headers: [`include/linux/reboot.h`](srctree/include/linux/reboot.h),
//! [`include/linux/panic_notifier.h`](srctree/include/linux/panic_notifier.h),
//! [`include/linux/syscore_ops.h`](srctree/include/linux/syscore_ops.h).

use crate::{bindings, prelude::*, types::Opaque};
use core::{
    ffi::{c_int, c_void},
    marker::PhantomData,
};
use ffi::c_ulong;

/// Whether this kernel is a crash kernel, started by `panic()` through
/// kexec to save the memory of the kernel that crashed.
///
/// A crash kernel starts without the crashed kernel's panic notifiers
/// having run (unless `crash_kexec_post_notifiers` is given), so memory that
/// kernel handed to a hypervisor may still be in the hypervisor's hands.
pub fn is_kdump_kernel() -> bool {
    // SAFETY: Reads a value set during early boot.
    unsafe { bindings::is_kdump_kernel() }
}

/// Which chain a [`Notifier`] is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// Reboot, power-off, halt and kexec, in process context
    /// (`register_reboot_notifier()`).
    Reboot,
    /// Panic, in atomic context on the panicking CPU, after the other CPUs
    /// were stopped (`panic_notifier_list`).
    Panic,
}

/// The callback of a [`Notifier`], with the data it needs.
pub trait NotifierHandler: Send + Sync {
    /// Called when the event of `chain` happens; `action` is the chain's
    /// event code (`SYS_RESTART`, `SYS_POWER_OFF`, ... for [`Chain::Reboot`]).
    /// The context is the chain's: see [`Chain`].
    fn notify(&self, chain: Chain, action: u64);
}

/// A notifier block and the handler its callback reaches by `container_of`.
#[repr(C)]
struct Block<T> {
    nb: Opaque<bindings::notifier_block>,
    handler: T,
}

/// A `struct notifier_block` registered on a [`Chain`], with its handler.
///
/// # Invariants
///
/// `block.nb` is registered on `chain` with `T`'s trampoline until drop,
/// and is pinned in its own allocation next to the handler.
///
/// # Examples
///
/// ```
/// use kernel::notifier::{Chain, Notifier, NotifierHandler};
///
/// struct Goodbye(&'static str);
///
/// impl NotifierHandler for Goodbye {
///     fn notify(&self, chain: Chain, _action: u64) {
///         if chain == Chain::Reboot {
///             pr_info!("{}: going down\n", self.0);
///         }
///     }
/// }
///
/// let n = Notifier::register(Chain::Reboot, Goodbye("example"))?;
/// // Unregistered when dropped.
/// drop(n);
/// # Ok::<(), Error>(())
/// ```
pub struct Notifier<T: NotifierHandler> {
    block: Pin<KBox<Block<T>>>,
    chain: Chain,
}

// SAFETY: The block is only handed to the chain, which locks it, and
// `T: Send`.
unsafe impl<T: NotifierHandler> Send for Notifier<T> {}
// SAFETY: No method gives access to the block; `T: Sync`.
unsafe impl<T: NotifierHandler> Sync for Notifier<T> {}

/// The `notifier_call` of a block on the panic chain (`PANIC`) or the
/// reboot chain.
///
/// # Safety
///
/// Called by the notifier chain only, for a block registered with it by
/// [`Notifier::register`], so `nb` is the `nb` field of a live `Block<T>`.
unsafe extern "C" fn trampoline<T: NotifierHandler, const PANIC: bool>(
    nb: *mut bindings::notifier_block,
    action: c_ulong,
    _data: *mut c_void,
) -> c_int {
    // SAFETY: `nb` is the first field of a `Block<T>` (the function's
    // safety requirement), which stays alive while it is registered.
    let block = unsafe {
        &*crate::container_of!(nb.cast::<Opaque<bindings::notifier_block>>(), Block<T>, nb)
    };
    let chain = if PANIC { Chain::Panic } else { Chain::Reboot };
    block.handler.notify(chain, action as u64);
    bindings::NOTIFY_DONE as c_int
}

impl<T: NotifierHandler> Notifier<T> {
    /// Registers `handler` on `chain`.
    ///
    /// Process context: it may sleep.
    pub fn register(chain: Chain, handler: T) -> Result<Self> {
        let call = match chain {
            Chain::Reboot => trampoline::<T, false>,
            Chain::Panic => trampoline::<T, true>,
        };
        let block = KBox::pin(
            Block {
                nb: Opaque::new(bindings::notifier_block {
                    notifier_call: Some(call),
                    next: core::ptr::null_mut(),
                    priority: 0,
                }),
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `block.nb` is a valid block, pinned until `Drop`
        // unregisters it, and the trampoline finds `block` from it.
        let ret = unsafe {
            match chain {
                Chain::Reboot => bindings::register_reboot_notifier(block.nb.get()),
                Chain::Panic => bindings::atomic_notifier_chain_register(
                    core::ptr::addr_of_mut!(bindings::panic_notifier_list),
                    block.nb.get(),
                ),
            }
        };
        crate::error::to_result(ret)?;
        // INVARIANT: registered above, and pinned in a box.
        Ok(Self { block, chain })
    }
}

impl<T: NotifierHandler> Drop for Notifier<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `nb` is registered on `chain`.
        unsafe {
            match self.chain {
                Chain::Reboot => bindings::unregister_reboot_notifier(self.block.nb.get()),
                Chain::Panic => bindings::atomic_notifier_chain_unregister(
                    core::ptr::addr_of_mut!(bindings::panic_notifier_list),
                    self.block.nb.get(),
                ),
            };
        }
    }
}

/// The callbacks of a [`Syscore`] registration, with the data they need.
///
/// Both run on one CPU (the boot CPU) with interrupts masked, after every
/// other CPU went offline, or before they come back: they must not sleep.
pub trait SyscoreHandler: Send + Sync {
    /// The system is about to sleep, or to jump into another kernel image
    /// and maybe come back (hibernation, `KEXEC_JUMP`). An error aborts the
    /// transition.
    fn suspend(&self) -> Result;
    /// The system resumed, in the same kernel or in the hibernated one.
    fn resume(&self);
}

/// A `struct syscore` registered with `register_syscore()`, with its
/// handler.
///
/// # Invariants
///
/// `syscore` is registered with `T`'s operations until drop, is pinned in
/// its own allocation, and its `data` points to `handler`, in the same one.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::{AtomicU32, Ordering};
/// use kernel::{notifier::{Syscore, SyscoreHandler}, prelude::*};
///
/// struct Quiesce(AtomicU32);
///
/// impl SyscoreHandler for Quiesce {
///     fn suspend(&self) -> Result {
///         // Take back what was handed out; interrupts are masked here.
///         self.0.fetch_add(1, Ordering::Relaxed);
///         Ok(())
///     }
///     fn resume(&self) {}
/// }
///
/// let registration = Syscore::register(Quiesce(AtomicU32::new(0)))?;
/// drop(registration);
/// # Ok::<(), Error>(())
/// ```
pub struct Syscore<T: SyscoreHandler> {
    inner: Pin<KBox<SyscoreInner<T>>>,
}

/// What a [`Syscore`] pins: the registration, and the handler its `data`
/// points to.
struct SyscoreInner<T> {
    syscore: Opaque<bindings::syscore>,
    handler: T,
}

// SAFETY: The registration is only handed to the syscore list, which locks
// it, and `T: Send`.
unsafe impl<T: SyscoreHandler> Send for Syscore<T> {}
// SAFETY: No method gives access to the registration; `T: Sync`.
unsafe impl<T: SyscoreHandler> Sync for Syscore<T> {}

/// The `suspend` of `T`'s operations.
///
/// # Safety
///
/// Called by `syscore_suspend()` only, with interrupts masked, and with
/// the `data` of a registration made by [`Syscore::register`].
unsafe extern "C" fn syscore_suspend<T: SyscoreHandler>(data: *mut c_void) -> c_int {
    // SAFETY: By the type invariant `data` points to the handler, which
    // lives while it is registered.
    let handler = unsafe { &*data.cast::<T>() };
    match handler.suspend() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// The `resume` of `T`'s operations.
///
/// # Safety
///
/// As for [`syscore_suspend`], called by `syscore_resume()`.
unsafe extern "C" fn syscore_resume<T: SyscoreHandler>(data: *mut c_void) {
    // SAFETY: As in `syscore_suspend`.
    let handler = unsafe { &*data.cast::<T>() };
    handler.resume()
}

/// `T`'s operations, one constant per handler type.
struct Ops<T>(PhantomData<T>);

impl<T: SyscoreHandler> Ops<T> {
    const OPS: bindings::syscore_ops = bindings::syscore_ops {
        suspend: Some(syscore_suspend::<T>),
        resume: Some(syscore_resume::<T>),
        shutdown: None,
    };
}

impl<T: SyscoreHandler> Syscore<T> {
    /// Registers `handler`'s callbacks.
    ///
    /// Process context: it takes a mutex.
    pub fn register(handler: T) -> Result<Self> {
        let ops: &'static bindings::syscore_ops = &Ops::<T>::OPS;
        let inner = KBox::pin(
            SyscoreInner {
                syscore: Opaque::new(bindings::syscore {
                    ops: core::ptr::from_ref(ops),
                    ..Default::default()
                }),
                handler,
            },
            GFP_KERNEL,
        )?;
        let data = core::ptr::from_ref(&inner.handler)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: Nothing else sees `syscore` before it is registered below.
        unsafe { (*inner.syscore.get()).data = data };
        // SAFETY: `syscore` is valid and pinned until `Drop` unregisters it;
        // its operations are a constant, and its data the pinned handler.
        unsafe { bindings::register_syscore(inner.syscore.get()) };
        // INVARIANT: registered above, pinned in a box, `data` set.
        Ok(Self { inner })
    }
}

impl<T: SyscoreHandler> Drop for Syscore<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `syscore` is registered.
        unsafe { bindings::unregister_syscore(self.inner.syscore.get()) };
    }
}
