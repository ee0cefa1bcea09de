// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! ACPI tables for `--boot acpi`, built with the `acpi_tables` crate: RSDP
//! (revision 2) → XSDT → FADT (→ DSDT), MADT, GTDT, SPCR. They describe the
//! same machine as the device tree of `fdt.rs`: the vCPUs (PSCI over HVC),
//! the GICv3, the arch timer and the 16550 UART.
//!
//! `acpi_tables` has typed builders for the RSDP, XSDT, FADT and MADT; the
//! GTDT (no module) and the SPCR (only a RISC-V SBI constructor) are laid
//! out with its generic `sdt::Sdt`, the DSDT body with its `aml` module.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate, Scope,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, GicVersion, Gicc, Gicd, Gicr, LocalInterruptController, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use thiserror::Error;

use crate::layout::{
    gicr_size, Region, GICD_BASE, GICR_BASE, MAX_VCPUS, PPI_BASE_INTID, SERIAL_BASE, SERIAL_SIZE,
    SERIAL_SPI, SPI_BASE_INTID, TIMER_PPIS,
};

/// OEM ID of every table.
pub const OEM_ID: [u8; 6] = *b"APFVMM";
/// OEM table ID of every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"APFVMM  ";
/// OEM revision of every table.
pub const OEM_REVISION: u32 = 1;

/// FADT ARM boot architecture flag: PSCI is implemented.
pub const ARM_BOOT_ARCH_PSCI_COMPLIANT: u16 = 1 << 0;
/// FADT ARM boot architecture flag: PSCI calls use HVC rather than SMC.
pub const ARM_BOOT_ARCH_PSCI_USE_HVC: u16 = 1 << 1;

/// GTDT timer flag: the timer keeps running in low-power states. Bits 0
/// (edge-triggered) and 1 (active low) stay clear: level, active high.
pub const GTDT_TIMER_ALWAYS_ON: u32 = 1 << 2;
/// GTDT revision: 2 has the four per-CPU timers of the DT's `arm,armv8-timer`.
pub const GTDT_REVISION: u8 = 2;
/// Length of a revision 2 GTDT without platform timers.
pub const GTDT_LEN: usize = 96;

/// SPCR revision 2 (the layout Linux reads; the UART clock field of
/// revision 3 is not used by it).
pub const SPCR_REVISION: u8 = 2;
/// Length of a revision 2 SPCR.
pub const SPCR_LEN: usize = 80;
/// SPCR interface type: full 16550 (DBG2 port subtype 0x0000).
pub const SPCR_INTERFACE_16550: u8 = 0;
/// SPCR interrupt type: ARMH GIC interrupt (GSI field).
pub const SPCR_INTERRUPT_GIC: u8 = 1 << 3;
/// SPCR baud rate code for 115200.
pub const SPCR_BAUD_115200: u8 = 7;

/// DSDT revision: 2 for 64-bit AML integers.
pub const DSDT_REVISION: u8 = 2;
/// `_HID` of the UART, which Linux binds with 8250_pnp (the port clock is
/// then 1.8432 MHz, the `clock-frequency` the device tree gives).
pub const UART_HID: &str = "PNP0501";
// 8250_pnp gives the port this clock (serial_pnp_probe() in
// drivers/tty/serial/8250/8250_pnp.c); the device tree says the same.
const _: () = assert!(crate::fdt::SERIAL_CLOCK_HZ == 1_843_200);
/// `_HID` of a processor device.
pub const PROCESSOR_HID: &str = "ACPI0007";

/// Alignment of each table in the ACPI region.
const TABLE_ALIGN: usize = 16;

/// The tables, laid out for one place in guest RAM.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    /// Guest physical address of the RSDP (the start of the region).
    pub rsdp: u64,
    /// The bytes to copy to the start of the region.
    pub blob: Vec<u8>,
}

/// Errors while building the tables.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    /// A vCPU count outside 1..=MAX_VCPUS.
    #[error("ACPI tables for {0} vCPUs: supported are 1..{MAX_VCPUS}")]
    Vcpus(u8),
    /// The tables do not fit the region reserved for them.
    #[error("ACPI tables are {size} bytes, larger than the {room} bytes reserved")]
    TooBig {
        /// Their size.
        size: usize,
        /// The room.
        room: u64,
    },
}

