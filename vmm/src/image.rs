// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Checks of the input files: the arm64 Image header, the initrd and the
//! userfaultfd source image.
//!
//! The header is parsed here, independently of linux-loader, so that an
//! unusable kernel is reported before any KVM resource is created, and so
//! that the memory layout can reserve the kernel's full `image_size` (which
//! includes its BSS, unlike the file size).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Size of the arm64 Image header (Documentation/arch/arm64/booting.rst).
pub const HEADER_SIZE: usize = 64;
/// "ARM\x64", little-endian, at offset 56.
pub const ARM64_IMAGE_MAGIC: u32 = 0x644d_5241;
/// `text_offset` assumed by kernels older than 3.17, whose `image_size` is 0.
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

const FLAG_BIG_ENDIAN: u64 = 1 << 0;
const FLAG_PAGE_SIZE_SHIFT: u64 = 1;
const FLAG_PAGE_SIZE_MASK: u64 = 0b11;

/// What the VMM needs to know about the kernel Image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// Offset of the image from a 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies once loaded: the larger of the header's
    /// `image_size` (which includes BSS) and the file size.
    pub footprint: u64,
    /// Size of the file, which is what the loader copies.
    pub file_size: u64,
    /// Kernel page size from the header flags, if the header states one.
    pub page_size: Option<u32>,
}

/// Problems found in the 64-byte header itself.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 64 bytes.
    #[error("file is {0} bytes, shorter than the 64-byte arm64 Image header")]
    TooShort(u64),
    /// Magic number missing (an ELF vmlinux, a compressed Image, ...).
    #[error(
        "no arm64 Image magic at offset 56 (expected an uncompressed arm64 Image, not vmlinux or Image.gz)"
    )]
    BadMagic,
    /// A big-endian kernel cannot run in this little-endian VMM's guest setup.
    #[error("big-endian kernel images are not supported")]
    BigEndian,
    /// `text_offset` that cannot be honoured.
    #[error("text_offset {0:#x} is not 4 KiB aligned or not below 2 MiB")]
    BadTextOffset(u64),
}

