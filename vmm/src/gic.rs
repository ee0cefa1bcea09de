// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! In-kernel GICv3 (KVM_DEV_TYPE_ARM_VGIC_V3).

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT,
    KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST, VGIC_LEVEL_INFO_LINE_LEVEL,
};
use kvm_ioctls::{DeviceFd, VmFd};
use thiserror::Error;

use crate::layout::{GICD_BASE, GICR_BASE, GIC_NR_IRQS, SPI_BASE_INTID};
use crate::regs::sys_reg_encoding;
use crate::snapshot::GicReg;

/// vGIC errors.
#[derive(Debug, Error)]
pub enum GicError {
    /// KVM_CREATE_DEVICE failed.
    #[error("creating the in-kernel GICv3 (the host needs a GICv3 with KVM support): {0}")]
    Create(kvm_ioctls::Error),
    /// Reading a vGIC register for a snapshot failed.
    #[error("saving the GICv3 (group {group}, attribute {attr:#x}): {source}")]
    Save {
        /// Attribute group.
        group: u32,
        /// Attribute.
        attr: u64,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Writing a saved vGIC register failed.
    #[error(
        "restoring the GICv3 (group {group}, attribute {attr:#x}, value {value:#x}): {source}"
    )]
    Restore {
        /// Attribute group.
        group: u32,
        /// Attribute.
        attr: u64,
        /// Value.
        value: u64,
        /// Cause.
        source: kvm_ioctls::Error,
    },
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

// GICv3 register offsets (Arm IHI 0069), distributor and redistributor.
const GICD_CTLR: u64 = 0x0000;
const GICD_IIDR: u64 = 0x0008;
const GICD_IGROUPR: u64 = 0x0080;
const GICD_ISENABLER: u64 = 0x0100;
const GICD_ISPENDR: u64 = 0x0200;
const GICD_ISACTIVER: u64 = 0x0300;
const GICD_IPRIORITYR: u64 = 0x0400;
const GICD_ICFGR: u64 = 0x0c00;
const GICD_IROUTER: u64 = 0x6000;
const GICR_CTLR: u64 = 0x0000;
/// The redistributor's SGI_base frame, 64 KiB after RD_base.
const GICR_SGI: u64 = 0x1_0000;

/// `ICC_PMR_EL1`, the CPU interface's priority mask.
const ICC_PMR_EL1: (u64, u64, u64, u64, u64) = (3, 0, 4, 6, 0);

/// The CPU interface registers (op0, op1, CRn, CRm, op2), in restore
/// order: SRE and CTLR decide how the others read; the group enables last.
const ICC_REGS: [(u64, u64, u64, u64, u64); 15] = [
    (3, 0, 12, 12, 5), // ICC_SRE_EL1
    (3, 0, 12, 12, 4), // ICC_CTLR_EL1
    ICC_PMR_EL1,
    (3, 0, 12, 8, 3),  // ICC_BPR0_EL1
    (3, 0, 12, 12, 3), // ICC_BPR1_EL1
    (3, 0, 12, 8, 4),  // ICC_AP0R0_EL1
    (3, 0, 12, 8, 5),  // ICC_AP0R1_EL1
    (3, 0, 12, 8, 6),  // ICC_AP0R2_EL1
    (3, 0, 12, 8, 7),  // ICC_AP0R3_EL1
    (3, 0, 12, 9, 0),  // ICC_AP1R0_EL1
    (3, 0, 12, 9, 1),  // ICC_AP1R1_EL1
    (3, 0, 12, 9, 2),  // ICC_AP1R2_EL1
    (3, 0, 12, 9, 3),  // ICC_AP1R3_EL1
    (3, 0, 12, 12, 6), // ICC_IGRPEN0_EL1
    (3, 0, 12, 12, 7), // ICC_IGRPEN1_EL1
];

