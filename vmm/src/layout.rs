// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest physical memory map, close to QEMU's arm64 `virt` machine.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor          64 KiB
//! 0x080a_0000  GICv3 redistributors       128 KiB per vCPU (1 MiB for 8)
//! 0x0900_0000  16550 UART                 4 KiB, SPI 1 (INTID 33)
//! 0x4000_0000  RAM: kernel at text_offset, initrd below the DTB,
//!              DTB in the last 2 MiB aligned block
//! ```
//!
//! With `--boot acpi` the DTB block is shared (see [`firmware_layout`]):
//!
//! ```text
//! DTB block + 0          stub device tree         1 MiB
//! DTB block + 1 MiB      EFI system table, memory map   64 KiB
//! DTB block + 1 MiB + 64 KiB  ACPI tables (RSDP first)  64 KiB
//! ```
//!
//! Everything here is a pure function of the RAM size, the kernel header and
//! the initrd size, so it is unit tested without KVM.

use thiserror::Error;

use crate::image::KernelInfo;

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Guest physical address of the start of RAM.
pub const RAM_START: u64 = 0x4000_0000;
/// Smallest accepted guest RAM size in MiB.
pub const MIN_MEM_MIB: u64 = 64;
/// Largest accepted guest RAM size in MiB.
pub const MAX_MEM_MIB: u64 = 4096;
/// Largest accepted vCPU count; the redistributor window is sized for it.
pub const MAX_VCPUS: u8 = 8;

/// GICv3 distributor base.
pub const GICD_BASE: u64 = 0x0800_0000;
/// GICv3 distributor size.
pub const GICD_SIZE: u64 = 0x1_0000;
/// GICv3 redistributor base (one contiguous region).
pub const GICR_BASE: u64 = 0x080a_0000;
/// Redistributor frames per vCPU (RD_base + SGI_base, 64 KiB each).
pub const GICR_SIZE_PER_VCPU: u64 = 0x2_0000;
/// Number of interrupts the vGIC implements, SGIs and PPIs included.
pub const GIC_NR_IRQS: u32 = 128;

/// 16550 UART base.
pub const SERIAL_BASE: u64 = 0x0900_0000;
/// 16550 UART MMIO window.
pub const SERIAL_SIZE: u64 = 0x1000;
/// SPI number of the UART (INTID = 32 + SPI); also its irqfd GSI.
pub const SERIAL_SPI: u32 = 1;

/// INTIDs of PPIs start at 16.
pub const PPI_BASE_INTID: u32 = 16;
/// INTIDs of SPIs start at 32.
pub const SPI_BASE_INTID: u32 = 32;
/// Arch timer PPIs in the order the `arm,armv8-timer` binding lists them:
/// secure physical, non-secure physical, virtual, hypervisor physical
/// (INTIDs 29, 30, 27, 26).
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// EL2 virtual timer PPI (INTID 28), used by KVM for nested guests.
pub const HYP_VIRT_TIMER_PPI: u32 = 12;
/// PMU overflow PPI (INTID 23).
pub const PMU_PPI: u32 = 7;
/// vGIC maintenance interrupt PPI (INTID 25).
pub const VGIC_MAINT_PPI: u32 = 9;

/// PPI INTIDs that already have an owner and must not carry APF PAGE_READY.
pub fn reserved_ppi_intids() -> [u32; 7] {
    [
        PMU_PPI,
        VGIC_MAINT_PPI,
        HYP_VIRT_TIMER_PPI,
        TIMER_PPIS[0],
        TIMER_PPIS[1],
        TIMER_PPIS[2],
        TIMER_PPIS[3],
    ]
    .map(|ppi| ppi + PPI_BASE_INTID)
}

/// The kernel must be loaded `text_offset` bytes above a 2 MiB aligned base.
pub const KERNEL_BASE_ALIGN: u64 = 2 * MIB;
/// The DTB may be at most 2 MiB and must not share a 2 MiB block with
/// memory that needs other attributes; it gets a whole block of its own.
pub const DTB_MAX_SIZE: u64 = 2 * MIB;
/// Alignment of the initrd start (the largest arm64 page size).
pub const INITRD_ALIGN: u64 = 64 * 1024;

