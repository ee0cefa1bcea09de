// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! In-kernel GICv3 (KVM_DEV_TYPE_ARM_VGIC_V3).

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};
use thiserror::Error;

use crate::layout::{GICD_BASE, GICR_BASE, GIC_NR_IRQS};

/// vGIC errors.
#[derive(Debug, Error)]
pub enum GicError {
    /// KVM_CREATE_DEVICE failed.
    #[error("creating the in-kernel GICv3 (the host needs a GICv3 with KVM support): {0}")]
    Create(kvm_ioctls::Error),
    /// A KVM_SET_DEVICE_ATTR on the vGIC failed.
    #[error("configuring the GICv3 ({what}): {source}")]
    Attr {
        /// Which step.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
}

fn set_attr(
    gic: &DeviceFd,
    what: &'static str,
    group: u32,
    attr: u64,
    addr: u64,
) -> Result<(), GicError> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    gic.set_device_attr(&a)
        .map_err(|source| GicError::Attr { what, source })
}

/// Creates and initialises the vGIC. Must run after all vCPUs exist and
/// before any of them runs.
pub fn create(vm: &VmFd) -> Result<DeviceFd, GicError> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm.create_device(&mut dev).map_err(GicError::Create)?;

    // For each attribute KVM reads the value at `addr` during the ioctl;
    // the locals outlive the calls.
    let dist: u64 = GICD_BASE;
    set_attr(
        &gic,
        "distributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
        &dist as *const u64 as u64,
    )?;
    let redist: u64 = GICR_BASE;
    set_attr(
        &gic,
        "redistributor address",
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        &redist as *const u64 as u64,
    )?;
    let nr_irqs: u32 = GIC_NR_IRQS;
    set_attr(
        &gic,
        "number of IRQs",
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        &nr_irqs as *const u32 as u64,
    )?;
    set_attr(
        &gic,
        "init",
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        0,
    )?;
    Ok(gic)
}
