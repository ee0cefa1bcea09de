// SPDX-License-Identifier: GPL-2.0

//! Calls to the hypervisor through the SMC Calling Convention (Arm DEN0028).
//!
//! For guests: find out which KVM vendor hypervisor services the host
//! offers, and call them with HVC.
//!
//! C header: [`include/linux/arm-smccc.h`](srctree/include/linux/arm-smccc.h).

use crate::bindings;

/// Returns whether the KVM vendor hypervisor service `func` (a KVM function
/// number, such as `ARM_SMCCC_KVM_FUNC_PTP`) is offered to this guest.
///
/// This is false on bare metal, under another hypervisor, and when the VMM
/// hid the service.
///
/// # Examples
///
/// ```
/// use kernel::{arm_smccc, bindings};
///
/// if arm_smccc::kvm_service_available(bindings::ARM_SMCCC_KVM_FUNC_PTP) {
///     pr_info!("KVM offers its PTP clock\n");
/// }
/// ```
pub fn kvm_service_available(func: u32) -> bool {
    // SAFETY: Only reads the bitmap discovered at boot.
    unsafe { bindings::kvm_arm_hyp_service_available(func) }
}

/// Makes an SMCCC v1.1 fast call with HVC and returns `x0..x3`.
///
/// `args` go in `x0` (the function ID) to `x3`; the remaining argument
/// registers are zero.
///
/// # Safety
///
/// The call must be one the hypervisor documents, and the caller must uphold
/// what it requires: in particular, memory whose address it passes must stay
/// valid for as long as the hypervisor may access it.
pub unsafe fn hvc(args: [u64; 4]) -> [u64; 4] {
    let mut res = bindings::arm_smccc_res::default();
    // SAFETY: `res` is valid for writes; the caller vouches for the call.
    unsafe {
        bindings::__arm_smccc_hvc(
            args[0] as _,
            args[1] as _,
            args[2] as _,
            args[3] as _,
            0,
            0,
            0,
            0,
            &mut res,
            core::ptr::null_mut(),
        )
    };
    [res.a0 as u64, res.a1 as u64, res.a2 as u64, res.a3 as u64]
}
