// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VMM side of KVM/arm64 asynchronous page faults
//! (Documentation/virt/kvm/arm/apf.rst, "VMM interface").
//!
//! * opting in: KVM hides APF until the VMM sets bit 32 of
//!   `KVM_REG_ARM_VENDOR_HYP_BMAP_2` before the first KVM_RUN, so that a VMM
//!   that cannot migrate the APF state never exposes it;
//! * hiding: clear that bit; the guest then sees no APF service at all;
//! * the PAGE_READY PPI: vCPU attribute `KVM_ARM_VCPU_ASYNC_PF_IRQ` in group
//!   `KVM_ARM_VCPU_ASYNC_PF_CTRL`.

/// vCPU device attribute group `KVM_ARM_VCPU_ASYNC_PF_CTRL`.
pub const KVM_ARM_VCPU_ASYNC_PF_CTRL: u32 = 3;
/// Attribute `KVM_ARM_VCPU_ASYNC_PF_IRQ` (u32 PPI INTID, 16..31).
pub const KVM_ARM_VCPU_ASYNC_PF_IRQ: u64 = 0;
/// Attribute `KVM_ARM_VCPU_ASYNC_PF_BLOCK` (u64: block IPA | flags).
pub const KVM_ARM_VCPU_ASYNC_PF_BLOCK: u64 = 1;
/// `KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF`: bit of the APF function (96 = 64 + 32).
pub const KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF: u32 = 32;
/// `KVM_ASYNC_PF_DEFAULT_IRQ`.
pub const KVM_ASYNC_PF_DEFAULT_IRQ: u32 = 18;

/// Whether a `KVM_REG_ARM_VENDOR_HYP_BMAP_2` value offers APF.
pub fn offered(bmap2: u64) -> bool {
    bmap2 & (1 << KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF) != 0
}

/// The `KVM_REG_ARM_VENDOR_HYP_BMAP_2` value that offers APF and keeps
/// every other function as it was.
pub fn with_apf(bmap2: u64) -> u64 {
    bmap2 | (1 << KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF)
}

/// The `KVM_REG_ARM_VENDOR_HYP_BMAP_2` value that hides APF and keeps
/// every other function as it was.
pub fn hidden(bmap2: u64) -> u64 {
    bmap2 & !(1 << KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF)
}

#[cfg(target_arch = "aarch64")]
pub use kvm::*;

#[cfg(target_arch = "aarch64")]
mod kvm {
    use super::*;
    use crate::regs::KVM_REG_ARM_VENDOR_HYP_BMAP_2;
    use crate::snapshot::ApfAttrs;
    use kvm_bindings::kvm_device_attr;
    use kvm_ioctls::VcpuFd;
    use std::os::fd::AsRawFd;
    use thiserror::Error;
    use vmm_sys_util::ioctl::ioctl_with_mut_ref;