// Compile-time checks of the fixed map.
// The GIC architecture needs 64 KiB aligned frames.
const _: () = assert!(GICD_BASE % 0x1_0000 == 0 && GICR_BASE % 0x1_0000 == 0);
// The redistributors of the largest VM end before the UART.
const _: () = assert!(GICR_BASE + MAX_VCPUS as u64 * GICR_SIZE_PER_VCPU <= SERIAL_BASE);
// The kernel base is RAM_START, which must be 2 MiB aligned.
const _: () = assert!(RAM_START % KERNEL_BASE_ALIGN == 0);
// The UART's SPI lies within the interrupts the vGIC implements.
const _: () = assert!(SPI_BASE_INTID + SERIAL_SPI < GIC_NR_IRQS);
// The vGIC needs a multiple of 32 interrupts, at least 64.
const _: () = assert!(GIC_NR_IRQS % 32 == 0 && GIC_NR_IRQS >= 64);

/// With `--boot acpi`: offset of the firmware tables in the DTB block. The
/// stub device tree before it is a few hundred bytes.
pub const FIRMWARE_OFFSET: u64 = MIB;
/// Alignment and size granule of the firmware regions: the largest arm64
/// page size, so that a kernel with 64 KiB pages sees the same EFI memory
/// map boundaries (it rounds each region out to whole pages).
pub const FIRMWARE_ALIGN: u64 = 64 * 1024;
/// Room for the EFI system table, its configuration table and the EFI
/// memory map.
pub const EFI_REGION_SIZE: u64 = 64 * 1024;
/// Room for the ACPI tables.
pub const ACPI_REGION_SIZE: u64 = 64 * 1024;

// The firmware regions are aligned and fit in the DTB block after the stub DT.
const _: () = assert!(FIRMWARE_OFFSET % FIRMWARE_ALIGN == 0);
const _: () = assert!(EFI_REGION_SIZE % FIRMWARE_ALIGN == 0);
const _: () = assert!(ACPI_REGION_SIZE % FIRMWARE_ALIGN == 0);
const _: () = assert!(FIRMWARE_OFFSET + EFI_REGION_SIZE + ACPI_REGION_SIZE <= DTB_MAX_SIZE);
// The DTB block (2 MiB aligned) keeps the firmware regions aligned.
const _: () = assert!(KERNEL_BASE_ALIGN % FIRMWARE_ALIGN == 0);
// The UART is described to ACPI with a 32-bit memory descriptor.
const _: () = assert!(SERIAL_BASE + SERIAL_SIZE <= 1 << 32);

/// A guest physical address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether the two ranges share at least one byte.
    #[cfg(test)]
    pub fn overlaps(&self, other: &Region) -> bool {
        self.base < other.end() && other.base < self.end()
    }

    /// Whether `other` lies entirely within `self`.
    #[cfg(test)]
    pub fn contains(&self, other: &Region) -> bool {
        other.base >= self.base && other.end() <= self.end()
    }
}

/// Size of the redistributor region for `vcpus` vCPUs.
pub fn gicr_size(vcpus: u8) -> u64 {
    u64::from(vcpus) * GICR_SIZE_PER_VCPU
}

/// The MMIO regions of the machine, for `vcpus` vCPUs.
#[cfg(test)]
pub fn mmio_regions(vcpus: u8) -> [(&'static str, Region); 3] {
    [
        (
            "gic-dist",
            Region {
                base: GICD_BASE,
                size: GICD_SIZE,
            },
        ),
        (
            "gic-redist",
            Region {
                base: GICR_BASE,
                size: gicr_size(vcpus),
            },
        ),
        (
            "serial",
            Region {
                base: SERIAL_BASE,
                size: SERIAL_SIZE,
            },
        ),
    ]
}

/// Where everything goes in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// All of guest RAM.
    pub ram: Region,
    /// The 2 MiB aligned base the kernel is loaded relative to.
    pub kernel_base: u64,
    /// Where the Image is copied and where the boot vCPU starts (base + text_offset).
    pub kernel: Region,
    /// The initrd, if any.
    pub initrd: Option<Region>,
    /// The block reserved for the DTB; x0 of the boot vCPU points at its base.
    pub dtb: Region,
}

