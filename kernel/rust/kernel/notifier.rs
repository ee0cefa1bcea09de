// SPDX-License-Identifier: GPL-2.0

//! Reboot and panic notifiers.
//!
//! Code that handed memory to a hypervisor or a device must take it back
//! before the machine reboots, powers off, jumps into a new kernel with
//! kexec, or panics into a crash kernel. These notifiers are where.
//!
//! C headers: [`include/linux/reboot.h`](srctree/include/linux/reboot.h),
//! [`include/linux/panic_notifier.h`](srctree/include/linux/panic_notifier.h).

use crate::{bindings, prelude::*, types::Opaque};
use core::{
    ffi::{c_int, c_void},
    marker::PhantomData,
};
use ffi::c_ulong;

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
