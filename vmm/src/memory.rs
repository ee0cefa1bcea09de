// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest RAM (one anonymous mapping through vm-memory) and loading of the
//! kernel, initrd, device tree and (with `--boot acpi`) the EFI and ACPI
//! tables into it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{Layout, Region};

/// Guest memory type used throughout the VMM.
pub type GuestMem = GuestMemoryMmap<()>;

/// Errors creating or filling guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The anonymous mapping could not be created.
    #[error("allocating {size} bytes of guest RAM: {source}")]
    Create {
        /// Bytes requested.
        size: u64,
        /// Cause.
        source: vm_memory::mmap::FromRangesError,
    },
    /// A host address for guest RAM could not be obtained.
    #[error("guest RAM host address: {0}")]
    HostAddress(vm_memory::GuestMemoryError),
    /// `madvise()` on guest RAM failed.
    #[error("madvise(MADV_NOHUGEPAGE) on guest RAM: {0}")]
    Advise(std::io::Error),
    /// An input file could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Copying a file or blob into guest memory failed.
    #[error("loading {what} at {addr:#x}: {source}")]
    Load {
        /// What was loaded.
        what: &'static str,
        /// Guest physical address.
        addr: u64,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
    /// A blob larger than the space reserved for it.
    #[error("{what} is {size} bytes, larger than the {room} bytes reserved")]
    TooBig {
        /// What.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The room.
        room: u64,
    },
    /// The kernel loader failed.
    #[cfg(target_arch = "aarch64")]
    #[error("loading the kernel: {0}")]
    Kernel(linux_loader::loader::Error),
    /// The loader put the kernel somewhere else than the layout expects.
    #[cfg(target_arch = "aarch64")]
    #[error("kernel loaded at {actual:#x}, expected {expected:#x}")]
    KernelAddress {
        /// Where the layout placed it.
        expected: u64,
        /// Where the loader put it.
        actual: u64,
    },
}

/// Allocates guest RAM as one anonymous private mapping.
pub fn create(layout: &Layout) -> Result<GuestMem, MemoryError> {
    create_ram(layout.ram)
}

/// Allocates `ram` as one anonymous private mapping.
pub fn create_ram(ram: Region) -> Result<GuestMem, MemoryError> {
    let size = usize::try_from(ram.size).map_err(|_| MemoryError::TooBig {
        what: "guest RAM",
        size: ram.size,
        room: usize::MAX as u64,
    })?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(ram.base), size)]).map_err(|source| {
        MemoryError::Create {
            size: ram.size,
            source,
        }
    })
}