    /// `KVMIO`.
    const KVMIO: u32 = 0xae;
    // kvm-ioctls has KVM_GET_DEVICE_ATTR for device fds only.
    vmm_sys_util::ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);

    /// Errors configuring APF.
    #[derive(Debug, Error)]
    pub enum ApfError {
        /// Reading the firmware bitmap register failed.
        #[error("reading KVM_REG_ARM_VENDOR_HYP_BMAP_2: {0}")]
        GetBmap(kvm_ioctls::Error),
        /// Writing it failed (-EBUSY after a vCPU ran).
        #[error("writing KVM_REG_ARM_VENDOR_HYP_BMAP_2: {0}")]
        SetBmap(kvm_ioctls::Error),
        /// The write did not stick.
        #[error("KVM_REG_ARM_VENDOR_HYP_BMAP_2 still offers APF after clearing bit 32 ({0:#x})")]
        StillOffered(u64),
        /// The host refused to offer APF (it does not implement it).
        #[error("the host refused to offer APF in KVM_REG_ARM_VENDOR_HYP_BMAP_2: {0}")]
        Refused(kvm_ioctls::Error),
        /// Reading an attribute for a snapshot failed.
        #[error("reading APF attribute {attr} of vCPU {vcpu}: {source}")]
        Get {
            /// vCPU index.
            vcpu: u8,
            /// Attribute.
            attr: u64,
            /// Cause.
            source: kvm_ioctls::Error,
        },
        /// Restoring BLOCK failed.
        #[error("restoring KVM_ARM_VCPU_ASYNC_PF_BLOCK {block:#x} on vCPU {vcpu}: {source}")]
        SetBlock {
            /// vCPU index.
            vcpu: u8,
            /// The value.
            block: u64,
            /// Cause.
            source: kvm_ioctls::Error,
        },
        /// Setting the IRQ attribute failed.
        #[error("setting KVM_ARM_VCPU_ASYNC_PF_IRQ to {intid} on vCPU {vcpu}: {source}")]
        SetIrq {
            /// vCPU index.
            vcpu: u8,
            /// Requested INTID.
            intid: u32,
            /// Cause.
            source: kvm_ioctls::Error,
        },
    }

    /// What the host offers, as read before the first run.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum HostApf {
        /// The register does not exist: the host kernel has no APF.
        Absent,
        /// The register's value.
        Bmap(u64),
    }

    fn read_bmap(vcpu: &VcpuFd) -> Result<HostApf, ApfError> {
        let mut buf = [0u8; 8];
        match vcpu.get_one_reg(KVM_REG_ARM_VENDOR_HYP_BMAP_2, &mut buf) {
            Ok(_) => Ok(HostApf::Bmap(u64::from_le_bytes(buf))),
            Err(e) if e.errno() == libc::ENOENT => Ok(HostApf::Absent),
            Err(e) => Err(ApfError::GetBmap(e)),
        }
    }

    /// Offers APF to the guest (KVM hides it by default). The firmware
    /// registers are VM-wide; this must run before any vCPU of the VM has
    /// run. Returns the old value, or `Absent` if the host has no APF.
    pub fn offer(vcpu: &VcpuFd) -> Result<HostApf, ApfError> {
        let old = match read_bmap(vcpu)? {
            HostApf::Absent => return Ok(HostApf::Absent),
            HostApf::Bmap(v) => v,
        };
        if !offered(old) {
            vcpu.set_one_reg(KVM_REG_ARM_VENDOR_HYP_BMAP_2, &with_apf(old).to_le_bytes())
                .map_err(|e| {
                    if e.errno() == libc::EINVAL {
                        ApfError::Refused(e)
                    } else {
                        ApfError::SetBmap(e)
                    }
                })?;
        }
        Ok(HostApf::Bmap(old))
    }

    /// Hides APF from the guest. The firmware registers are VM-wide; this
    /// must run before any vCPU of the VM has run. Returns the old value.
    pub fn hide(vcpu: &VcpuFd) -> Result<HostApf, ApfError> {
        let old = match read_bmap(vcpu)? {
            HostApf::Absent => return Ok(HostApf::Absent),
            HostApf::Bmap(v) => v,
        };
        vcpu.set_one_reg(KVM_REG_ARM_VENDOR_HYP_BMAP_2, &hidden(old).to_le_bytes())
            .map_err(ApfError::SetBmap)?;
        match read_bmap(vcpu)? {
            HostApf::Bmap(now) if offered(now) => Err(ApfError::StillOffered(now)),
            _ => Ok(HostApf::Bmap(old)),
        }
    }

    fn get_attr<F: AsRawFd>(vcpu: &F, index: u8, attr: u64) -> Result<Option<u64>, ApfError> {
        let mut value: u64 = 0;
        let mut a = kvm_device_attr {
            flags: 0,
            group: KVM_ARM_VCPU_ASYNC_PF_CTRL,
            attr,
            addr: &mut value as *mut u64 as u64,
        };
        // SAFETY: KVM_GET_DEVICE_ATTR on a vCPU fd writes at most 8 bytes
        // (a u32 for IRQ, a u64 for BLOCK) to `addr`, which is `value`,
        // live and writable for the call; `a` is a valid kvm_device_attr.
        let ret = unsafe { ioctl_with_mut_ref(vcpu, KVM_GET_DEVICE_ATTR(), &mut a) };
        if ret == 0 {
            return Ok(Some(if attr == KVM_ARM_VCPU_ASYNC_PF_IRQ {
                value & 0xffff_ffff
            } else {
                value
            }));
        }
        let e = kvm_ioctls::Error::last();
        if e.errno() == libc::ENXIO {
            return Ok(None);
        }
        Err(ApfError::Get {
            vcpu: index,
            attr,
            source: e,
        })
    }

    /// The control block a vCPU has registered (its IPA), if any; `vcpu`
    /// may be a duplicate of the vCPU's fd, and the vCPU must be out of
    /// KVM_RUN.
    pub fn block_ipa<F: AsRawFd>(vcpu: &F, index: u8) -> Option<u64> {
        match get_attr(vcpu, index, KVM_ARM_VCPU_ASYNC_PF_BLOCK) {
            Ok(Some(b)) if b & crate::snapshot::APF_BLOCK_ENABLED != 0 => Some(b & !63),
            _ => None,
        }
    }

    /// A stopped vCPU's APF attributes; `None` if the host has none.
    pub fn save(vcpu: &VcpuFd, index: u8) -> Result<Option<ApfAttrs>, ApfError> {
        let irq = get_attr(vcpu, index, KVM_ARM_VCPU_ASYNC_PF_IRQ)?;
        let block = get_attr(vcpu, index, KVM_ARM_VCPU_ASYNC_PF_BLOCK)?;
        Ok(match (irq, block) {
            (Some(irq), Some(block)) => Some(ApfAttrs {
                irq: irq as u32,
                block,
            }),
            _ => None,
        })
    }

    /// Registers a saved control block on a vCPU that has been through
    /// KVM_ARM_VCPU_INIT and has not run, after its registers and the
    /// vGIC: KVM queues the wake-all, and raises the PPI if the block
    /// holds an unconsumed PAGE_READY.
    pub fn restore_block(vcpu: &VcpuFd, index: u8, block: u64) -> Result<(), ApfError> {
        set_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK, &block).map_err(|source| ApfError::SetBlock {
            vcpu: index,
            block,
            source,
        })
    }

    /// KVM_SET_DEVICE_ATTR of `attr` in `KVM_ARM_VCPU_ASYNC_PF_CTRL` to
    /// `value` (a u32 for IRQ, a u64 for BLOCK).
    fn set_attr<T: Copy>(vcpu: &VcpuFd, attr: u64, value: &T) -> Result<(), kvm_ioctls::Error> {
        let a = kvm_device_attr {
            flags: 0,
            group: KVM_ARM_VCPU_ASYNC_PF_CTRL,
            attr,
            // KVM reads the attribute's size from this address during the
            // ioctl; `value` outlives the call.
            addr: value as *const T as u64,
        };
        vcpu.set_device_attr(&a)
    }

    /// Sets the PAGE_READY PPI of one vCPU. Returns `Ok(false)` if the host
    /// kernel does not know the attribute (ENXIO: no APF support).
    pub fn set_irq(vcpu: &VcpuFd, index: u8, intid: u32) -> Result<bool, ApfError> {
        match set_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, &intid) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == libc::ENXIO => Ok(false),
            Err(source) => Err(ApfError::SetIrq {
                vcpu: index,
                intid,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offering_sets_only_bit_32() {
        assert_eq!(with_apf(0), 1 << 32);
        assert!(offered(with_apf(0)));
        assert_eq!(with_apf((1 << 33) | 1), (1 << 33) | (1 << 32) | 1);
        assert_eq!(with_apf(with_apf(5)), with_apf(5));
    }

    #[test]
    fn hiding_clears_only_bit_32() {
        let all = u64::MAX;
        assert_eq!(hidden(all), all & !(1 << 32));
        assert!(offered(1 << 32));
        assert!(!offered(hidden(1 << 32)));
        // Other vendor functions (bit 0 = function 64, bit 33 = function 97) stay.
        assert_eq!(hidden((1 << 32) | (1 << 33) | 1), (1 << 33) | 1);
        assert_eq!(hidden(0), 0);
    }
}
