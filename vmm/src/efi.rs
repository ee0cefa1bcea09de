// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The EFI structures that `--boot acpi` leaves in guest RAM in place of
//! UEFI firmware: a system table whose configuration table points at the
//! ACPI RSDP, and an EFI memory map. The kernel finds both through the
//! stub device tree's `/chosen` (see `fdt::UefiParams`), as after the EFI
//! stub, and needs them to use ACPI on arm64: the RSDP comes from the
//! configuration table (`acpi_os_get_root_pointer()`), and
//! `acpi_os_ioremap()` refuses to map anything without the memory map.
//!
//! There are no boot or runtime services (`runtime` is 0); an EFI
//! properties table says so too, and the kernel must run with
//! `efi=noruntime` (`args.rs` adds it).
//!
//! The layouts are those of `r_efi`'s types. They hold raw pointers, so
//! their fields are written into a byte buffer at their `offset_of!`
//! offsets, little-endian, rather than through a `ByteValued` view.

use std::mem::{offset_of, size_of};

use r_efi::efi;
use thiserror::Error;

use crate::fdt::UefiParams;
use crate::layout::Region;

/// EFI page size: memory map entries count 4 KiB pages.
pub const EFI_PAGE_SIZE: u64 = 4096;
/// Firmware vendor string of the system table.
pub const FIRMWARE_VENDOR: &str = "apf-vmm";
/// Firmware revision of the system table.
pub const FIRMWARE_REVISION: u32 = 1;
/// Attributes of every memory map entry: normal write-back memory.
pub const MEMORY_ATTRIBUTES: u64 = efi::MEMORY_WB;
/// Type of the region with the EFI structures: the kernel keeps it
/// (`is_usable_memory()` is false for it: mapped `nomap`, never allocated).
pub const EFI_REGION_TYPE: efi::MemoryType = efi::RUNTIME_SERVICES_DATA;
/// Type of the region with the ACPI tables: the kernel reserves it and
/// maps the tables from its linear map (`reserve_regions()`,
/// `acpi_os_ioremap()`).
pub const ACPI_REGION_TYPE: efi::MemoryType = efi::ACPI_RECLAIM_MEMORY;

const SYSTAB_SIZE: usize = size_of::<efi::SystemTable>();
const CONFIG_ENTRY_SIZE: usize = size_of::<efi::ConfigurationTable>();
const RT_PROPERTIES_SIZE: usize = size_of::<efi::RtPropertiesTable>();
/// Size of one memory map entry (the stride given to the kernel).
pub const DESC_SIZE: usize = size_of::<efi::MemoryDescriptor>();

// The 64-bit UEFI layouts the guest kernel expects (include/linux/efi.h).
const _: () = assert!(SYSTAB_SIZE == 120);
const _: () = assert!(CONFIG_ENTRY_SIZE == 24);
const _: () = assert!(RT_PROPERTIES_SIZE == 8);
const _: () = assert!(DESC_SIZE == 40);

/// The structures, laid out for one place in guest RAM.
#[derive(Clone, Debug)]
pub struct EfiTables {
    /// The bytes to copy to the start of the region.
    pub blob: Vec<u8>,
    /// What the stub device tree tells the kernel about them.
    pub params: UefiParams,
}

/// Where things are, for [`create_efi_tables`].
#[derive(Clone, Copy, Debug)]
pub struct EfiConfig {
    /// All of guest RAM, described by the memory map.
    pub ram: Region,
    /// The region the EFI structures are copied to.
    pub efi: Region,
    /// The region holding the ACPI tables.
    pub acpi: Region,
    /// Guest physical address of the ACPI RSDP.
    pub rsdp: u64,
}

/// Errors while building the EFI structures.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EfiError {
    /// A reserved region is not page aligned, not inside RAM, or overlaps another.
    #[error("EFI memory map: region {base:#x}+{size:#x} is unaligned, outside RAM or overlapping")]
    BadRegion {
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// The structures do not fit the region reserved for them.
    #[error("EFI tables are {size} bytes, larger than the {room} bytes reserved")]
    TooBig {
        /// Their size.
        size: usize,
        /// The room.
        room: u64,
    },
}