/// The redistributor of the vCPU with this `MPIDR_EL1`, as the per-CPU
/// attribute groups name it: Aff3..Aff0 in bits 63:32.
pub fn mpidr_attr(mpidr: u64) -> u64 {
    let aff = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0x00ff_ffff);
    aff << KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT
}

/// Distributor registers for the SPIs (the private interrupts are the
/// redistributors'), in restore order: configuration before enables and
/// pending bits, so that a level interrupt is not taken for an edge one.
fn dist_offsets() -> Vec<u64> {
    let spis = u64::from(SPI_BASE_INTID)..u64::from(GIC_NR_IRQS);
    let per_bit = |base: u64| spis.clone().step_by(32).map(move |i| base + i / 8);
    let mut v = vec![GICD_IIDR, GICD_CTLR];
    v.extend(per_bit(GICD_IGROUPR));
    v.extend(spis.clone().step_by(16).map(|i| GICD_ICFGR + i / 4));
    v.extend(spis.clone().step_by(4).map(|i| GICD_IPRIORITYR + i));
    // IROUTER is 64 bits wide; the device interface is 32.
    v.extend(
        spis.clone()
            .flat_map(|i| [GICD_IROUTER + 8 * i, GICD_IROUTER + 8 * i + 4]),
    );
    v.extend(per_bit(GICD_ISENABLER));
    v.extend(per_bit(GICD_ISPENDR));
    v.extend(per_bit(GICD_ISACTIVER));
    v
}

/// Redistributor registers of one vCPU (SGIs and PPIs), in restore order.
fn redist_offsets() -> Vec<u64> {
    let mut v = vec![
        GICR_CTLR,
        GICR_SGI + GICD_IGROUPR,
        GICR_SGI + GICD_ICFGR,
        GICR_SGI + GICD_ICFGR + 4,
    ];
    v.extend((0..8).map(|n| GICR_SGI + GICD_IPRIORITYR + 4 * n));
    v.extend([
        GICR_SGI + GICD_ISENABLER,
        GICR_SGI + GICD_ISPENDR,
        GICR_SGI + GICD_ISACTIVER,
    ]);
    v
}

fn get_attr(gic: &DeviceFd, group: u32, attr: u64, wide: bool) -> Result<u64, kvm_ioctls::Error> {
    let mut value: u64 = 0;
    let mut a = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr: &mut value as *mut u64 as u64,
    };
    // SAFETY: KVM writes the register to `addr` during the ioctl: 4 bytes
    // for the 32-bit groups, 8 for the CPU interface; `value` has 8 and
    // outlives the call.
    unsafe { gic.get_device_attr(&mut a) }?;
    // A 32-bit register lands in the low half (arm64 is little-endian).
    Ok(if wide { value } else { value & 0xffff_ffff })
}

/// Reads the vGIC's state; every vCPU must be out of KVM_RUN. `mpidrs`
/// are the vCPUs' `MPIDR_EL1`, in creation order.
pub fn save(gic: &DeviceFd, mpidrs: &[u64]) -> Result<Vec<GicReg>, GicError> {
    let mut regs = Vec::new();
    let mut read = |group: u32, attr: u64, optional: bool| -> Result<(), GicError> {
        let wide = group == KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS;
        match get_attr(gic, group, attr, wide) {
            Ok(value) => regs.push(GicReg { group, attr, value }),
            // An ICC_AP{0,1}R<n> beyond the priority bits KVM implements.
            Err(e) if optional && e.errno() == libc::EINVAL => {}
            Err(source) => {
                return Err(GicError::Save {
                    group,
                    attr,
                    source,
                })
            }
        }
        Ok(())
    };
    for off in dist_offsets() {
        read(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, off, false)?;
    }
    for &mpidr in mpidrs {
        let cpu = mpidr_attr(mpidr);
        for off in redist_offsets() {
            read(KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, cpu | off, false)?;
        }
    }
    // Line levels: the private interrupts per vCPU, the SPIs once.
    let level = u64::from(VGIC_LEVEL_INFO_LINE_LEVEL) << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT;
    for (n, &mpidr) in mpidrs.iter().enumerate() {
        let last = if n == 0 { GIC_NR_IRQS } else { SPI_BASE_INTID };
        for intid in (0..last).step_by(32) {
            read(
                KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                mpidr_attr(mpidr) | level | u64::from(intid),
                false,
            )?;
        }
    }
    for &mpidr in mpidrs {
        for (op0, op1, crn, crm, op2) in ICC_REGS {
            let optional = crn == 12 && (crm == 9 || (crm == 8 && op2 >= 4));
            read(
                KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
                mpidr_attr(mpidr) | sys_reg_encoding(op0, op1, crn, crm, op2),
                optional,
            )?;
        }
    }
    Ok(regs)
}