/// Lays the tables out one after the other, each aligned.
struct Writer {
    base: u64,
    blob: Vec<u8>,
}

impl Writer {
    /// Appends `table` and returns its guest physical address.
    fn add(&mut self, table: &dyn Aml) -> u64 {
        let start = self.blob.len().next_multiple_of(TABLE_ALIGN);
        self.blob.resize(start, 0);
        table.to_aml_bytes(&mut self.blob);
        self.base + start as u64
    }
}

/// Builds the tables for `vcpus` vCPUs, to be copied to `region.base`.
pub fn create_acpi_tables(vcpus: u8, region: Region) -> Result<AcpiTables, AcpiError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(AcpiError::Vcpus(vcpus));
    }
    let mut w = Writer {
        base: region.base,
        // The RSDP goes first; it is written once the XSDT's place is known.
        blob: vec![0; Rsdp::len()],
    };

    let dsdt = w.add(&dsdt(vcpus));
    let fadt = w.add(&fadt(dsdt));
    let madt = w.add(&madt(vcpus));
    let gtdt = w.add(&gtdt());
    let spcr = w.add(&spcr());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for table in [fadt, madt, gtdt, spcr] {
        xsdt.add_entry(table);
    }
    let xsdt = w.add(&xsdt);

    let mut rsdp = Vec::with_capacity(Rsdp::len());
    Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp);
    w.blob[..rsdp.len()].copy_from_slice(&rsdp);

    if w.blob.len() as u64 > region.size {
        return Err(AcpiError::TooBig {
            size: w.blob.len(),
            room: region.size,
        });
    }
    Ok(AcpiTables {
        rsdp: region.base,
        blob: w.blob,
    })
}

/// FADT: hardware-reduced ACPI, PSCI over HVC, the DSDT at `dsdt`. No FACS:
/// a hardware-reduced platform does not need one.
fn fadt(dsdt: u64) -> impl Aml {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .dsdt_64(dsdt);
    fadt.arm_boot_arch = (ARM_BOOT_ARCH_PSCI_COMPLIANT | ARM_BOOT_ARCH_PSCI_USE_HVC).into();
    fadt.finalize()
}

/// MADT: one GICC per vCPU, the GICD and one redistributor range, as
/// `fdt.rs` and `gic.rs` describe them.
fn madt(vcpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(0),
    );
    for id in 0..u32::from(vcpus) {
        // KVM gives vCPU n the MPIDR Aff0 = n (MAX_VCPUS <= 16). The
        // redistributors are found through the GICR entry, so the GICC's
        // GICR base stays 0; so does the CPU interface number (a GICv3
        // without legacy mode), the GICv2 fields and the PMU interrupt
        // (the device tree has no PMU either).
        madt.add_structure(
            Gicc::new(EnabledStatus::Enabled)
                .acpi_processor_uid(id)
                .mpidr(u64::from(id)),
        );
    }
    madt.add_structure(Gicd::new(0, GICD_BASE, GicVersion::GICv3));
    // At most MAX_VCPUS * 128 KiB: fits the 32-bit length.
    let gicr_len = u32::try_from(gicr_size(vcpus)).unwrap_or(u32::MAX);
    madt.add_structure(Gicr::new(GICR_BASE, gicr_len));
    madt
}

// The redistributor range of the largest VM fits the GICR entry's length.
const _: () = assert!(MAX_VCPUS as u64 * crate::layout::GICR_SIZE_PER_VCPU <= u32::MAX as u64);

