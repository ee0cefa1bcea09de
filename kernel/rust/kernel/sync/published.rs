// SPDX-License-Identifier: GPL-2.0

//! A value published once and then read, without locks, for the life of the
//! kernel.

use crate::alloc::KBox;
use core::{
    ptr,
    sync::atomic::{AtomicPtr, Ordering},
};

/// A value that one thread builds and publishes once, after which any
/// context, including hard interrupt handlers and the entry code, reads it
/// through a `&'static` reference. It is never freed, so it suits built-in
/// code only.
///
/// Readers get the value only once it is complete: publishing is a release
/// store, reading an acquire load.
///
/// # Invariants
///
/// `ptr` is NULL, or comes from [`KBox::into_raw`] and is never freed nor
/// written again.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::{AtomicU64, Ordering};
/// use kernel::sync::Published;
///
/// struct Stats {
///     events: AtomicU64,
/// }
///
/// static STATS: Published<Stats> = Published::new();
///
/// assert!(STATS.get().is_none());
/// let stats = STATS.publish(KBox::new(Stats { events: AtomicU64::new(0) }, GFP_KERNEL)?);
/// stats.map_err(|_| EBUSY)?.events.fetch_add(1, Ordering::Relaxed);
/// // From anywhere, later:
/// if let Some(s) = STATS.get() {
///     assert_eq!(s.events.load(Ordering::Relaxed), 1);
/// }
/// // A second value is handed back.
/// assert!(STATS.publish(KBox::new(Stats { events: AtomicU64::new(0) }, GFP_KERNEL)?).is_err());
/// # Ok::<(), Error>(())
/// ```
pub struct Published<T> {
    ptr: AtomicPtr<T>,
}

// SAFETY: Readers on any CPU share `&T`, which needs `T: Sync`; the value
// is built on one thread and dropped on none, and `publish` moves it in from
// whichever thread calls it, which needs `T: Send`.
unsafe impl<T: Send + Sync> Sync for Published<T> {}

impl<T> Published<T> {
    /// Nothing published yet.
    pub const fn new() -> Self {
        // INVARIANT: NULL.
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Publishes `value` for the life of the kernel and returns it, or
    /// hands it back if a value was published before.
    pub fn publish(&self, value: KBox<T>) -> Result<&'static T, KBox<T>> {
        let raw = KBox::into_raw(value);
        match self
            .ptr
            .compare_exchange(ptr::null_mut(), raw, Ordering::Release, Ordering::Relaxed)
        {
            // INVARIANT: `raw` comes from `KBox::into_raw` and is leaked.
            // SAFETY: `raw` is valid and, leaked, lives for ever; it is
            // only ever shared.
            Ok(_) => Ok(unsafe { &*raw }),
            // SAFETY: `raw` came from `KBox::into_raw` above and was not
            // published.
            Err(_) => Err(unsafe { KBox::from_raw(raw) }),
        }
    }

    /// The published value, if any.
    pub fn get(&self) -> Option<&'static T> {
        // SAFETY: By the type invariant the pointer is NULL or a leaked,
        // complete `T` (the acquire pairs with the release in `publish`)
        // that nobody writes through again.
        unsafe { self.ptr.load(Ordering::Acquire).as_ref() }
    }
}

impl<T> Default for Published<T> {
    fn default() -> Self {
        Self::new()
    }
}
