// SPDX-License-Identifier: GPL-2.0

//! Completions: wait until another context says an event has happened.
//!
//! A completion remembers that it was completed, so a task that starts to
//! wait after [`Completion::complete`] returns at once: no wake-up is lost
//! however the waiter and the waker race. [`Completion::complete`] may be
//! called from any context, including hard interrupts.
//!
//! C header: [`include/linux/completion.h`](srctree/include/linux/completion.h).

use crate::{bindings, error::to_result, prelude::*, types::Opaque};

/// A `struct completion`.
///
/// # Invariants
///
/// `inner` is initialised by `init_completion()` and is never moved.
///
/// # Examples
///
/// ```
/// use kernel::sync::{Arc, Completion};
///
/// let done = Arc::pin_init(Completion::new(), GFP_KERNEL)?;
/// // Completing first and waiting later does not lose the event.
/// done.complete();
/// assert!(done.wait_interruptible().is_ok());
/// # Ok::<(), Error>(())
/// ```
#[pin_data]
pub struct Completion {
    #[pin]
    inner: Opaque<bindings::completion>,
}

// SAFETY: `struct completion` is designed to be completed and waited on from
// any thread; it synchronises internally.
unsafe impl Send for Completion {}
// SAFETY: As above: every method takes `&self` and the C side locks.
unsafe impl Sync for Completion {}

impl Completion {
    /// Returns an initialiser for a completion that has not completed yet.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes, and `init_completion()`
            // initialises every field.
            // INVARIANT: `inner` is initialised here and pinned.
            inner <- Opaque::ffi_init(|slot| unsafe { bindings::init_completion(slot) }),
        })
    }

    /// Marks the event as happened and wakes one waiter.
    ///
    /// Callable from any context, including hard interrupt handlers.
    pub fn complete(&self) {
        // SAFETY: By the type invariant `inner` is an initialised completion.
        unsafe { bindings::complete(self.inner.get()) };
    }

    /// Waits until [`Self::complete`] is called, or a fatal signal is
    /// pending.
    ///
    /// Other signals do not end the wait; they are handled after it. Returns
    /// `Err(ERESTARTSYS)` if the task is being killed, in which case the
    /// completion was not consumed.
    pub fn wait_killable(&self) -> Result {
        // SAFETY: By the type invariant `inner` is an initialised completion.
        let ret = unsafe { bindings::wait_for_completion_killable(self.inner.get()) };
        to_result(ret)
    }

    /// Consumes a completion that has happened, without waiting.
    ///
    /// Returns `true` if there was one to consume, as a wait would have
    /// returned at once; `false` if a wait would sleep.
    pub fn try_wait(&self) -> bool {
        // SAFETY: By the type invariant `inner` is an initialised completion.
        unsafe { bindings::try_wait_for_completion(self.inner.get()) }
    }

    /// Waits until [`Self::complete`] is called, or a signal is pending.
    ///
    /// Returns `Err(ERESTARTSYS)` if the wait ended because of a signal, in
    /// which case the completion was not consumed.
    pub fn wait_interruptible(&self) -> Result {
        // SAFETY: By the type invariant `inner` is an initialised completion.
        let ret = unsafe { bindings::wait_for_completion_interruptible(self.inner.get()) };
        to_result(ret)
    }
}