/// Backs guest RAM with base pages only (`MADV_NOHUGEPAGE`).
///
/// Under a memory cgroup limit the host must swap guest pages out one by
/// one; transparent huge pages would have to be split first, and under a
/// tight limit the cgroup runs out of memory before that happens.
pub fn no_huge_pages(mem: &GuestMem, layout: &Layout) -> Result<(), MemoryError> {
    let base = host_base(mem, layout)?;
    // SAFETY: `base` and the size describe exactly the guest RAM mapping,
    // which lives as long as `mem`; the advice does not change its contents.
    let ret =
        unsafe { libc::madvise(base.cast(), layout.ram.size as usize, libc::MADV_NOHUGEPAGE) };
    if ret != 0 {
        return Err(MemoryError::Advise(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Host virtual address of the start of guest RAM (the mapping is contiguous).
pub fn host_base(mem: &GuestMem, layout: &Layout) -> Result<*mut u8, MemoryError> {
    host_address(mem, layout.ram.base)
}

/// Host virtual address of guest physical address `gpa`.
pub fn host_address(mem: &GuestMem, gpa: u64) -> Result<*mut u8, MemoryError> {
    mem.get_host_address(GuestAddress(gpa))
        .map_err(MemoryError::HostAddress)
}

/// Copies the initrd file into `region`.
pub fn load_initrd(mem: &GuestMem, path: &Path, region: Region) -> Result<(), MemoryError> {
    let mut file = File::open(path).map_err(|source| MemoryError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let len = usize::try_from(region.size).map_err(|_| MemoryError::TooBig {
        what: "initrd",
        size: region.size,
        room: usize::MAX as u64,
    })?;
    mem.read_exact_volatile_from(GuestAddress(region.base), &mut file, len)
        .map_err(|source| MemoryError::Load {
            what: "initrd",
            addr: region.base,
            source,
        })
}

/// Bytes built by the VMM for a place in guest RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// What they are, for error messages.
    pub what: &'static str,
    /// Where they go; they may be shorter.
    pub region: Region,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Copies `blob.bytes` to the start of `blob.region`.
pub fn load_blob(mem: &GuestMem, blob: &Blob) -> Result<(), MemoryError> {
    let Blob {
        what,
        region,
        ref bytes,
    } = *blob;
    if bytes.len() as u64 > region.size {
        return Err(MemoryError::TooBig {
            what,
            size: bytes.len() as u64,
            room: region.size,
        });
    }
    mem.write_slice(bytes, GuestAddress(region.base))
        .map_err(|source| MemoryError::Load {
            what,
            addr: region.base,
            source,
        })
}

/// Loads the arm64 Image with linux-loader at `layout.kernel_base +
/// text_offset` and checks that it landed where the layout says.
#[cfg(target_arch = "aarch64")]
pub fn load_kernel(mem: &GuestMem, path: &Path, layout: &Layout) -> Result<(), MemoryError> {
    use linux_loader::loader::pe::PE;
    use linux_loader::loader::KernelLoader;

    let mut file = File::open(path).map_err(|source| MemoryError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let result = PE::load(mem, Some(GuestAddress(layout.kernel_base)), &mut file, None)
        .map_err(MemoryError::Kernel)?;
    if result.kernel_load.0 != layout.kernel.base {
        return Err(MemoryError::KernelAddress {
            expected: layout.kernel.base,
            actual: result.kernel_load.0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::KernelInfo;
    use crate::layout::{self, MIB};

    fn layout(initrd: Option<u64>) -> Layout {
        let k = KernelInfo {
            text_offset: 0,
            footprint: 8 * MIB,
            file_size: 8 * MIB,
            page_size: None,
        };
        layout::compute(64 * MIB, &k, initrd).unwrap()
    }

    #[test]
    fn ram_covers_layout() {
        let l = layout(None);
        let mem = create(&l).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert!(mem.address_in_range(GuestAddress(l.ram.base)));
        assert!(mem.address_in_range(GuestAddress(l.ram.end() - 1)));
        assert!(!mem.address_in_range(GuestAddress(l.ram.end())));
        assert!(!mem.address_in_range(GuestAddress(l.ram.base - 1)));
        let base = host_base(&mem, &l).unwrap();
        assert_eq!(base as u64 % 4096, 0);
    }

    #[test]
    fn initrd_and_dtb_land_where_the_layout_says() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let path = std::env::temp_dir().join(format!("apf-vmm-mem-{}.cpio", std::process::id()));
        std::fs::write(&path, &data).unwrap();

        let l = layout(Some(data.len() as u64));
        let mem = create(&l).unwrap();
        let initrd = l.initrd.unwrap();
        load_initrd(&mem, &path, initrd).unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(initrd.base))
            .unwrap();
        assert_eq!(back, data);

        let dtb = [0xd0u8, 0x0d, 0xfe, 0xed, 1, 2, 3];
        let blob = Blob {
            what: "device tree",
            region: l.dtb,
            bytes: dtb.to_vec(),
        };
        load_blob(&mem, &blob).unwrap();
        let mut back = [0u8; 7];
        mem.read_slice(&mut back, GuestAddress(l.dtb.base)).unwrap();
        assert_eq!(back, dtb);

        // A file shorter than the region is an error, not silent zeros.
        let longer = Region {
            base: initrd.base,
            size: initrd.size + 1,
        };
        assert!(matches!(
            load_initrd(&mem, &path, longer),
            Err(MemoryError::Load { what: "initrd", .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            load_initrd(&mem, &path, initrd),
            Err(MemoryError::Open { .. })
        ));
    }

    #[test]
    fn blobs_land_where_the_layout_says() {
        let l = layout(None);
        let mem = create(&l).unwrap();
        let fw = layout::firmware_layout(&l);
        let blobs = [
            Blob {
                what: "device tree",
                region: fw.dtb,
                bytes: vec![0xd0, 0x0d, 0xfe, 0xed],
            },
            Blob {
                what: "EFI tables",
                region: fw.efi,
                bytes: b"IBI SYST".to_vec(),
            },
            Blob {
                what: "ACPI tables",
                region: fw.acpi,
                bytes: vec![0x5a; 4096],
            },
        ];
        for b in &blobs {
            load_blob(&mem, b).unwrap();
        }
        for b in &blobs {
            let mut back = vec![0u8; b.bytes.len()];
            mem.read_slice(&mut back, GuestAddress(b.region.base))
                .unwrap();
            assert_eq!(back, b.bytes, "{}", b.what);
        }
        // Outside guest RAM.
        let outside = Blob {
            what: "ACPI tables",
            region: Region {
                base: l.ram.end(),
                size: 4096,
            },
            bytes: vec![1],
        };
        assert!(matches!(
            load_blob(&mem, &outside),
            Err(MemoryError::Load {
                what: "ACPI tables",
                ..
            })
        ));
    }

    #[test]
    fn dtb_larger_than_its_block_rejected() {
        let l = layout(None);
        let mem = create(&l).unwrap();
        let small = Region {
            base: l.dtb.base,
            size: 4,
        };
        assert!(matches!(
            load_blob(
                &mem,
                &Blob {
                    what: "device tree",
                    region: small,
                    bytes: vec![0; 5],
                }
            ),
            Err(MemoryError::TooBig { .. })
        ));
    }
}
