// SPDX-License-Identifier: GPL-2.0

//! A kernel raw spinlock, taken with local interrupts masked.
//!
//! Unlike [`SpinLock`](super::spinlock::SpinLock), whose `spinlock_t`
//! becomes a sleeping lock under `CONFIG_PREEMPT_RT`, a `raw_spinlock_t`
//! always spins, so it is the lock to share data with a hard interrupt
//! handler. Holding it masks interrupts on the local CPU, so it may be taken
//! from any context, and the critical section must be short and must not
//! sleep or allocate.
//!
//! C header: [`include/linux/spinlock.h`](srctree/include/linux/spinlock.h).

/// Creates a [`RawSpinLockIrq`] initialiser with the given name and a newly
/// created lock class.
///
/// It uses the name if one is given, otherwise it generates one based on
/// the file name and line number.
#[macro_export]
macro_rules! new_raw_spinlock_irq {
    ($inner:expr $(, $name:literal)? $(,)?) => {
        $crate::sync::RawSpinLockIrq::new(
            $inner, $crate::optional_name!($($name)?), $crate::static_lock_class!())
    };
}
pub use new_raw_spinlock_irq;

/// A raw spinlock that masks local interrupts while it is held
/// (`raw_spin_lock_irqsave()`).
///
/// It may be taken in any context, including hard interrupt handlers and
/// under `CONFIG_PREEMPT_RT`, where it still spins. The guard restores the
/// interrupt state the lock found, so guards must be dropped in the reverse
/// order of their creation, which Rust's scoping gives.
///
/// # Examples
///
/// ```
/// use kernel::{new_raw_spinlock_irq, sync::RawSpinLockIrq};
///
/// // Shared with an interrupt handler: the handler takes it too.
/// let pending = KBox::pin_init(new_raw_spinlock_irq!(0u32), GFP_KERNEL)?;
/// *pending.lock() += 1;
/// assert_eq!(*pending.lock(), 1);
/// # Ok::<(), Error>(())
/// ```
pub type RawSpinLockIrq<T> = super::Lock<T, RawSpinLockIrqBackend>;

/// A kernel `raw_spinlock_t` lock backend, locked with interrupts masked.
pub struct RawSpinLockIrqBackend;

// SAFETY: The underlying kernel `raw_spinlock_t` object ensures mutual
// exclusion. `relock` uses the default implementation, which locks the same
// way again and keeps the newly saved interrupt state.
unsafe impl super::Backend for RawSpinLockIrqBackend {
    type State = bindings::raw_spinlock_t;
    /// The interrupt state `raw_spin_lock_irqsave()` saved.
    type GuardState = usize;

    unsafe fn init(
        ptr: *mut Self::State,
        name: *const crate::ffi::c_char,
        key: *mut bindings::lock_class_key,
    ) {
        // SAFETY: The safety requirements ensure that `ptr` is valid for
        // writes, and `name` and `key` are valid for read indefinitely.
        unsafe { bindings::raw_spin_lock_init_class(ptr, name, key) }
    }

    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: The safety requirements of this function ensure that `ptr`
        // points to valid memory, and that it has been initialised before.
        unsafe { bindings::raw_spin_lock_irqsave(ptr) }
    }

    unsafe fn unlock(ptr: *mut Self::State, flags: &Self::GuardState) {
        // SAFETY: The safety requirements of this function ensure that `ptr`
        // is valid and that the caller owns the lock; `flags` is what
        // `lock` saved on this CPU, since a guard is not `Send`.
        unsafe { bindings::raw_spin_unlock_irqrestore(ptr, *flags) }
    }
}