/// Reasons the images cannot be placed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// RAM size outside the supported range.
    #[error("RAM size {0:#x} is outside {MIN_MEM_MIB}..{MAX_MEM_MIB} MiB")]
    RamSize(u64),
    /// The kernel and the DTB block do not both fit.
    #[error(
        "kernel needs {needed} MiB of RAM up to the end of its image plus 2 MiB for the device tree; --mem gives {have} MiB"
    )]
    KernelTooBig {
        /// MiB needed, rounded up.
        needed: u64,
        /// MiB available.
        have: u64,
    },
    /// The initrd does not fit between the kernel and the DTB.
    #[error(
        "initrd of {size} bytes does not fit between the kernel (ends at {kernel_end:#x}) and the device tree (at {dtb:#x}); raise --mem"
    )]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// Start of the DTB block.
        dtb: u64,
    },
}

/// Where the `--boot acpi` structures go: all in the DTB block, which is
/// above the kernel and the initrd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareLayout {
    /// The stub device tree; starts where [`Layout::dtb`] does (x0).
    pub dtb: Region,
    /// EFI system table, configuration table and memory map.
    pub efi: Region,
    /// ACPI tables.
    pub acpi: Region,
}

/// Splits the DTB block of `layout` for `--boot acpi`.
pub fn firmware_layout(layout: &Layout) -> FirmwareLayout {
    let block = layout.dtb;
    let efi = Region {
        base: block.base + FIRMWARE_OFFSET,
        size: EFI_REGION_SIZE,
    };
    FirmwareLayout {
        dtb: Region {
            base: block.base,
            size: FIRMWARE_OFFSET,
        },
        efi,
        acpi: Region {
            base: efi.end(),
            size: ACPI_REGION_SIZE,
        },
    }
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| align_down(v, align))
}

