// SPDX-License-Identifier: GPL-2.0

//! Typed results of SMCCC calls handled by KVM.
//!
//! The SMC Calling Convention (Arm DEN0028) returns a status in `x0`, where
//! negative values are errors. KVM services here return a value in `x1` on
//! success.
//!
//! C header: [`include/linux/arm-smccc.h`](srctree/include/linux/arm-smccc.h).

/// An error status an SMCCC call returns in `x0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum SmcccError {
    /// `SMCCC_RET_NOT_SUPPORTED`: unknown or hidden function.
    NotSupported = -1,
    /// `SMCCC_RET_NOT_REQUIRED`.
    NotRequired = -2,
    /// `SMCCC_RET_INVALID_PARAMETER`: an argument was rejected.
    InvalidParameter = -3,
}

/// The outcome of an SMCCC call: the value for `x1`, or an error for `x0`.
pub type SmcccResult = core::result::Result<u64, SmcccError>;

/// Returns the `x0..x3` registers that report `res` to the caller.
///
/// Success puts `SMCCC_RET_SUCCESS` (0) in `x0` and the value in `x1`.
///
/// # Examples
///
/// ```
/// use kernel::kvm::smccc::{to_regs, SmcccError};
///
/// assert_eq!(to_regs(Ok(0x10000)), [0, 0x10000, 0, 0]);
/// assert_eq!(to_regs(Err(SmcccError::InvalidParameter)), [(-3i64) as u64, 0, 0, 0]);
/// assert_eq!(to_regs(Err(SmcccError::NotSupported)), [u64::MAX, 0, 0, 0]);
/// ```
pub fn to_regs(res: SmcccResult) -> [u64; 4] {
    match res {
        Ok(val) => [0, val, 0, 0],
        Err(e) => [e as i64 as u64, 0, 0, 0],
    }
}