/// Masks every interrupt at the CPU interfaces of the vCPUs with these
/// MPIDRs (priority mask 0), which must all be out of KVM_RUN. Returns
/// their masks, for [`restore`]. The guest does not see the change, only
/// that no interrupt comes meanwhile.
pub fn mask_cpus(gic: &DeviceFd, mpidrs: &[u64]) -> Result<Vec<GicReg>, GicError> {
    let (op0, op1, crn, crm, op2) = ICC_PMR_EL1;
    let group = KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS;
    let mut saved = Vec::with_capacity(mpidrs.len());
    for &mpidr in mpidrs {
        let attr = mpidr_attr(mpidr) | sys_reg_encoding(op0, op1, crn, crm, op2);
        let value = get_attr(gic, group, attr, true).map_err(|source| GicError::Save {
            group,
            attr,
            source,
        })?;
        saved.push(GicReg { group, attr, value });
        let zero = 0u64;
        // KVM reads the value at `addr` during the ioctl.
        if let Err(e) = set_attr(gic, "mask", group, attr, &zero as *const u64 as u64) {
            // Put back the ones already masked; the first error counts.
            let _ = restore(gic, &saved);
            return Err(e);
        }
    }
    Ok(saved)
}

/// Writes a saved vGIC state back, in the saved order, into a vGIC made
/// by [`create`] for vCPUs with the same MPIDRs.
pub fn restore(gic: &DeviceFd, regs: &[GicReg]) -> Result<(), GicError> {
    for r in regs {
        let wide = r.group == KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS;
        let v64 = r.value;
        let v32 = r.value as u32;
        let addr = if wide {
            &v64 as *const u64 as u64
        } else {
            &v32 as *const u32 as u64
        };
        // KVM reads the value at `addr` during the ioctl; the locals
        // outlive the call.
        set_attr(gic, "restore", r.group, r.attr, addr).map_err(|e| match e {
            GicError::Attr { source, .. } => GicError::Restore {
                group: r.group,
                attr: r.attr,
                value: r.value,
                source,
            },
            other => other,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpidr_attr_moves_aff3() {
        assert_eq!(mpidr_attr(0x8000_0000), 0);
        assert_eq!(mpidr_attr(0x8000_0001), 1 << 32);
        assert_eq!(mpidr_attr(0x12_8003_0201), 0x1203_0201 << 32);
    }

    #[test]
    fn register_lists() {
        let d = dist_offsets();
        assert_eq!(&d[..2], &[GICD_IIDR, GICD_CTLR]);
        // 96 SPIs: 3 words of 1-bit fields, 6 of ICFGR, 24 of priority,
        // 192 IROUTER halves.
        assert_eq!(d.len(), 2 + 3 + 6 + 24 + 192 + 3 + 3 + 3);
        assert!(d.contains(&(GICD_ISPENDR + 4)) && !d.contains(&GICD_ISPENDR));
        assert!(d.contains(&(GICD_IROUTER + 8 * 32)));
        let r = redist_offsets();
        assert_eq!(r.len(), 4 + 8 + 3);
        assert_eq!(r[r.len() - 2], 0x1_0200);
    }
}