/// Problems with an input file.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file could not be opened or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// Which input ("kernel", "initrd", ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Not a regular file.
    #[error("{what} {path}: not a regular file")]
    NotRegular {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// An empty file where content is required.
    #[error("{what} {path}: file is empty")]
    Empty {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The kernel header is unusable.
    #[error("kernel {path}: {source}")]
    Header {
        /// The kernel path.
        path: PathBuf,
        /// What is wrong with its header.
        source: HeaderError,
    },
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}

/// Parses an arm64 Image header. `file_size` is the size of the whole file.
pub fn parse_header(header: &[u8], file_size: u64) -> Result<KernelInfo, HeaderError> {
    if header.len() < HEADER_SIZE || file_size < HEADER_SIZE as u64 {
        return Err(HeaderError::TooShort(file_size.min(header.len() as u64)));
    }
    if le_u32(header, 56) != ARM64_IMAGE_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let image_size = le_u64(header, 16);
    let flags = le_u64(header, 24);
    // Before Linux 3.17, image_size and flags were zero and text_offset was
    // unreliable; booting.rst says to assume 0x80000 then.
    let (text_offset, flags) = if image_size == 0 {
        (LEGACY_TEXT_OFFSET, 0)
    } else {
        (le_u64(header, 8), flags)
    };
    if flags & FLAG_BIG_ENDIAN != 0 {
        return Err(HeaderError::BigEndian);
    }
    if text_offset % 4096 != 0 || text_offset >= 2 << 20 {
        return Err(HeaderError::BadTextOffset(text_offset));
    }
    let page_size = match (flags >> FLAG_PAGE_SIZE_SHIFT) & FLAG_PAGE_SIZE_MASK {
        1 => Some(4096),
        2 => Some(16384),
        3 => Some(65536),
        _ => None,
    };
    Ok(KernelInfo {
        text_offset,
        footprint: image_size.max(file_size),
        file_size,
        page_size,
    })
}

fn open_regular(what: &'static str, path: &Path) -> Result<(File, u64), ImageError> {
    let io_err = |source| ImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(ImageError::NotRegular {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok((file, meta.len()))
}

/// Opens the kernel and checks its header.
pub fn inspect_kernel(path: &Path) -> Result<KernelInfo, ImageError> {
    let (file, size) = open_regular("kernel", path)?;
    let mut header = Vec::with_capacity(HEADER_SIZE);
    file.take(HEADER_SIZE as u64)
        .read_to_end(&mut header)
        .map_err(|source| ImageError::Io {
            what: "kernel",
            path: path.to_path_buf(),
            source,
        })?;
    parse_header(&header, size).map_err(|source| ImageError::Header {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that an initrd is a readable, non-empty regular file; returns its size.
pub fn inspect_initrd(path: &Path) -> Result<u64, ImageError> {
    let (_, size) = open_regular("initrd", path)?;
    if size == 0 {
        return Err(ImageError::Empty {
            what: "initrd",
            path: path.to_path_buf(),
        });
    }
    Ok(size)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a header with the given fields.
    pub(crate) fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
        h
    }

    #[test]
    fn modern_header() {
        // 4K pages (flags bits 1-2 = 1), image_size larger than the file.
        let h = header(0, 40 << 20, 0b010);
        let info = parse_header(&h, 30 << 20).unwrap();
        assert_eq!(info.text_offset, 0);
        assert_eq!(info.footprint, 40 << 20);
        assert_eq!(info.file_size, 30 << 20);
        assert_eq!(info.page_size, Some(4096));
    }

    #[test]
    fn footprint_never_below_file_size() {
        let h = header(0, 1 << 20, 0);
        assert_eq!(parse_header(&h, 3 << 20).unwrap().footprint, 3 << 20);
    }

    #[test]
    fn page_size_flags() {
        assert_eq!(
            parse_header(&header(0, 1, 0b100), 64).unwrap().page_size,
            Some(16384)
        );
        assert_eq!(
            parse_header(&header(0, 1, 0b110), 64).unwrap().page_size,
            Some(65536)
        );
        assert_eq!(parse_header(&header(0, 1, 0), 64).unwrap().page_size, None);
    }

    #[test]
    fn legacy_header_uses_0x80000() {
        // image_size 0: text_offset and flags are ignored.
        let h = header(0x1234_5678, 0, FLAG_BIG_ENDIAN);
        let info = parse_header(&h, 8 << 20).unwrap();
        assert_eq!(info.text_offset, LEGACY_TEXT_OFFSET);
        assert_eq!(info.footprint, 8 << 20);
    }

    #[test]
    fn text_offset_0x80000_accepted() {
        let info = parse_header(&header(0x8_0000, 16 << 20, 0), 10 << 20).unwrap();
        assert_eq!(info.text_offset, 0x8_0000);
    }

    #[test]
    fn bad_magic() {
        let mut h = header(0, 1 << 20, 0);
        h[56] = b'X';
        assert_eq!(parse_header(&h, 1 << 20), Err(HeaderError::BadMagic));
        // An ELF file starts with \x7fELF and has no magic at 56.
        let mut elf = vec![0u8; 128];
        elf[..4].copy_from_slice(b"\x7fELF");
        assert_eq!(parse_header(&elf, 128), Err(HeaderError::BadMagic));
    }

    #[test]
    fn too_short() {
        assert_eq!(parse_header(&[0u8; 10], 10), Err(HeaderError::TooShort(10)));
    }

    #[test]
    fn big_endian_rejected() {
        assert_eq!(
            parse_header(&header(0, 1 << 20, FLAG_BIG_ENDIAN), 1 << 20),
            Err(HeaderError::BigEndian)
        );
    }

    #[test]
    fn bad_text_offset() {
        assert_eq!(
            parse_header(&header(0x100, 1 << 20, 0), 1 << 20),
            Err(HeaderError::BadTextOffset(0x100))
        );
        assert_eq!(
            parse_header(&header(2 << 20, 1 << 20, 0), 1 << 20),
            Err(HeaderError::BadTextOffset(2 << 20))
        );
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("apf-vmm-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn inspect_files() {
        let dir = temp_path("inspect");
        std::fs::create_dir_all(&dir).unwrap();

        let kernel = dir.join("Image");
        let mut data = header(0, 8192, 0b010);
        data.resize(4096, 0);
        std::fs::write(&kernel, &data).unwrap();
        let info = inspect_kernel(&kernel).unwrap();
        assert_eq!(info.file_size, 4096);
        assert_eq!(info.footprint, 8192);

        let not_kernel = dir.join("vmlinux");
        let mut elf = vec![0u8; 256];
        elf[..4].copy_from_slice(b"\x7fELF");
        std::fs::write(&not_kernel, &elf).unwrap();
        assert!(matches!(
            inspect_kernel(&not_kernel),
            Err(ImageError::Header {
                source: HeaderError::BadMagic,
                ..
            })
        ));

        let short = dir.join("short");
        std::fs::write(&short, &data[..63]).unwrap();
        assert!(matches!(
            inspect_kernel(&short),
            Err(ImageError::Header {
                source: HeaderError::TooShort(63),
                ..
            })
        ));

        assert!(matches!(
            inspect_kernel(&dir.join("missing")),
            Err(ImageError::Io { what: "kernel", .. })
        ));
        assert!(matches!(
            inspect_kernel(&dir),
            Err(ImageError::NotRegular { what: "kernel", .. })
        ));

        let empty = dir.join("empty.cpio");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            inspect_initrd(&empty),
            Err(ImageError::Empty { .. })
        ));
        assert_eq!(inspect_initrd(&kernel).unwrap(), 4096);

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
