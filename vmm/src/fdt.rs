// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Flattened device tree for the guest, written with vm-fdt.

use thiserror::Error;
use vm_fdt::FdtWriter;

use crate::layout::{
    gicr_size, Region, DTB_MAX_SIZE, GICD_BASE, GICD_SIZE, GICR_BASE, SERIAL_BASE, SERIAL_SIZE,
    SERIAL_SPI, TIMER_PPIS,
};

/// Phandle of the GIC, the root's interrupt parent.
pub const GIC_PHANDLE: u32 = 1;

/// First cell of a GIC interrupt specifier: shared peripheral interrupt.
pub const GIC_FDT_IRQ_TYPE_SPI: u32 = 0;
/// First cell of a GIC interrupt specifier: private peripheral interrupt.
pub const GIC_FDT_IRQ_TYPE_PPI: u32 = 1;
/// Third cell: rising edge.
pub const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// Third cell: level high (the only level type GICv3 accepts for PPIs).
pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// Input clock the 8250 driver uses to compute divisors (the classic 1.8432 MHz).
pub const SERIAL_CLOCK_HZ: u32 = 1_843_200;

/// Node path of the UART, used for `stdout-path`.
pub fn serial_node_name() -> String {
    format!("serial@{SERIAL_BASE:x}")
}

/// What the device tree describes.
#[derive(Clone, Debug)]
pub struct FdtConfig<'a> {
    /// Number of vCPUs (MPIDR Aff0 = index).
    pub vcpus: u8,
    /// Guest RAM.
    pub ram: Region,
    /// Kernel command line.
    pub bootargs: &'a str,
    /// Initrd location, if any.
    pub initrd: Option<Region>,
}

/// `linux,uefi-secure-boot` value for "disabled" (`efi_secureboot_mode_disabled`
/// in the kernel's `enum efi_secureboot_mode`, include/linux/efi.h).
pub const UEFI_SECURE_BOOT_DISABLED: u32 = 2;

/// What the EFI stub would leave in `/chosen` for the kernel
/// (drivers/firmware/efi/fdtparams.c): where the EFI system table and the
/// EFI memory map are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UefiParams {
    /// Guest physical address of the EFI system table.
    pub system_table: u64,
    /// Guest physical address of the memory map.
    pub mmap_start: u64,
    /// Size of the memory map in bytes.
    pub mmap_size: u32,
    /// Size of one memory descriptor.
    pub mmap_desc_size: u32,
    /// Memory descriptor version (1).
    pub mmap_desc_ver: u32,
}

/// What the stub device tree of `--boot acpi` carries: only `/chosen`.
#[derive(Clone, Debug)]
pub struct StubFdtConfig<'a> {
    /// Kernel command line.
    pub bootargs: &'a str,
    /// Initrd location, if any.
    pub initrd: Option<Region>,
    /// Where the EFI system table and memory map are.
    pub uefi: UefiParams,
}

/// Errors while writing the device tree.
#[derive(Debug, Error)]
pub enum FdtError {
    /// vm-fdt refused a node or property.
    #[error("device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    /// The blob exceeds the 2 MiB the boot protocol allows.
    #[error("device tree is {0} bytes, larger than the 2 MiB limit")]
    TooBig(usize),
}

/// Builds the DTB.
pub fn create_fdt(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;

    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "apf-vmm")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    add_chosen(
        &mut fdt,
        &Chosen {
            bootargs: cfg.bootargs,
            initrd: cfg.initrd,
            stdout_path: Some(format!("/{}", serial_node_name())),
            uefi: None,
        },
    )?;
    add_memory(&mut fdt, cfg.ram)?;
    add_cpus(&mut fdt, cfg.vcpus)?;
    add_psci(&mut fdt)?;
    add_gic(&mut fdt, cfg.vcpus)?;
    add_timer(&mut fdt)?;
    add_serial(&mut fdt)?;

    fdt.end_node(root)?;
    finish(fdt)
}

