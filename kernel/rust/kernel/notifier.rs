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

/// The callback of a [`Notifier`].
pub trait NotifierHandler {
    /// Called when the event of `chain` happens; `action` is the chain's
    /// event code (`SYS_RESTART`, `SYS_POWER_OFF`, ... for [`Chain::Reboot`]).
    fn notify(chain: Chain, action: u64);
}

/// A `struct notifier_block` registered on a [`Chain`].
///
/// # Invariants
///
/// `nb` is registered on `chain` with `T`'s trampoline until drop, and is
/// pinned in its own allocation.
pub struct Notifier<T: NotifierHandler> {
    nb: Pin<KBox<Opaque<bindings::notifier_block>>>,
    chain: Chain,
    _handler: PhantomData<T>,
}

// SAFETY: The block is only handed to the chain, which locks it.
unsafe impl<T: NotifierHandler> Send for Notifier<T> {}
// SAFETY: No method gives access to the block.
unsafe impl<T: NotifierHandler> Sync for Notifier<T> {}

/// The `notifier_call` of a block on the panic chain (`PANIC`) or the
/// reboot chain.
///
/// # Safety
///
/// Called by the notifier chain only, for a block registered with it.
unsafe extern "C" fn trampoline<T: NotifierHandler, const PANIC: bool>(
    _nb: *mut bindings::notifier_block,
    action: c_ulong,
    _data: *mut c_void,
) -> c_int {
    let chain = if PANIC { Chain::Panic } else { Chain::Reboot };
    T::notify(chain, action as u64);
    bindings::NOTIFY_DONE as c_int
}

impl<T: NotifierHandler> Notifier<T> {
    /// Registers `T` on `chain`.
    ///
    /// Process context: it may sleep.
    pub fn register(chain: Chain) -> Result<Self> {
        let call = match chain {
            Chain::Reboot => trampoline::<T, false>,
            Chain::Panic => trampoline::<T, true>,
        };
        let nb = KBox::pin(
            Opaque::new(bindings::notifier_block {
                notifier_call: Some(call),
                next: core::ptr::null_mut(),
                priority: 0,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `nb` is a valid block, pinned until `Drop` unregisters it.
        let ret = unsafe {
            match chain {
                Chain::Reboot => bindings::register_reboot_notifier(nb.get()),
                Chain::Panic => bindings::atomic_notifier_chain_register(
                    core::ptr::addr_of_mut!(bindings::panic_notifier_list),
                    nb.get(),
                ),
            }
        };
        crate::error::to_result(ret)?;
        // INVARIANT: registered above, and pinned in a box.
        Ok(Self {
            nb,
            chain,
            _handler: PhantomData,
        })
    }
}

impl<T: NotifierHandler> Drop for Notifier<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `nb` is registered on `chain`.
        unsafe {
            match self.chain {
                Chain::Reboot => bindings::unregister_reboot_notifier(self.nb.get()),
                Chain::Panic => bindings::atomic_notifier_chain_unregister(
                    core::ptr::addr_of_mut!(bindings::panic_notifier_list),
                    self.nb.get(),
                ),
            };
        }
    }
}

/// The callbacks of a [`Syscore`] registration.
///
/// Both run on one CPU (the boot CPU) with interrupts masked, after every
/// other CPU went offline, or before they come back: they must not sleep.
pub trait SyscoreHandler {
    /// The system is about to sleep, or to jump into another kernel image
    /// and maybe come back (hibernation, `KEXEC_JUMP`). An error aborts the
    /// transition.
    fn suspend() -> Result;
    /// The system resumed, in the same kernel or in the hibernated one.
    fn resume();
}

/// A `struct syscore` registered with `register_syscore()`.
///
/// # Invariants
///
/// `syscore` is registered with `T`'s operations until drop, and is pinned
/// in its own allocation.
///
/// # Examples
///
/// ```
/// use kernel::{notifier::{Syscore, SyscoreHandler}, prelude::*};
///
/// struct Quiesce;
///
/// impl SyscoreHandler for Quiesce {
///     fn suspend() -> Result {
///         // Take back what was handed out; interrupts are masked here.
///         Ok(())
///     }
///     fn resume() {}
/// }
///
/// let registration = Syscore::<Quiesce>::register()?;
/// drop(registration);
/// # Ok::<(), Error>(())
/// ```
pub struct Syscore<T: SyscoreHandler> {
    syscore: Pin<KBox<Opaque<bindings::syscore>>>,
    _handler: PhantomData<T>,
}

// SAFETY: The registration is only handed to the syscore list, which locks
// it.
unsafe impl<T: SyscoreHandler> Send for Syscore<T> {}
// SAFETY: No method gives access to the registration.
unsafe impl<T: SyscoreHandler> Sync for Syscore<T> {}

/// The `suspend` of `T`'s operations.
///
/// # Safety
///
/// Called by `syscore_suspend()` only, with interrupts masked.
unsafe extern "C" fn syscore_suspend<T: SyscoreHandler>(_data: *mut c_void) -> c_int {
    match T::suspend() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// The `resume` of `T`'s operations.
///
/// # Safety
///
/// Called by `syscore_resume()` only, with interrupts masked.
unsafe extern "C" fn syscore_resume<T: SyscoreHandler>(_data: *mut c_void) {
    T::resume()
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
    /// Registers `T`'s callbacks.
    ///
    /// Process context: it takes a mutex.
    pub fn register() -> Result<Self> {
        let ops: &'static bindings::syscore_ops = &Ops::<T>::OPS;
        let syscore = KBox::pin(
            Opaque::new(bindings::syscore {
                ops: core::ptr::from_ref(ops),
                ..Default::default()
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `syscore` is valid and pinned until `Drop` unregisters it;
        // its operations are a constant.
        unsafe { bindings::register_syscore(syscore.get()) };
        // INVARIANT: registered above, and pinned in a box.
        Ok(Self {
            syscore,
            _handler: PhantomData,
        })
    }
}

impl<T: SyscoreHandler> Drop for Syscore<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `syscore` is registered.
        unsafe { bindings::unregister_syscore(self.syscore.get()) };
    }
}
