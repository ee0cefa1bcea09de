// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Swap on a block device for the cgroup memory mode, in the emulated
//! host, which has no mkswap: the driver writes the swap header itself.
//!
//! The header is Linux's `union swap_header` (`include/linux/swap.h`) in
//! its first page: `info` at byte 1024 (version 1, last page, no bad
//! pages, a UUID and an empty label) and the magic `SWAPSPACE2` in the last
//! ten bytes of the page.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::FileError;

/// The swap signature.
const SWAP_MAGIC: &[u8; 10] = b"SWAPSPACE2";
/// Offset of `swap_header.info` (after `bootbits[1024]`).
const INFO_OFFSET: usize = 1024;
/// Smallest swap area the kernel accepts, in pages (header + 9).
const MIN_SWAP_PAGES: u64 = 10;

/// Swap set-up errors.
#[derive(Debug, Error)]
pub enum SwapError {
    /// The area is too small or does not fit the header format.
    #[error("a swap area of {bytes} bytes with {page_size} byte pages is not usable")]
    BadSize {
        /// Size in bytes.
        bytes: u64,
        /// Page size.
        page_size: u64,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// swapon(2) failed.
    #[error("swapon({path}): {source}")]
    Swapon {
        /// The device.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn cstring(path: &Path) -> Result<CString, SwapError> {
    let c = CString::new(path.as_os_str().as_bytes());
    Ok(c.map_err(|_| FileError::at(path)(io::ErrorKind::InvalidInput.into()))?)
}

/// The first page of a version 1 swap area of `bytes` bytes.
pub fn swap_header(bytes: u64, page_size: u64, uuid: [u8; 16]) -> Result<Vec<u8>, SwapError> {
    let bad = || SwapError::BadSize { bytes, page_size };
    let ps = usize::try_from(page_size).map_err(|_| bad())?;
    if ps < 4096 || !ps.is_power_of_two() {
        return Err(bad());
    }
    let pages = bytes / page_size;
    if pages < MIN_SWAP_PAGES {
        return Err(bad());
    }
    let last_page = u32::try_from(pages - 1).map_err(|_| bad())?;

    let mut h = vec![0u8; ps];
    let info = &mut h[INFO_OFFSET..];
    info[0..4].copy_from_slice(&1u32.to_ne_bytes()); // version
    info[4..8].copy_from_slice(&last_page.to_ne_bytes()); // last_page
    info[8..12].copy_from_slice(&0u32.to_ne_bytes()); // nr_badpages
    info[12..28].copy_from_slice(&uuid); // sws_uuid; sws_volume stays empty
    h[ps - SWAP_MAGIC.len()..].copy_from_slice(SWAP_MAGIC);
    Ok(h)
}

/// A UUID (version 4 layout) from the clock and the pid; it only has to
/// differ between runs.
pub fn make_uuid() -> [u8; 16] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut u = (now ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Host page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory safety requirements.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(ps).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// Writes a swap header to `device` and swaps on it.
fn swap_on(device: &Path, bytes: u64) -> Result<(), SwapError> {
    let header = swap_header(bytes, page_size(), make_uuid())?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(FileError::at(device))?;
    f.write_all(&header).map_err(FileError::at(device))?;
    f.sync_all().map_err(FileError::at(device))?;
    drop(f);
    let c = cstring(device)?;
    // SAFETY: `c` is NUL-terminated; no flags.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        return Err(SwapError::Swapon {
            path: device.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A whole block device in use as swap; swapped off on drop.
///
/// Unlike zram, a disk is not a synchronous swap device: a swap-in waits
/// for I/O, so KVM's non-blocking fault-in fails and APF can step in.
pub struct DiskSwap {
    device: PathBuf,
}

impl DiskSwap {
    /// Swaps on block device `name` (e.g. `vda`), all of it. `dev` and
    /// `sys_block` are `/dev` and `/sys/block` (parameters for tests).
    pub fn setup(dev: &Path, sys_block: &Path, name: &str) -> Result<DiskSwap, SwapError> {
        let device = dev.join(name);
        let size = sys_block.join(name).join("size");
        let text = fs::read_to_string(&size).map_err(FileError::at(&size))?;
        let sectors: u64 = text
            .trim()
            .parse()
            .map_err(|_| FileError::at(&size)(io::ErrorKind::InvalidData.into()))?;
        swap_on(&device, sectors.saturating_mul(512))?;
        Ok(DiskSwap { device })
    }

    /// The swap device.
    pub fn device(&self) -> &Path {
        &self.device
    }
}

/// Swaps off `device`; warns and returns `false` if that fails.
fn swap_off(device: &Path) -> bool {
    let Ok(c) = cstring(device) else {
        return false;
    };
    // SAFETY: `c` is NUL-terminated.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        let err = io::Error::last_os_error();
        eprintln!("apf-e2e: warning: swapoff({}): {err}", device.display());
        return false;
    }
    true
}

impl Drop for DiskSwap {
    fn drop(&mut self) {
        swap_off(&self.device);
    }
}

/// Where the swap readahead setting is.
pub const PAGE_CLUSTER: &str = "/proc/sys/vm/page-cluster";

/// `vm.page-cluster` set for a run and restored on drop.
///
/// Each swap-in reads up to 2^page-cluster pages (readahead), all of them
/// charged to the faulting cgroup. At 0 a swap-in reads one page, so each
/// fetch in flight (up to 64 per vCPU with APF) holds one page at most.
pub struct PageCluster {
    path: PathBuf,
    saved: String,
}

impl PageCluster {
    /// Writes `value` to `path` (normally [`PAGE_CLUSTER`]), keeping the
    /// old value to restore.
    pub fn set(path: &Path, value: u32) -> Result<PageCluster, SwapError> {
        let saved = fs::read_to_string(path).map_err(FileError::at(path))?;
        fs::write(path, value.to_string()).map_err(FileError::at(path))?;
        Ok(PageCluster {
            path: path.to_path_buf(),
            saved: saved.trim().to_string(),
        })
    }

    /// The value before [`PageCluster::set`], restored on drop.
    pub fn saved(&self) -> &str {
        &self.saved
    }
}

impl Drop for PageCluster {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.saved) {
            eprintln!(
                "apf-e2e: warning: restoring {} to {}: {e}",
                self.path.display(),
                self.saved
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let uuid = [7u8; 16];
        let h = swap_header(512 << 20, 4096, uuid).unwrap();
        assert_eq!(h.len(), 4096);
        assert_eq!(&h[4086..], b"SWAPSPACE2");
        assert!(h[..1024].iter().all(|b| *b == 0), "boot block empty");
        let u32_at = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        assert_eq!(u32_at(1024), 1, "version");
        assert_eq!(u32_at(1028), (512 << 20) / 4096 - 1, "last_page");
        assert_eq!(u32_at(1032), 0, "nr_badpages");
        assert_eq!(&h[1036..1052], &uuid);
        assert!(h[1052..4086].iter().all(|b| *b == 0));

        let h = swap_header(64 << 20, 65536, uuid).unwrap();
        assert_eq!(h.len(), 65536);
        assert_eq!(&h[65526..], b"SWAPSPACE2");
        assert_eq!(
            u32::from_ne_bytes([h[1028], h[1029], h[1030], h[1031]]),
            1023
        );
    }

    #[test]
    fn bad_sizes() {
        assert!(swap_header(9 * 4096, 4096, [0; 16]).is_err());
        assert!(swap_header(1 << 20, 1000, [0; 16]).is_err());
        assert!(swap_header(1 << 20, 2048, [0; 16]).is_err());
        assert!(swap_header(u64::MAX, 4096, [0; 16]).is_err());
        assert!(swap_header(10 * 4096, 4096, [0; 16]).is_ok());
    }

    #[test]
    fn uuid_is_v4_shaped() {
        let u = make_uuid();
        assert_eq!(u[6] >> 4, 4);
        assert_eq!(u[8] >> 6, 2);
    }

    #[test]
    fn disk_setup_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("apf-e2e-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sys/vdz")).unwrap();
        let setup = || {
            DiskSwap::setup(&dir.join("dev"), &dir.join("sys"), "vdz")
                .err()
                .unwrap()
                .to_string()
        };
        // No size file, then one that is not a number: the error names it.
        assert!(setup().contains("vdz/size"));
        fs::write(dir.join("sys/vdz/size"), "lots\n").unwrap();
        assert!(setup().contains("vdz/size"));
        // Too small for a swap area.
        fs::write(dir.join("sys/vdz/size"), "8\n").unwrap();
        assert!(setup().contains("not usable"));
        // Big enough, but no device.
        fs::write(dir.join("sys/vdz/size"), "131072\n").unwrap();
        assert!(setup().contains("dev/vdz"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn page_cluster_set_and_restored() {
        let dir = std::env::temp_dir().join(format!("apf-e2e-pc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("page-cluster");
        let e = PageCluster::set(&file, 0).err().unwrap();
        assert!(e.to_string().contains("page-cluster"), "{e}");
        fs::write(&file, "3\n").unwrap();
        let pc = PageCluster::set(&file, 0).unwrap();
        assert_eq!(pc.saved(), "3");
        assert_eq!(fs::read_to_string(&file).unwrap(), "0");
        drop(pc);
        assert_eq!(fs::read_to_string(&file).unwrap(), "3");
        fs::remove_dir_all(&dir).unwrap();
    }
}
