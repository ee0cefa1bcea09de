// SPDX-License-Identifier: GPL-2.0

//! CPU hotplug states.
//!
//! A subsystem that keeps per-CPU state registers a dynamic state: its
//! online callback runs on each CPU as it comes up (and at registration, on
//! every CPU already online), its offline callback on each CPU as it goes
//! down. Both run on the CPU concerned, in a per-CPU thread that may sleep.
//!
//! C header: [`include/linux/cpuhotplug.h`](srctree/include/linux/cpuhotplug.h).

use crate::{bindings, error::from_result, prelude::*, str::CStr, types::Opaque};
use core::{ffi::c_int, ffi::c_uint};

/// Callbacks of a CPU hotplug state, with the data they need.
///
/// Both run in the hotplug thread of the CPU concerned, which may sleep;
/// the hotplug core runs one at a time.
pub trait CpuHotplug: Send + Sync {
    /// Brings up this subsystem on `cpu`, the calling CPU.
    fn online(&self, cpu: u32) -> Result;

    /// Takes this subsystem down on `cpu`, the calling CPU.
    fn offline(&self, cpu: u32) -> Result;
}

/// The hotplug core's link to an instance, and the callbacks it reaches by
/// `container_of`.
struct Instance<T> {
    node: Opaque<bindings::hlist_node>,
    handler: T,
}

/// A registered dynamic multi-instance state in the `CPUHP_AP_ONLINE_DYN`
/// range, with its one instance, the handler.
///
/// Dropping it runs the offline callback on every online CPU and removes
/// the state.
///
/// # Invariants
///
/// `state` is the number `cpuhp_setup_state_multi()` returned for `T`'s
/// callbacks, and `instance.node` is added to it, pinned, until drop.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::{AtomicU32, Ordering};
/// use kernel::{c_str, cpuhp::{CpuHotplug, Registration}};
///
/// struct Online(AtomicU32);
///
/// impl CpuHotplug for Online {
///     fn online(&self, _cpu: u32) -> Result {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         Ok(())
///     }
///     fn offline(&self, _cpu: u32) -> Result {
///         self.0.fetch_sub(1, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// let reg = Registration::new(c_str!("rust/doctest:online"), Online(AtomicU32::new(0)))?;
/// // `online` ran on every CPU already online.
/// assert!(reg.handler().0.load(Ordering::Relaxed) >= 1);
/// drop(reg);
/// # Ok::<(), Error>(())
/// ```
pub struct Registration<T: CpuHotplug> {
    state: c_int,
    instance: Pin<KBox<Instance<T>>>,
}

// SAFETY: The state may be removed from any thread, and `T: Send`.
unsafe impl<T: CpuHotplug> Send for Registration<T> {}
// SAFETY: Only `handler()` gives access, to a `T: Sync`.
unsafe impl<T: CpuHotplug> Sync for Registration<T> {}

/// The handler of the instance `node` belongs to.
///
/// # Safety
///
/// `node` must be the `node` of a live `Instance<T>`.
unsafe fn handler<'a, T>(node: *mut bindings::hlist_node) -> &'a T {
    let node = node.cast::<Opaque<bindings::hlist_node>>();
    // SAFETY: By the safety requirements `node` is in a live `Instance<T>`.
    unsafe { &(*crate::container_of!(node, Instance<T>, node)).handler }
}

/// The startup callback of `T`'s state.
///
/// # Safety
///
/// Called by the CPU hotplug core only, on `cpu`, in its hotplug thread,
/// for an instance added by [`Registration::new`].
unsafe extern "C" fn online_trampoline<T: CpuHotplug>(
    cpu: c_uint,
    node: *mut bindings::hlist_node,
) -> c_int {
    // SAFETY: The instance stays added, and so alive, during the call.
    let handler = unsafe { handler::<T>(node) };
    from_result(|| handler.online(cpu).map(|()| 0))
}

/// The teardown callback of `T`'s state.
///
/// # Safety
///
/// As for [`online_trampoline`].
unsafe extern "C" fn offline_trampoline<T: CpuHotplug>(
    cpu: c_uint,
    node: *mut bindings::hlist_node,
) -> c_int {
    // SAFETY: The instance is removed only after its teardown returned.
    let handler = unsafe { handler::<T>(node) };
    from_result(|| handler.offline(cpu).map(|()| 0))
}

impl<T: CpuHotplug> Registration<T> {
    /// Registers a state for `handler` and runs [`CpuHotplug::online`] on
    /// every online CPU. If that fails on one, the state is rolled back and
    /// the error returned.
    ///
    /// Process context: it takes the CPU hotplug lock and may sleep; not
    /// from a hotplug callback.
    pub fn new(name: &'static CStr, handler: T) -> Result<Self> {
        let instance = KBox::pin(
            Instance {
                node: Opaque::uninit(),
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `name` is static and the trampolines have the C signature
        // of multi-instance callbacks.
        let state = unsafe {
            bindings::cpuhp_setup_state_multi(
                bindings::cpuhp_state_CPUHP_AP_ONLINE_DYN,
                name.as_char_ptr(),
                Some(online_trampoline::<T>),
                Some(offline_trampoline::<T>),
            )
        };
        if state < 0 {
            return Err(Error::from_errno(state));
        }
        // SAFETY: `state` is the multi-instance state set up above, and the
        // node is pinned until `Drop` removes it; the hotplug core
        // initialises it.
        let ret = unsafe { bindings::cpuhp_state_add_instance(state, instance.node.get()) };
        if ret < 0 {
            // SAFETY: `state` has no instance: removing it runs nothing.
            unsafe { bindings::cpuhp_remove_multi_state(state) };
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: a dynamic state returns its number, which is positive;
        // the instance is added.
        Ok(Self { state, instance })
    }

    /// The callbacks' data.
    pub fn handler(&self) -> &T {
        &self.instance.handler
    }
}

impl<T: CpuHotplug> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the instance is added to `state`,
        // which is ours; removing it runs the offline callback on every
        // online CPU first, and then the state has no instance left.
        unsafe {
            bindings::cpuhp_state_remove_instance(self.state, self.instance.node.get());
            bindings::cpuhp_remove_multi_state(self.state);
        }
    }
}

/// Runs `f` with CPU hotplug held off (`cpus_read_lock()`): no CPU comes
/// online or goes offline meanwhile. Without `CONFIG_HOTPLUG_CPU` CPUs
/// never do, and it just runs `f`.
///
/// Process context: it may sleep, and not from a hotplug callback.
///
/// # Examples
///
/// ```
/// use kernel::cpuhp::{on_each_online_cpu, with_hotplug_held};
///
/// with_hotplug_held(|| on_each_online_cpu(|_cpu| {}));
/// ```
pub fn with_hotplug_held<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: Process context, as documented; unlocked below.
    #[cfg(CONFIG_HOTPLUG_CPU)]
    unsafe {
        bindings::cpus_read_lock()
    };
    let r = f();
    // SAFETY: Locked above, by this thread.
    #[cfg(CONFIG_HOTPLUG_CPU)]
    unsafe {
        bindings::cpus_read_unlock()
    };
    r
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
