// SPDX-License-Identifier: GPL-2.0

//! CPU hotplug states.
//!
//! A subsystem that keeps per-CPU state registers a dynamic state: its
//! online callback runs on each CPU as it comes up (and at registration, on
//! every CPU already online), its offline callback on each CPU as it goes
//! down. Both run on the CPU concerned, in a per-CPU thread that may sleep.
//!
//! C header: [`include/linux/cpuhotplug.h`](srctree/include/linux/cpuhotplug.h).

use crate::{bindings, error::from_result, prelude::*, str::CStr};
use core::{ffi::c_int, ffi::c_uint, marker::PhantomData};

/// Callbacks of a CPU hotplug state.
pub trait CpuHotplug {
    /// Brings up this subsystem on `cpu`, the calling CPU.
    fn online(cpu: u32) -> Result;

    /// Takes this subsystem down on `cpu`, the calling CPU.
    fn offline(cpu: u32) -> Result;
}

/// A registered dynamic state in the `CPUHP_AP_ONLINE_DYN` range.
///
/// Dropping it runs the offline callback on every online CPU and removes
/// the state.
///
/// # Invariants
///
/// `state` is the number `cpuhp_setup_state()` returned for `T`'s callbacks.
pub struct Registration<T: CpuHotplug> {
    state: c_int,
    _callbacks: PhantomData<T>,
}

/// The startup callback of `T`'s state.
///
/// # Safety
///
/// Called by the CPU hotplug core only, on `cpu`, in its hotplug thread.
unsafe extern "C" fn online_trampoline<T: CpuHotplug>(cpu: c_uint) -> c_int {
    from_result(|| T::online(cpu).map(|()| 0))
}

/// The teardown callback of `T`'s state.
///
/// # Safety
///
/// Called by the CPU hotplug core only, on `cpu`, in its hotplug thread.
unsafe extern "C" fn offline_trampoline<T: CpuHotplug>(cpu: c_uint) -> c_int {
    from_result(|| T::offline(cpu).map(|()| 0))
}

impl<T: CpuHotplug> Registration<T> {
    /// Registers the state and runs [`CpuHotplug::online`] on every online
    /// CPU. If that fails on one, the state is rolled back and the error
    /// returned.
    ///
    /// Process context: it takes the CPU hotplug lock and may sleep; not
    /// from a hotplug callback.
    pub fn new(name: &'static CStr) -> Result<Self> {
        // SAFETY: `name` is static and the trampolines have the C signature.
        let ret = unsafe {
            bindings::__cpuhp_setup_state(
                bindings::cpuhp_state_CPUHP_AP_ONLINE_DYN,
                name.as_char_ptr(),
                true,
                Some(online_trampoline::<T>),
                Some(offline_trampoline::<T>),
                false,
            )
        };
        if ret < 0 {
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: a dynamic state returns its number, which is positive.
        Ok(Self {
            state: ret,
            _callbacks: PhantomData,
        })
    }
}

impl<T: CpuHotplug> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `state` is ours and still set up.
        unsafe { bindings::__cpuhp_remove_state(self.state, true) };
    }
}

/// Runs the `F` that `info` points to on the calling CPU.
///
/// # Safety
///
/// `info` must point to an `F` that lives until the call returns; called
/// with interrupts masked, as `on_each_cpu_cond_mask()` does.
unsafe extern "C" fn each_cpu_trampoline<F: Fn(u32) + Sync>(info: *mut core::ffi::c_void) {
    // SAFETY: By the safety requirements `info` points to a live `F`.
    let func = unsafe { &*info.cast::<F>() };
    // SAFETY: Interrupts are masked, so the CPU number is stable.
    func(unsafe { bindings::raw_smp_processor_id() } as u32);
}

/// Runs `func` on every online CPU, with interrupts masked, and waits until
/// all have run it. `func` gets the number of the CPU it runs on.
///
/// Must be called from process context with interrupts enabled. `func` runs
/// on several CPUs at once, hence `Sync`.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::{AtomicU32, Ordering};
/// use kernel::cpuhp::on_each_online_cpu;
///
/// let ran = AtomicU32::new(0);
/// on_each_online_cpu(|_cpu| {
///     ran.fetch_add(1, Ordering::Relaxed);
/// });
/// assert!(ran.load(Ordering::Relaxed) >= 1);
/// ```
pub fn on_each_online_cpu<F: Fn(u32) + Sync>(func: F) {
    // SAFETY: The trampoline gets a pointer to `func`, which lives until
    // this call returns, since `wait` is true; `cpu_online_mask` is a valid
    // mask.
    unsafe {
        bindings::on_each_cpu_cond_mask(
            None,
            Some(each_cpu_trampoline::<F>),
            core::ptr::from_ref(&func).cast_mut().cast(),
            true,
            core::ptr::addr_of!(bindings::__cpu_online_mask),
        )
    };
}