/// GTDT (revision 2): the per-CPU arch timer PPIs of `TIMER_PPIS`,
/// level-triggered, active high, always on, like the device tree's timer;
/// no memory-mapped timers.
fn gtdt() -> Sdt {
    let mut t = Sdt::new(
        *b"GTDT",
        GTDT_LEN as u32,
        GTDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // CntControlBase: none.
    t.write_u64(36, u64::MAX);
    // Secure EL1, non-secure EL1, virtual and non-secure EL2 timers: the
    // order of the `arm,armv8-timer` binding, which TIMER_PPIS follows.
    let flags = GTDT_TIMER_ALWAYS_ON;
    for (i, ppi) in TIMER_PPIS.iter().enumerate() {
        t.write_u32(48 + 8 * i, ppi + PPI_BASE_INTID);
        t.write_u32(52 + 8 * i, flags);
    }
    // CntReadBase: none; no platform timers (count and offset 0).
    t.write_u64(80, u64::MAX);
    t
}

/// SPCR (revision 2): the 16550 at SERIAL_BASE, byte-wide MMIO, with its GSI.
fn spcr() -> Sdt {
    let mut t = Sdt::new(
        *b"SPCR",
        SPCR_LEN as u32,
        SPCR_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u8(36, SPCR_INTERFACE_16550);
    // Base address: a generic address structure (system memory, 8-bit
    // registers, byte access).
    t.write_u8(40, 0);
    t.write_u8(41, 8);
    t.write_u8(42, 0);
    t.write_u8(43, 1);
    t.write_u64(44, SERIAL_BASE);
    t.write_u8(52, SPCR_INTERRUPT_GIC);
    t.write_u32(54, SPI_BASE_INTID + SERIAL_SPI);
    t.write_u8(58, SPCR_BAUD_115200);
    // No parity (59 = 0), one stop bit, no flow control (61 = 0), VT100 (62 = 0).
    t.write_u8(60, 1);
    // Not a PCI device.
    t.write_u16(64, 0xffff);
    t.write_u16(66, 0xffff);
    t
}

/// DSDT: a processor device per vCPU (`_UID` = the GICC's processor UID)
/// and the UART, in `\_SB`.
fn dsdt(vcpus: u8) -> Sdt {
    let mut body = Vec::new();
    for id in 0..u32::from(vcpus) {
        let hid = Name::new("_HID".into(), &PROCESSOR_HID);
        let uid = Name::new("_UID".into(), &id);
        Device::new(Path::new(&format!("C{id:03X}")), vec![&hid, &uid]).to_aml_bytes(&mut body);
    }

    let hid = Name::new("_HID".into(), &EISAName::new(UART_HID));
    let uid = Name::new("_UID".into(), &0u32);
    // Both below 4 GiB (checked in layout.rs).
    let mmio = Memory32Fixed::new(true, SERIAL_BASE as u32, SERIAL_SIZE as u32);
    // The line is pulsed through an irqfd: edge-triggered, active high,
    // exclusive, as in the device tree.
    let irq = Interrupt::new(true, true, false, false, SPI_BASE_INTID + SERIAL_SPI);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&mmio, &irq]));
    Device::new("COM0".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);

    let mut t = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(&Scope::raw("\\_SB_".into(), body));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{ACPI_REGION_SIZE, GICD_SIZE};
    use crate::testutil::{u16_at, u32_at, u64_at};

    const BASE: u64 = 0x5ff1_0000;

    fn region() -> Region {
        Region {
            base: BASE,
            size: ACPI_REGION_SIZE,
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at guest address `addr`, with its length from its header;
    /// checks the signature and the checksum.
    fn table<'a>(t: &'a AcpiTables, addr: u64, sig: &[u8; 4]) -> &'a [u8] {
        assert!(addr >= BASE, "{sig:?} at {addr:#x} below the region");
        let off = usize::try_from(addr - BASE).unwrap();
        assert_eq!(off % TABLE_ALIGN, 0);
        assert_eq!(&t.blob[off..off + 4], sig);
        let len = u32_at(&t.blob, off + 4) as usize;
        assert!(
            len >= 36 && off + len <= t.blob.len(),
            "{sig:?} length {len}"
        );
        let bytes = &t.blob[off..off + len];
        assert_eq!(sum(bytes), 0, "{sig:?} checksum");
        assert_eq!(&bytes[10..16], &OEM_ID);
        bytes
    }

    /// Follows RSDP → XSDT and returns the tables it lists by signature,
    /// plus the DSDT from the FADT.
    fn walk(t: &AcpiTables) -> Vec<([u8; 4], &[u8])> {
        assert_eq!(t.rsdp, BASE);
        let rsdp = &t.blob[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(rsdp, 20), 36, "RSDP length");
        assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");

        let xsdt = table(t, u64_at(rsdp, 24), b"XSDT");
        let entries = &xsdt[36..];
        assert_eq!(entries.len() % 8, 0);
        let mut out = Vec::new();
        for e in entries.chunks_exact(8) {
            let addr = u64::from_le_bytes(e.try_into().unwrap());
            let off = usize::try_from(addr - BASE).unwrap();
            let sig: [u8; 4] = t.blob[off..off + 4].try_into().unwrap();
            out.push((sig, table(t, addr, &sig)));
        }
        let fadt = out.iter().find(|(s, _)| s == b"FACP").unwrap().1;
        // X_DSDT, and no 32-bit DSDT address.
        assert_eq!(u32_at(fadt, 40), 0);
        let dsdt = table(t, u64_at(fadt, 140), b"DSDT");
        out.push((*b"DSDT", dsdt));
        out
    }

    fn get<'a>(tables: &[([u8; 4], &'a [u8])], sig: &[u8; 4]) -> &'a [u8] {
        let found: Vec<_> = tables.iter().filter(|(s, _)| s == sig).collect();
        assert_eq!(found.len(), 1, "{sig:?} present once");
        found[0].1
    }

    fn build(vcpus: u8) -> AcpiTables {
        create_acpi_tables(vcpus, region()).unwrap()
    }

    #[test]
    fn chain_and_checksums() {
        for vcpus in [1, 2, 8] {
            let t = build(vcpus);
            let tables = walk(&t);
            let mut sigs: Vec<_> = tables.iter().map(|(s, _)| *s).collect();
            sigs.sort_unstable();
            assert_eq!(sigs, [*b"APIC", *b"DSDT", *b"FACP", *b"GTDT", *b"SPCR"]);
            assert!(t.blob.len() < 4096, "{} bytes", t.blob.len());
        }
    }

    #[test]
    fn fadt_hw_reduced_psci_hvc() {
        let t = build(1);
        let fadt = get(&walk(&t), b"FACP");
        assert_eq!(fadt.len(), 276);
        // ACPI 6.5: Linux needs 5.1 or later.
        assert!(fadt[8] > 5 || (fadt[8] == 5 && fadt[131] >= 1));
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(u16_at(fadt, 129), 0b11, "PSCI compliant, HVC");
        // No FACS.
        assert_eq!(u32_at(fadt, 36), 0);
        assert_eq!(u64_at(fadt, 132), 0);
    }

    #[test]
    fn madt_matches_the_machine() {
        for vcpus in [1u8, 3, 8] {
            let t = build(vcpus);
            let madt = get(&walk(&t), b"APIC");
            let mut gicc = Vec::new();
            let mut gicd = Vec::new();
            let mut gicr = Vec::new();
            let mut off = 44;
            while off < madt.len() {
                let (ty, len) = (madt[off], madt[off + 1] as usize);
                assert!(len > 0 && off + len <= madt.len());
                let e = &madt[off..off + len];
                match ty {
                    0xb => gicc.push(e),
                    0xc => gicd.push(e),
                    0xe => gicr.push(e),
                    other => panic!("unexpected MADT entry type {other:#x}"),
                }
                off += len;
            }
            assert_eq!(off, madt.len());
            assert_eq!(gicc.len(), usize::from(vcpus));
            for (i, e) in gicc.iter().enumerate() {
                assert_eq!(e.len(), 82);
                assert_eq!(u32_at(e, 4), 0, "CPU interface number");
                assert_eq!(u32_at(e, 8), i as u32, "processor UID");
                assert_eq!(u32_at(e, 12) & 1, 1, "enabled");
                assert_eq!(u64_at(e, 60), 0, "GICR base (a GICR entry is given)");
                assert_eq!(u64_at(e, 68), i as u64, "MPIDR");
            }
            assert_eq!(gicd.len(), 1);
            assert_eq!(u64_at(gicd[0], 8), GICD_BASE);
            assert_eq!(gicd[0][20], 3, "GICv3");
            assert_eq!(gicr.len(), 1);
            assert_eq!(u64_at(gicr[0], 4), GICR_BASE);
            assert_eq!(u64::from(u32_at(gicr[0], 12)), u64::from(vcpus) * 0x2_0000);
            // The distributor frame the DT gives.
            assert_eq!(GICD_SIZE, 0x1_0000);
        }
    }

    #[test]
    fn gtdt_timer_ppis() {
        let t = build(2);
        let gtdt = get(&walk(&t), b"GTDT");
        assert_eq!(gtdt.len(), GTDT_LEN);
        assert_eq!(gtdt[8], 2);
        assert_eq!(u64_at(gtdt, 36), u64::MAX);
        assert_eq!(u64_at(gtdt, 80), u64::MAX);
        let intids: Vec<u32> = (0..4).map(|i| u32_at(gtdt, 48 + 8 * i)).collect();
        // Secure EL1, non-secure EL1, virtual, EL2: as the DT lists them.
        assert_eq!(intids, vec![29, 30, 27, 26]);
        for i in 0..4 {
            // Level-triggered, active high, always on.
            assert_eq!(u32_at(gtdt, 52 + 8 * i), GTDT_TIMER_ALWAYS_ON);
        }
        assert_eq!(u32_at(gtdt, 88), 0, "no platform timers");
    }

    #[test]
    fn spcr_describes_the_uart() {
        let t = build(1);
        let spcr = get(&walk(&t), b"SPCR");
        assert_eq!(spcr.len(), SPCR_LEN);
        assert_eq!(spcr[8], 2);
        assert_eq!(spcr[36], 0, "16550 compatible");
        assert_eq!(
            &spcr[40..44],
            &[0, 8, 0, 1],
            "system memory, 8-bit, byte access"
        );
        assert_eq!(u64_at(spcr, 44), SERIAL_BASE);
        assert_eq!(spcr[52], 1 << 3, "GIC interrupt");
        assert_eq!(u32_at(spcr, 54), 33);
        assert_eq!(spcr[58], 7, "115200 baud");
        assert_eq!(u16_at(spcr, 64), 0xffff);
        assert_eq!(u16_at(spcr, 66), 0xffff);
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn dsdt_has_cpus_and_uart() {
        for vcpus in [1u8, 8] {
            let t = build(vcpus);
            let dsdt = get(&walk(&t), b"DSDT");
            assert_eq!(dsdt[8], 2, "64-bit AML integers");
            let aml = &dsdt[36..];
            // ScopeOp, then \_SB_ after the package length.
            assert_eq!(aml[0], 0x10);
            assert_eq!(count(aml, b"\\_SB_"), 1);
            assert_eq!(count(aml, b"ACPI0007\0"), usize::from(vcpus));
            for id in 0..vcpus {
                assert_eq!(count(aml, format!("C{id:03X}").as_bytes()), 1);
            }
            assert_eq!(count(aml, b"COM0"), 1);
            // EisaId("PNP0501") as a DWord: 0x0105d041.
            assert_eq!(count(aml, &[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1);
            // Memory32Fixed(ReadWrite, 0x09000000, 0x1000).
            let mut mem = vec![0x86, 0x09, 0x00, 0x01];
            mem.extend_from_slice(&(SERIAL_BASE as u32).to_le_bytes());
            mem.extend_from_slice(&(SERIAL_SIZE as u32).to_le_bytes());
            assert_eq!(count(aml, &mem), 1);
            // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { 33 }.
            assert_eq!(count(aml, &[0x89, 0x06, 0x00, 0x03, 0x01, 33, 0, 0, 0]), 1);
        }
    }

    #[test]
    fn errors() {
        assert_eq!(
            create_acpi_tables(0, region()).unwrap_err(),
            AcpiError::Vcpus(0)
        );
        assert_eq!(
            create_acpi_tables(MAX_VCPUS + 1, region()).unwrap_err(),
            AcpiError::Vcpus(MAX_VCPUS + 1)
        );
        let small = Region {
            base: BASE,
            size: 256,
        };
        assert!(matches!(
            create_acpi_tables(1, small),
            Err(AcpiError::TooBig { room: 256, .. })
        ));
    }

    #[test]
    fn tables_follow_the_region() {
        let a = build(2);
        let other = create_acpi_tables(
            2,
            Region {
                base: BASE + 0x10_0000,
                size: ACPI_REGION_SIZE,
            },
        )
        .unwrap();
        assert_eq!(other.rsdp, BASE + 0x10_0000);
        assert_eq!(a.blob.len(), other.blob.len());
        assert_ne!(a.blob, other.blob, "addresses inside the tables moved");
    }
}