/// The EFI memory map: `ram` as conventional memory except for `typed`
/// (regions with their memory type), in address order, every entry
/// write-back.
pub fn memory_map(
    ram: Region,
    typed: &[(Region, efi::MemoryType)],
) -> Result<Vec<efi::MemoryDescriptor>, EfiError> {
    let mut typed = typed.to_vec();
    typed.sort_by_key(|(r, _)| r.base);

    let desc = |base: u64, size: u64, ty: efi::MemoryType| efi::MemoryDescriptor {
        r#type: ty,
        physical_start: base,
        virtual_start: 0,
        number_of_pages: size / EFI_PAGE_SIZE,
        attribute: MEMORY_ATTRIBUTES,
    };
    let mut map = Vec::with_capacity(2 * typed.len() + 1);
    let mut next = ram.base;
    for (r, ty) in typed {
        let bad = EfiError::BadRegion {
            base: r.base,
            size: r.size,
        };
        if r.base % EFI_PAGE_SIZE != 0 || r.size % EFI_PAGE_SIZE != 0 || r.size == 0 {
            return Err(bad);
        }
        // In RAM and after the previous region.
        if r.base < next || r.end() > ram.end() {
            return Err(bad);
        }
        if r.base > next {
            map.push(desc(next, r.base - next, efi::CONVENTIONAL_MEMORY));
        }
        map.push(desc(r.base, r.size, ty));
        next = r.end();
    }
    if next < ram.end() {
        map.push(desc(next, ram.end() - next, efi::CONVENTIONAL_MEMORY));
    }
    Ok(map)
}

