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

unsafe extern "C" fn online_trampoline<T: CpuHotplug>(cpu: c_uint) -> c_int {
    from_result(|| T::online(cpu).map(|()| 0))
}

unsafe extern "C" fn offline_trampoline<T: CpuHotplug>(cpu: c_uint) -> c_int {
    from_result(|| T::offline(cpu).map(|()| 0))
}

impl<T: CpuHotplug> Registration<T> {
    /// Registers the state and runs [`CpuHotplug::online`] on every online
    /// CPU. If that fails on one, the state is rolled back and the error
    /// returned.
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

unsafe extern "C" fn each_cpu_trampoline(info: *mut core::ffi::c_void) {
    // SAFETY: `on_each_online_cpu` passes a `fn(u32)` as `info`.
    let func: fn(u32) = unsafe { core::mem::transmute(info) };
    // SAFETY: Called with interrupts masked, so the CPU number is stable.
    func(unsafe { bindings::raw_smp_processor_id() } as u32);
}

/// Runs `func` on every online CPU, with interrupts masked, and waits until
/// all have run it. `func` gets the number of the CPU it runs on.
///
/// Must be called from process context with interrupts enabled.
pub fn on_each_online_cpu(func: fn(u32)) {
    // SAFETY: The trampoline turns `info` back into `func`; the call waits,
    // and `cpu_online_mask` is a valid mask.
    unsafe {
        bindings::on_each_cpu_cond_mask(
            None,
            Some(each_cpu_trampoline),
            func as *mut core::ffi::c_void,
            true,
            core::ptr::addr_of!(bindings::__cpu_online_mask),
        )
    };
}