/// Places kernel, initrd and DTB in `ram_size` bytes of RAM at `RAM_START`.
pub fn compute(
    ram_size: u64,
    kernel: &KernelInfo,
    initrd_size: Option<u64>,
) -> Result<Layout, LayoutError> {
    if !(MIN_MEM_MIB * MIB..=MAX_MEM_MIB * MIB).contains(&ram_size) {
        return Err(LayoutError::RamSize(ram_size));
    }
    let ram = Region {
        base: RAM_START,
        size: ram_size,
    };
    let kernel_base = RAM_START;
    let kernel_load = kernel_base + kernel.text_offset;
    let dtb_base = align_down(ram.end() - DTB_MAX_SIZE, KERNEL_BASE_ALIGN);

    let too_big = || LayoutError::KernelTooBig {
        needed: (kernel
            .text_offset
            .saturating_add(kernel.footprint)
            .saturating_add(DTB_MAX_SIZE)
            .saturating_add(MIB - 1))
            / MIB,
        have: ram_size / MIB,
    };
    let kernel_end = kernel_load
        .checked_add(kernel.footprint)
        .ok_or_else(too_big)?;
    if kernel_end > dtb_base {
        return Err(too_big());
    }

    let initrd = match initrd_size {
        None => None,
        Some(size) => {
            let not_fit = LayoutError::InitrdTooBig {
                size,
                kernel_end,
                dtb: dtb_base,
            };
            let lowest = align_up(kernel_end, INITRD_ALIGN).ok_or_else(|| not_fit.clone())?;
            let start = dtb_base
                .checked_sub(size)
                .map(|s| align_down(s, INITRD_ALIGN))
                .filter(|s| *s >= lowest)
                .ok_or(not_fit)?;
            Some(Region { base: start, size })
        }
    };

    Ok(Layout {
        ram,
        kernel_base,
        kernel: Region {
            base: kernel_load,
            size: kernel.footprint,
        },
        initrd,
        dtb: Region {
            base: dtb_base,
            size: DTB_MAX_SIZE,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(text_offset: u64, footprint: u64) -> KernelInfo {
        KernelInfo {
            text_offset,
            footprint,
            file_size: footprint,
            page_size: Some(4096),
        }
    }

    /// Checks every invariant the boot protocol and the VMM rely on.
    fn check(layout: &Layout, k: &KernelInfo, initrd_size: Option<u64>) {
        let ram = layout.ram;
        assert_eq!(ram.base, RAM_START);
        assert_eq!(layout.kernel_base % KERNEL_BASE_ALIGN, 0);
        assert_eq!(layout.kernel.base, layout.kernel_base + k.text_offset);
        assert_eq!(layout.kernel.size, k.footprint);
        assert!(ram.contains(&layout.kernel));

        assert_eq!(layout.dtb.base % 8, 0, "DTB must be 8-byte aligned");
        assert_eq!(layout.dtb.base % KERNEL_BASE_ALIGN, 0);
        assert_eq!(layout.dtb.size, DTB_MAX_SIZE);
        assert!(ram.contains(&layout.dtb));
        assert!(!layout.dtb.overlaps(&layout.kernel));
        // The DTB sits in the topmost whole 2 MiB block.
        assert!(ram.end() - layout.dtb.end() < KERNEL_BASE_ALIGN);

        match (initrd_size, layout.initrd) {
            (None, None) => {}
            (Some(size), Some(initrd)) => {
                assert_eq!(initrd.size, size);
                assert_eq!(initrd.base % INITRD_ALIGN, 0);
                assert!(ram.contains(&initrd));
                assert!(!initrd.overlaps(&layout.kernel));
                assert!(!initrd.overlaps(&layout.dtb));
                assert!(initrd.end() <= layout.dtb.base, "initrd below the DTB");
                assert!(
                    layout.dtb.base - initrd.end() < INITRD_ALIGN,
                    "initrd as high as possible"
                );
            }
            other => panic!("initrd mismatch: {other:?}"),
        }
    }

    #[test]
    fn typical_layout() {
        let k = kernel(0, 40 * MIB);
        let l = compute(512 * MIB, &k, Some(3 * MIB + 123)).unwrap();
        check(&l, &k, Some(3 * MIB + 123));
        assert_eq!(l.kernel.base, 0x4000_0000);
        assert_eq!(l.dtb.base, 0x4000_0000 + 510 * MIB);
        assert_eq!(
            l.initrd.unwrap().base,
            align_down(l.dtb.base - (3 * MIB + 123), INITRD_ALIGN)
        );
    }

    #[test]
    fn legacy_text_offset() {
        let k = kernel(0x8_0000, 20 * MIB);
        let l = compute(64 * MIB, &k, None).unwrap();
        check(&l, &k, None);
        assert_eq!(l.kernel.base, 0x4008_0000);
    }

    #[test]
    fn odd_ram_size_keeps_dtb_block_aligned() {
        let k = kernel(0, 10 * MIB);
        let l = compute(65 * MIB, &k, Some(MIB)).unwrap();
        check(&l, &k, Some(MIB));
        assert_eq!(l.dtb.base, RAM_START + 62 * MIB);
    }

    #[test]
    fn invariants_over_many_sizes() {
        for mem in [64, 65, 100, 127, 512, 1023, 4096] {
            for (text_offset, footprint) in [(0, 4096), (0, 30 * MIB), (0x8_0000, 17 * MIB + 5)] {
                for initrd in [None, Some(1), Some(65_537), Some(8 * MIB)] {
                    let k = kernel(text_offset, footprint);
                    if let Ok(l) = compute(mem * MIB, &k, initrd) {
                        check(&l, &k, initrd);
                    } else {
                        // Only the tight combinations may fail.
                        assert!(footprint + initrd.unwrap_or(0) + 3 * MIB > mem * MIB);
                    }
                }
            }
        }
    }

    #[test]
    fn exact_fit() {
        // Kernel up to the DTB block with no room left: fits; one more byte: does not.
        let k = kernel(0, 62 * MIB);
        check(&compute(64 * MIB, &k, None).unwrap(), &k, None);
        assert!(matches!(
            compute(64 * MIB, &kernel(0, 62 * MIB + 1), None),
            Err(LayoutError::KernelTooBig {
                needed: 65,
                have: 64
            })
        ));
    }

    #[test]
    fn initrd_too_big() {
        let k = kernel(0, 30 * MIB);
        // 64 MiB RAM: DTB at 62 MiB, kernel ends at 30 MiB: 32 MiB free.
        check(
            &compute(64 * MIB, &k, Some(32 * MIB)).unwrap(),
            &k,
            Some(32 * MIB),
        );
        assert_eq!(
            compute(64 * MIB, &k, Some(32 * MIB + 1)),
            Err(LayoutError::InitrdTooBig {
                size: 32 * MIB + 1,
                kernel_end: RAM_START + 30 * MIB,
                dtb: RAM_START + 62 * MIB,
            })
        );
        assert!(compute(64 * MIB, &k, Some(u64::MAX)).is_err());
    }

    #[test]
    fn kernel_end_overflow_is_an_error() {
        assert!(matches!(
            compute(64 * MIB, &kernel(0, u64::MAX), None),
            Err(LayoutError::KernelTooBig { .. })
        ));
    }

    #[test]
    fn ram_size_bounds() {
        let k = kernel(0, MIB);
        assert_eq!(
            compute(63 * MIB, &k, None),
            Err(LayoutError::RamSize(63 * MIB))
        );
        assert_eq!(
            compute(4097 * MIB, &k, None),
            Err(LayoutError::RamSize(4097 * MIB))
        );
        assert!(compute(4096 * MIB, &k, None).is_ok());
    }

    #[test]
    fn mmio_below_ram_and_disjoint() {
        for vcpus in 1..=MAX_VCPUS {
            let regions = mmio_regions(vcpus);
            for (i, (name, r)) in regions.iter().enumerate() {
                assert!(r.end() <= RAM_START, "{name} not below RAM");
                assert!(r.size > 0);
                for (other, o) in &regions[i + 1..] {
                    assert!(!r.overlaps(o), "{name} overlaps {other} with {vcpus} vCPUs");
                }
            }
            assert_eq!(regions[1].1.size, u64::from(vcpus) * 0x2_0000);
        }
    }

    #[test]
    fn reserved_ppis() {
        let mut r = reserved_ppi_intids();
        r.sort_unstable();
        assert_eq!(r, [23, 25, 26, 27, 28, 29, 30]);
        assert!(r
            .iter()
            .all(|i| (PPI_BASE_INTID..SPI_BASE_INTID).contains(i)));
    }

    #[test]
    fn firmware_layout_in_the_dtb_block() {
        for mem in [64, 65, 100, 512, 4096] {
            for initrd in [None, Some(1), Some(8 * MIB + 3)] {
                let k = kernel(0x8_0000, 17 * MIB + 5);
                let l = compute(mem * MIB, &k, initrd).unwrap();
                let fw = firmware_layout(&l);
                // x0 still points at the device tree.
                assert_eq!(fw.dtb.base, l.dtb.base);
                let parts = [fw.dtb, fw.efi, fw.acpi];
                for (i, r) in parts.iter().enumerate() {
                    assert!(l.dtb.contains(r), "{r:?} outside the DTB block");
                    assert!(l.ram.contains(r));
                    assert_eq!(r.base % FIRMWARE_ALIGN, 0);
                    assert_eq!(r.size % FIRMWARE_ALIGN, 0);
                    assert!(r.size > 0);
                    assert!(!r.overlaps(&l.kernel));
                    if let Some(initrd) = l.initrd {
                        assert!(!r.overlaps(&initrd));
                    }
                    for o in &parts[i + 1..] {
                        assert!(!r.overlaps(o), "{r:?} overlaps {o:?}");
                    }
                }
            }
        }
        let l = compute(512 * MIB, &kernel(0, 40 * MIB), None).unwrap();
        let fw = firmware_layout(&l);
        assert_eq!(fw.efi.base, RAM_START + 511 * MIB);
        assert_eq!(fw.acpi.base, RAM_START + 511 * MIB + 0x1_0000);
        assert_eq!(fw.acpi.end(), RAM_START + 511 * MIB + 0x2_0000);
    }

    #[test]
    fn region_helpers() {
        let a = Region { base: 10, size: 10 };
        assert!(a.overlaps(&Region { base: 19, size: 1 }));
        assert!(!a.overlaps(&Region { base: 20, size: 1 }));
        assert!(!a.overlaps(&Region { base: 0, size: 10 }));
        assert!(a.contains(&Region { base: 10, size: 10 }));
        assert!(!a.contains(&Region { base: 11, size: 10 }));
        assert_eq!(align_up(5, 4), Some(8));
        assert_eq!(align_up(u64::MAX, 4), None);
        assert_eq!(align_down(7, 4), 4);
    }
}