/// Builds the stub DTB of `--boot acpi`: a root with only `/chosen`, which
/// makes an arm64 kernel use ACPI (`dt_is_stub()` in
/// arch/arm64/kernel/acpi.c) and find the EFI system table and memory map
/// as if the EFI stub had run. There is no `stdout-path`: the console is in
/// the SPCR table.
pub fn create_stub_fdt(cfg: &StubFdtConfig<'_>) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    add_chosen(
        &mut fdt,
        &Chosen {
            bootargs: cfg.bootargs,
            initrd: cfg.initrd,
            stdout_path: None,
            uefi: Some(cfg.uefi),
        },
    )?;
    fdt.end_node(root)?;
    finish(fdt)
}

fn finish(fdt: FdtWriter) -> Result<Vec<u8>, FdtError> {
    let blob = fdt.finish()?;
    if blob.len() as u64 > DTB_MAX_SIZE {
        return Err(FdtError::TooBig(blob.len()));
    }
    Ok(blob)
}

/// The properties of `/chosen`.
struct Chosen<'a> {
    bootargs: &'a str,
    initrd: Option<Region>,
    stdout_path: Option<String>,
    uefi: Option<UefiParams>,
}

fn add_chosen(fdt: &mut FdtWriter, c: &Chosen<'_>) -> Result<(), FdtError> {
    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", c.bootargs)?;
    if let Some(path) = &c.stdout_path {
        fdt.property_string("stdout-path", path)?;
    }
    if let Some(initrd) = c.initrd {
        fdt.property_u64("linux,initrd-start", initrd.base)?;
        fdt.property_u64("linux,initrd-end", initrd.end())?;
    }
    if let Some(uefi) = c.uefi {
        // Names and cell sizes as the EFI stub writes them
        // (drivers/firmware/efi/libstub/fdt.c); the kernel reads either
        // size (efi_get_fdt_prop() in drivers/firmware/efi/fdtparams.c),
        // and needs all six, linux,uefi-secure-boot included.
        fdt.property_u64("linux,uefi-system-table", uefi.system_table)?;
        fdt.property_u64("linux,uefi-mmap-start", uefi.mmap_start)?;
        fdt.property_u32("linux,uefi-mmap-size", uefi.mmap_size)?;
        fdt.property_u32("linux,uefi-mmap-desc-size", uefi.mmap_desc_size)?;
        fdt.property_u32("linux,uefi-mmap-desc-ver", uefi.mmap_desc_ver)?;
        fdt.property_u32("linux,uefi-secure-boot", UEFI_SECURE_BOOT_DISABLED)?;
    }
    fdt.end_node(chosen)?;
    Ok(())
}

fn add_memory(fdt: &mut FdtWriter, ram: Region) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("memory@{:x}", ram.base))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[ram.base, ram.size])?;
    fdt.end_node(node)?;
    Ok(())
}