/// CRC-32 (IEEE 802.3, as UEFI table headers use).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// Builds the system table, its configuration table (ACPI 2.0 → RSDP,
/// EFI properties → no runtime services), the firmware vendor string and
/// the memory map, to be copied to `cfg.efi.base`.
pub fn create_efi_tables(cfg: &EfiConfig) -> Result<EfiTables, EfiError> {
    let map = memory_map(
        cfg.ram,
        &[(cfg.efi, EFI_REGION_TYPE), (cfg.acpi, ACPI_REGION_TYPE)],
    )?;

    // Layout: system table, configuration table, properties table, vendor
    // string, memory map; each 8-byte aligned.
    let config_off = SYSTAB_SIZE.next_multiple_of(8);
    let config_entries = 2;
    let rt_props_off = (config_off + config_entries * CONFIG_ENTRY_SIZE).next_multiple_of(8);
    let vendor_off = (rt_props_off + RT_PROPERTIES_SIZE).next_multiple_of(8);
    let vendor: Vec<u8> = FIRMWARE_VENDOR
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    let mmap_off = (vendor_off + vendor.len()).next_multiple_of(8);
    let mmap_size = map.len() * DESC_SIZE;
    let len = mmap_off + mmap_size;
    if len as u64 > cfg.efi.size {
        return Err(EfiError::TooBig {
            size: len,
            room: cfg.efi.size,
        });
    }
    let addr = |off: usize| cfg.efi.base + off as u64;
    let mut b = vec![0u8; len];

    // System table.
    type St = efi::SystemTable;
    let hdr = offset_of!(St, hdr);
    type Th = efi::TableHeader;
    put(
        &mut b,
        hdr + offset_of!(Th, signature),
        &efi::SYSTEM_TABLE_SIGNATURE.to_le_bytes(),
    );
    put(
        &mut b,
        hdr + offset_of!(Th, revision),
        &efi::SYSTEM_TABLE_REVISION.to_le_bytes(),
    );
    put(
        &mut b,
        hdr + offset_of!(Th, header_size),
        &(SYSTAB_SIZE as u32).to_le_bytes(),
    );
    put(
        &mut b,
        offset_of!(St, firmware_vendor),
        &addr(vendor_off).to_le_bytes(),
    );
    put(
        &mut b,
        offset_of!(St, firmware_revision),
        &FIRMWARE_REVISION.to_le_bytes(),
    );
    // Consoles, runtime and boot services: none (0).
    put(
        &mut b,
        offset_of!(St, number_of_table_entries),
        &(config_entries as u64).to_le_bytes(),
    );
    put(
        &mut b,
        offset_of!(St, configuration_table),
        &addr(config_off).to_le_bytes(),
    );
    let crc = crc32(&b[..SYSTAB_SIZE]);
    put(&mut b, hdr + offset_of!(Th, crc32), &crc.to_le_bytes());

    // Configuration table.
    type Ct = efi::ConfigurationTable;
    let entries = [
        (efi::ACPI_20_TABLE_GUID, cfg.rsdp),
        (efi::RT_PROPERTIES_TABLE_GUID, addr(rt_props_off)),
    ];
    for (i, (guid, table)) in entries.iter().enumerate() {
        let e = config_off + i * CONFIG_ENTRY_SIZE;
        put(&mut b, e + offset_of!(Ct, vendor_guid), guid.as_bytes());
        put(
            &mut b,
            e + offset_of!(Ct, vendor_table),
            &table.to_le_bytes(),
        );
    }

    // EFI properties table: no runtime service is supported.
    type Rp = efi::RtPropertiesTable;
    put(
        &mut b,
        rt_props_off + offset_of!(Rp, version),
        &efi::RT_PROPERTIES_TABLE_VERSION.to_le_bytes(),
    );
    put(
        &mut b,
        rt_props_off + offset_of!(Rp, length),
        &(RT_PROPERTIES_SIZE as u16).to_le_bytes(),
    );
    put(
        &mut b,
        rt_props_off + offset_of!(Rp, runtime_services_supported),
        &0u32.to_le_bytes(),
    );

    put(&mut b, vendor_off, &vendor);

    // Memory map.
    type Md = efi::MemoryDescriptor;
    for (i, d) in map.iter().enumerate() {
        let e = mmap_off + i * DESC_SIZE;
        put(&mut b, e + offset_of!(Md, r#type), &d.r#type.to_le_bytes());
        put(
            &mut b,
            e + offset_of!(Md, physical_start),
            &d.physical_start.to_le_bytes(),
        );
        put(
            &mut b,
            e + offset_of!(Md, virtual_start),
            &d.virtual_start.to_le_bytes(),
        );
        put(
            &mut b,
            e + offset_of!(Md, number_of_pages),
            &d.number_of_pages.to_le_bytes(),
        );
        put(
            &mut b,
            e + offset_of!(Md, attribute),
            &d.attribute.to_le_bytes(),
        );
    }

    Ok(EfiTables {
        blob: b,
        params: UefiParams {
            system_table: cfg.efi.base,
            mmap_start: addr(mmap_off),
            // Both well below the 64 KiB region size.
            mmap_size: mmap_size as u32,
            mmap_desc_size: DESC_SIZE as u32,
            mmap_desc_ver: efi::MEMORY_DESCRIPTOR_VERSION,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{
        compute, firmware_layout, ACPI_REGION_SIZE, EFI_REGION_SIZE, MIB, RAM_START,
    };
    use crate::testutil::{u16_at, u32_at, u64_at};

    /// A realistic configuration: the regions `firmware_layout` gives.
    fn config(mem_mib: u64) -> EfiConfig {
        let k = crate::image::KernelInfo {
            text_offset: 0,
            footprint: 20 * MIB,
            file_size: 20 * MIB,
            page_size: Some(4096),
        };
        let l = compute(mem_mib * MIB, &k, Some(MIB)).unwrap();
        let fw = firmware_layout(&l);
        EfiConfig {
            ram: l.ram,
            efi: fw.efi,
            acpi: fw.acpi,
            rsdp: fw.acpi.base,
        }
    }

    /// Reads the memory map back from the blob as the kernel would.
    fn read_map(cfg: &EfiConfig, t: &EfiTables) -> Vec<(u32, u64, u64, u64)> {
        let p = t.params;
        assert_eq!(p.mmap_desc_size as usize, DESC_SIZE);
        assert_eq!(p.mmap_desc_ver, 1);
        assert_eq!(p.mmap_size % p.mmap_desc_size, 0);
        let off = usize::try_from(p.mmap_start - cfg.efi.base).unwrap();
        (0..(p.mmap_size / p.mmap_desc_size) as usize)
            .map(|i| {
                let e = off + i * DESC_SIZE;
                // Linux's efi_memory_desc_t: type, pad, phys, virt, pages, attribute.
                (
                    u32_at(&t.blob, e),
                    u64_at(&t.blob, e + 8),
                    u64_at(&t.blob, e + 24),
                    u64_at(&t.blob, e + 32),
                )
            })
            .collect()
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn system_table_header() {
        let cfg = config(512);
        let t = create_efi_tables(&cfg).unwrap();
        let b = &t.blob;
        assert_eq!(t.params.system_table, cfg.efi.base);
        // "IBI SYST", the signature efi_systab_check_header() wants.
        assert_eq!(&b[..8], b"IBI SYST");
        assert_eq!(u64_at(b, 0), 0x5453_5953_2049_4249);
        assert_eq!(u32_at(b, 8), (2 << 16) | 70, "revision 2.70");
        assert_eq!(u32_at(b, 12), 120, "header size");
        // The CRC is over the table with the CRC field zeroed.
        let mut copy = b[..120].to_vec();
        copy[16..20].fill(0);
        assert_eq!(u32_at(b, 16), crc32(&copy));
        // No runtime or boot services.
        assert_eq!(u64_at(b, 88), 0, "runtime services");
        assert_eq!(u64_at(b, 96), 0, "boot services");
        // The firmware vendor: a NUL-terminated UTF-16 string, with the
        // 200 bytes the kernel maps inside the region.
        let vendor = usize::try_from(u64_at(b, 24) - cfg.efi.base).unwrap();
        let chars: Vec<u16> = (0..8).map(|i| u16_at(b, vendor + 2 * i)).collect();
        let text: Vec<u16> = "apf-vmm".encode_utf16().chain([0]).collect();
        assert_eq!(chars, text);
        assert!(vendor as u64 + 200 <= EFI_REGION_SIZE);
    }

    #[test]
    fn configuration_table_points_at_rsdp() {
        let cfg = EfiConfig {
            rsdp: config(512).acpi.base + 0x40,
            ..config(512)
        };
        let t = create_efi_tables(&cfg).unwrap();
        let b = &t.blob;
        let n = u64_at(b, 104) as usize;
        assert_eq!(n, 2);
        let tables = usize::try_from(u64_at(b, 112) - cfg.efi.base).unwrap();
        // ACPI_20_TABLE_GUID as the kernel spells it: 8868e871-e4f1-11d3-bc22-0080c73c8881.
        let acpi20 = [
            0x71, 0xe8, 0x68, 0x88, 0xf1, 0xe4, 0xd3, 0x11, 0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c,
            0x88, 0x81,
        ];
        // EFI_RT_PROPERTIES_TABLE_GUID: eb66918a-7eef-402a-842e-931d21c38ae9.
        let rtprop = [
            0x8a, 0x91, 0x66, 0xeb, 0xef, 0x7e, 0x2a, 0x40, 0x84, 0x2e, 0x93, 0x1d, 0x21, 0xc3,
            0x8a, 0xe9,
        ];
        let entry = |i: usize| {
            let e = tables + 24 * i;
            (&b[e..e + 16], u64_at(b, e + 16))
        };
        assert_eq!(entry(0), (&acpi20[..], cfg.rsdp));
        let (guid, props) = entry(1);
        assert_eq!(guid, &rtprop[..]);
        let props = usize::try_from(props - cfg.efi.base).unwrap();
        assert_eq!(u16_at(b, props), 1, "version");
        assert_eq!(u16_at(b, props + 2), 8, "length");
        assert_eq!(u32_at(b, props + 4), 0, "no runtime services");
    }

    #[test]
    fn memory_map_covers_ram_once() {
        for mem in [64, 65, 512, 4096] {
            let cfg = config(mem);
            let t = create_efi_tables(&cfg).unwrap();
            let map = read_map(&cfg, &t);
            // Contiguous, in order, from the start of RAM to its end.
            let mut next = cfg.ram.base;
            for &(_, base, pages, attr) in &map {
                assert_eq!(base, next, "gap or overlap at {base:#x}");
                assert!(pages > 0);
                assert_eq!(attr, efi::MEMORY_WB);
                next = base + pages * 4096;
            }
            assert_eq!(next, cfg.ram.end());
            let typed: Vec<_> = map
                .iter()
                .filter(|(ty, ..)| *ty != efi::CONVENTIONAL_MEMORY)
                .map(|&(ty, base, pages, _)| (ty, base, pages * 4096))
                .collect();
            assert_eq!(
                typed,
                vec![
                    (efi::RUNTIME_SERVICES_DATA, cfg.efi.base, EFI_REGION_SIZE),
                    (efi::ACPI_RECLAIM_MEMORY, cfg.acpi.base, ACPI_REGION_SIZE),
                ]
            );
            // The system table and the memory map lie in the kept region.
            let p = t.params;
            assert!(p.system_table >= cfg.efi.base);
            assert!(p.mmap_start + u64::from(p.mmap_size) <= cfg.efi.end());
        }
    }

    #[test]
    fn memory_map_edges() {
        let ram = Region {
            base: RAM_START,
            size: 64 * MIB,
        };
        let at = |off: u64, size: u64| Region {
            base: RAM_START + off,
            size,
        };
        // Only RAM.
        let m = memory_map(ram, &[]).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].number_of_pages, 64 * MIB / 4096);
        // Regions at both ends, given out of order: no empty entries.
        let m = memory_map(
            ram,
            &[
                (at(64 * MIB - 4096, 4096), efi::ACPI_RECLAIM_MEMORY),
                (at(0, 8192), efi::RUNTIME_SERVICES_DATA),
            ],
        )
        .unwrap();
        let types: Vec<_> = m.iter().map(|d| d.r#type).collect();
        assert_eq!(
            types,
            vec![
                efi::RUNTIME_SERVICES_DATA,
                efi::CONVENTIONAL_MEMORY,
                efi::ACPI_RECLAIM_MEMORY
            ]
        );
        // Unaligned, empty, outside RAM, overlapping.
        for bad in [
            vec![(at(1, 4096), efi::ACPI_RECLAIM_MEMORY)],
            vec![(at(0, 100), efi::ACPI_RECLAIM_MEMORY)],
            vec![(at(0, 0), efi::ACPI_RECLAIM_MEMORY)],
            vec![(at(64 * MIB, 4096), efi::ACPI_RECLAIM_MEMORY)],
            vec![
                (at(0, 8192), efi::ACPI_RECLAIM_MEMORY),
                (at(4096, 4096), efi::RUNTIME_SERVICES_DATA),
            ],
        ] {
            assert!(
                matches!(memory_map(ram, &bad), Err(EfiError::BadRegion { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn too_small_region() {
        let cfg = EfiConfig {
            efi: Region {
                base: config(512).efi.base,
                size: 4096,
            },
            ..config(512)
        };
        // Still fits in a page.
        assert!(create_efi_tables(&cfg).is_ok());
        let mut tiny = cfg;
        tiny.efi.size = 128;
        // Not page aligned: the memory map refuses it first.
        assert!(matches!(
            create_efi_tables(&tiny),
            Err(EfiError::BadRegion { .. })
        ));
    }
}