fn add_cpus(fdt: &mut FdtWriter, vcpus: u8) -> Result<(), FdtError> {
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for id in 0..u32::from(vcpus) {
        // KVM derives MPIDR from the vCPU index: Aff0 = index for up to 16.
        let cpu = fdt.begin_node(&format!("cpu@{id:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", id)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

fn add_psci(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".to_string(), "arm,psci-0.2".to_string()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;
    Ok(())
}

fn add_gic(fdt: &mut FdtWriter, vcpus: u8) -> Result<(), FdtError> {
    let gic = fdt.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_array_u64("reg", &[GICD_BASE, GICD_SIZE, GICR_BASE, gicr_size(vcpus)])?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_u32("phandle", GIC_PHANDLE)?;
    fdt.end_node(gic)?;
    Ok(())
}

fn add_timer(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let mut cells = Vec::with_capacity(TIMER_PPIS.len() * 3);
    for ppi in TIMER_PPIS {
        cells.extend_from_slice(&[GIC_FDT_IRQ_TYPE_PPI, ppi, IRQ_TYPE_LEVEL_HIGH]);
    }
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.property_null("always-on")?;
    fdt.end_node(timer)?;
    Ok(())
}

fn add_serial(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let serial = fdt.begin_node(&serial_node_name())?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[SERIAL_BASE, SERIAL_SIZE])?;
    // The line is pulsed through an irqfd, so describe it as edge-triggered.
    fdt.property_array_u32(
        "interrupts",
        &[GIC_FDT_IRQ_TYPE_SPI, SERIAL_SPI, IRQ_TYPE_EDGE_RISING],
    )?;
    fdt.property_u32("clock-frequency", SERIAL_CLOCK_HZ)?;
    fdt.end_node(serial)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MIB, PPI_BASE_INTID, RAM_START, SPI_BASE_INTID};
    use fdt::node::FdtNode;
    use fdt::Fdt;

    fn be32s(bytes: &[u8]) -> Vec<u32> {
        assert_eq!(bytes.len() % 4, 0, "property is not a list of cells");
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn be64s(bytes: &[u8]) -> Vec<u64> {
        assert_eq!(bytes.len() % 8, 0, "property is not a list of u64");
        bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_be_bytes(b)
            })
            .collect()
    }

    fn prop<'b, 'a>(node: FdtNode<'b, 'a>, name: &str) -> &'a [u8] {
        node.property(name)
            .unwrap_or_else(|| panic!("{} has no {name}", node.name))
            .value
    }

    fn string_list(bytes: &[u8]) -> Vec<&str> {
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| std::str::from_utf8(s).unwrap())
            .collect()
    }

    fn build(vcpus: u8, initrd: Option<Region>, bootargs: &str) -> Vec<u8> {
        create_fdt(&FdtConfig {
            vcpus,
            ram: Region {
                base: RAM_START,
                size: 512 * MIB,
            },
            bootargs,
            initrd,
        })
        .unwrap()
    }

    #[test]
    fn root_and_memory() {
        let blob = build(1, None, "console=ttyS0");
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        assert_eq!(be32s(prop(root, "#address-cells")), vec![2]);
        assert_eq!(be32s(prop(root, "#size-cells")), vec![2]);
        assert_eq!(be32s(prop(root, "interrupt-parent")), vec![GIC_PHANDLE]);

        let regions: Vec<_> = fdt.memory().regions().collect();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].starting_address as u64, RAM_START);
        assert_eq!(regions[0].size, Some(512 * 1024 * 1024));
        let mem = fdt.find_node("/memory@40000000").unwrap();
        assert_eq!(string_list(prop(mem, "device_type")), vec!["memory"]);
    }

    #[test]
    fn cpus_use_psci() {
        for vcpus in [1u8, 3, 8] {
            let blob = build(vcpus, None, "");
            let fdt = Fdt::new(&blob).unwrap();
            let cpus = fdt.find_node("/cpus").unwrap();
            assert_eq!(be32s(prop(cpus, "#address-cells")), vec![1]);
            assert_eq!(be32s(prop(cpus, "#size-cells")), vec![0]);
            let children: Vec<_> = cpus.children().collect();
            assert_eq!(children.len(), usize::from(vcpus));
            for (i, cpu) in children.into_iter().enumerate() {
                assert_eq!(cpu.name, format!("cpu@{i:x}"));
                assert_eq!(string_list(prop(cpu, "device_type")), vec!["cpu"]);
                assert_eq!(string_list(prop(cpu, "enable-method")), vec!["psci"]);
                assert_eq!(be32s(prop(cpu, "reg")), vec![i as u32]);
            }
        }
    }

    #[test]
    fn psci_node() {
        let blob = build(2, None, "");
        let fdt = Fdt::new(&blob).unwrap();
        let psci = fdt.find_node("/psci").unwrap();
        let compat = string_list(prop(psci, "compatible"));
        assert_eq!(compat, vec!["arm,psci-1.0", "arm,psci-0.2"]);
        assert_eq!(string_list(prop(psci, "method")), vec!["hvc"]);
    }

    #[test]
    fn gic_node() {
        for vcpus in [1u8, 8] {
            let blob = build(vcpus, None, "");
            let fdt = Fdt::new(&blob).unwrap();
            let gic = fdt.find_compatible(&["arm,gic-v3"]).unwrap();
            assert_eq!(gic.name, "intc@8000000");
            assert_eq!(be32s(prop(gic, "#interrupt-cells")), vec![3]);
            assert!(gic.property("interrupt-controller").is_some());
            assert_eq!(
                be64s(prop(gic, "reg")),
                vec![GICD_BASE, GICD_SIZE, GICR_BASE, u64::from(vcpus) * 0x2_0000]
            );
            assert_eq!(be32s(prop(gic, "phandle")), vec![GIC_PHANDLE]);
            // The root's interrupt-parent resolves to this node.
            assert_eq!(fdt.find_phandle(GIC_PHANDLE).unwrap().name, gic.name);
        }
    }

    #[test]
    fn timer_ppis() {
        let blob = build(1, None, "");
        let fdt = Fdt::new(&blob).unwrap();
        let timer = fdt.find_node("/timer").unwrap();
        assert_eq!(
            string_list(prop(timer, "compatible")),
            vec!["arm,armv8-timer"]
        );
        let cells = be32s(prop(timer, "interrupts"));
        assert_eq!(cells, vec![1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);
        let intids: Vec<u32> = cells
            .chunks_exact(3)
            .map(|c| {
                assert_eq!(c[0], GIC_FDT_IRQ_TYPE_PPI);
                c[1] + PPI_BASE_INTID
            })
            .collect();
        assert_eq!(intids, vec![29, 30, 27, 26]);
    }

    #[test]
    fn serial_node() {
        let blob = build(1, None, "");
        let fdt = Fdt::new(&blob).unwrap();
        let serial = fdt.find_node("/serial@9000000").unwrap();
        assert_eq!(string_list(prop(serial, "compatible")), vec!["ns16550a"]);
        assert_eq!(be64s(prop(serial, "reg")), vec![SERIAL_BASE, SERIAL_SIZE]);
        let irq = be32s(prop(serial, "interrupts"));
        assert_eq!(
            irq,
            vec![GIC_FDT_IRQ_TYPE_SPI, SERIAL_SPI, IRQ_TYPE_EDGE_RISING]
        );
        assert_eq!(irq[1] + SPI_BASE_INTID, 33);
        assert_eq!(
            be32s(prop(serial, "clock-frequency")),
            vec![SERIAL_CLOCK_HZ]
        );
    }

    #[test]
    fn chosen_with_initrd() {
        let initrd = Region {
            base: 0x5000_0000,
            size: 0x12_3456,
        };
        let args = "console=ttyS0 earlycon init=/init apf.test=\"a b\"";
        let blob = build(2, Some(initrd), args);
        let fdt = Fdt::new(&blob).unwrap();
        let chosen = fdt.chosen();
        assert_eq!(chosen.bootargs(), Some(args));
        assert_eq!(chosen.stdout().unwrap().name, "serial@9000000");
        let node = fdt.find_node("/chosen").unwrap();
        assert_eq!(be64s(prop(node, "linux,initrd-start")), vec![0x5000_0000]);
        assert_eq!(be64s(prop(node, "linux,initrd-end")), vec![0x5012_3456]);
    }

    #[test]
    fn chosen_without_initrd() {
        let blob = build(1, None, "quiet");
        let fdt = Fdt::new(&blob).unwrap();
        let node = fdt.find_node("/chosen").unwrap();
        assert!(node.property("linux,initrd-start").is_none());
        assert!(node.property("linux,initrd-end").is_none());
        assert_eq!(fdt.chosen().bootargs(), Some("quiet"));
    }

    #[test]
    fn bootargs_with_nul_rejected() {
        let r = create_fdt(&FdtConfig {
            vcpus: 1,
            ram: Region {
                base: RAM_START,
                size: 64 * MIB,
            },
            bootargs: "a\0b",
            initrd: None,
        });
        assert!(matches!(
            r,
            Err(FdtError::Writer(vm_fdt::Error::InvalidString))
        ));
    }

    const UEFI: UefiParams = UefiParams {
        system_table: 0x5ff0_0000,
        mmap_start: 0x5ff0_1000,
        mmap_size: 200,
        mmap_desc_size: 40,
        mmap_desc_ver: 1,
    };

    fn stub(initrd: Option<Region>, bootargs: &str) -> Vec<u8> {
        create_stub_fdt(&StubFdtConfig {
            bootargs,
            initrd,
            uefi: UEFI,
        })
        .unwrap()
    }

    #[test]
    fn stub_has_only_chosen() {
        let blob = stub(None, "console=ttyS0 efi=noruntime");
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        let children: Vec<_> = root.children().map(|n| n.name).collect();
        assert_eq!(children, vec!["chosen"]);
        // The root has only the cell sizes; no compatible, no memory.
        let props: Vec<_> = root.properties().map(|p| p.name).collect();
        assert_eq!(props, vec!["#address-cells", "#size-cells"]);
        assert_eq!(be32s(prop(root, "#address-cells")), vec![2]);
        assert_eq!(be32s(prop(root, "#size-cells")), vec![2]);
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(chosen.children().count(), 0);
        assert!(chosen.property("stdout-path").is_none());
        assert_eq!(fdt.chosen().bootargs(), Some("console=ttyS0 efi=noruntime"));
        assert!(fdt.find_node("/memory").is_none());
    }

    #[test]
    fn stub_carries_uefi_params() {
        let blob = stub(None, "");
        let fdt = Fdt::new(&blob).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        // 64-bit addresses, 32-bit sizes and version, as the EFI stub writes them.
        assert_eq!(
            be64s(prop(chosen, "linux,uefi-system-table")),
            vec![0x5ff0_0000]
        );
        assert_eq!(
            be64s(prop(chosen, "linux,uefi-mmap-start")),
            vec![0x5ff0_1000]
        );
        assert_eq!(be32s(prop(chosen, "linux,uefi-mmap-size")), vec![200]);
        assert_eq!(be32s(prop(chosen, "linux,uefi-mmap-desc-size")), vec![40]);
        assert_eq!(be32s(prop(chosen, "linux,uefi-mmap-desc-ver")), vec![1]);
        assert_eq!(
            be32s(prop(chosen, "linux,uefi-secure-boot")),
            vec![UEFI_SECURE_BOOT_DISABLED]
        );
        assert!(chosen.property("linux,initrd-start").is_none());
    }

    #[test]
    fn stub_keeps_initrd() {
        let initrd = Region {
            base: 0x5000_0000,
            size: 0x1000,
        };
        let blob = stub(Some(initrd), "quiet");
        let fdt = Fdt::new(&blob).unwrap();
        let node = fdt.find_node("/chosen").unwrap();
        assert_eq!(be64s(prop(node, "linux,initrd-start")), vec![0x5000_0000]);
        assert_eq!(be64s(prop(node, "linux,initrd-end")), vec![0x5000_1000]);
        assert!(blob.len() < 1024, "stub DTB is {} bytes", blob.len());
    }

    #[test]
    fn full_tree_has_no_uefi_params() {
        let blob = build(1, None, "");
        let fdt = Fdt::new(&blob).unwrap();
        let node = fdt.find_node("/chosen").unwrap();
        assert!(node.property("linux,uefi-system-table").is_none());
        assert!(node.property("linux,uefi-secure-boot").is_none());
        assert!(fdt.find_node("/").unwrap().children().count() > 1);
    }

    #[test]
    fn blob_is_small_and_well_formed() {
        let blob = build(
            8,
            Some(Region {
                base: 0x4100_0000,
                size: 1,
            }),
            &"x".repeat(2047),
        );
        assert!(blob.len() < 8192, "unexpectedly large DTB: {}", blob.len());
        let fdt = Fdt::new(&blob).unwrap();
        assert_eq!(fdt.total_size(), blob.len());
        // FDT magic.
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
    }
}
