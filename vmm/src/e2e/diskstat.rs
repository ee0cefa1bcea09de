// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The I/O counters of the swap device (`/sys/block/NAME/stat`), read
//! before and after a run: reads from it are swap-ins that waited for the
//! device, writes are swap-outs. Nothing else uses the device during the
//! run. (`/proc/vmstat`'s `pswpin` would say the same, but the emulated
//! host's kernel has no `CONFIG_VM_EVENT_COUNTERS`.)

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::FileError;

/// Errors while reading a device's statistics.
#[derive(Debug, Error)]
pub enum DiskStatError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The file does not hold the expected fields.
    #[error("{0}: not a block device stat line")]
    Malformed(PathBuf),
}

/// The counters used, at one moment (or their increase over a run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStat {
    /// Read requests completed.
    pub read_ios: u64,
    /// 512-byte sectors read.
    pub read_sectors: u64,
    /// Milliseconds spent waiting for reads.
    pub read_ms: u64,
    /// Write requests completed.
    pub write_ios: u64,
    /// 512-byte sectors written.
    pub write_sectors: u64,
}

impl DiskStat {
    /// Parses a `stat` line (`Documentation/block/stat.rst`: read I/Os,
    /// merges, sectors, ticks, then the same for writes, ...).
    pub fn parse(content: &str) -> Option<DiskStat> {
        let f: Vec<u64> = content
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if f.len() < 11 {
            return None;
        }
        Some(DiskStat {
            read_ios: f[0],
            read_sectors: f[2],
            read_ms: f[3],
            write_ios: f[4],
            write_sectors: f[6],
        })
    }

    /// Reads `<sys_block>/<name>/stat` (`sys_block` is `/sys/block`).
    pub fn read(sys_block: &Path, name: &str) -> Result<DiskStat, DiskStatError> {
        let path = sys_block.join(name).join("stat");
        let content = fs::read_to_string(&path).map_err(FileError::at(&path))?;
        DiskStat::parse(&content).ok_or(DiskStatError::Malformed(path))
    }

    /// The increase from `before` to `self` (a smaller value counts as no
    /// increase).
    pub fn since(&self, before: &DiskStat) -> DiskStat {
        DiskStat {
            read_ios: self.read_ios.saturating_sub(before.read_ios),
            read_sectors: self.read_sectors.saturating_sub(before.read_sectors),
            read_ms: self.read_ms.saturating_sub(before.read_ms),
            write_ios: self.write_ios.saturating_sub(before.write_ios),
            write_sectors: self.write_sectors.saturating_sub(before.write_sectors),
        }
    }

    /// KiB read.
    pub fn read_kib(&self) -> u64 {
        self.read_sectors / 2
    }

    /// KiB written.
    pub fn write_kib(&self) -> u64 {
        self.write_sectors / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "    1500        3    12000      800     9000       10    72000     \
                          5000        0     4000     5800        0        0        0        0 \
                          0        0\n";

    #[test]
    fn parses_and_subtracts() {
        let before = DiskStat::parse(SAMPLE).unwrap();
        assert_eq!(
            before,
            DiskStat {
                read_ios: 1500,
                read_sectors: 12000,
                read_ms: 800,
                write_ios: 9000,
                write_sectors: 72000
            }
        );
        let after = DiskStat::parse(
            &SAMPLE
                .replacen("1500", "2100", 1)
                .replacen("12000", "16800", 1),
        )
        .unwrap();
        let d = after.since(&before);
        assert_eq!(d.read_ios, 600);
        assert_eq!(d.read_kib(), 2400);
        assert_eq!(d.write_ios, 0);
        assert_eq!(before.since(&after).read_ios, 0);
        // Older kernels print 11 fields.
        assert!(DiskStat::parse("1 2 3 4 5 6 7 8 9 10 11").is_some());
    }

    #[test]
    fn bad_input() {
        assert_eq!(DiskStat::parse(""), None);
        assert_eq!(DiskStat::parse("1 2 3 4 5 6 7 8 9 10"), None);
        assert_eq!(DiskStat::parse(&SAMPLE.replace("800", "x")), None);
        assert_eq!(DiskStat::parse(&SAMPLE.replace("800", "-1")), None);

        let dir = std::env::temp_dir().join(format!("apf-e2e-diskstat-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("vda")).unwrap();
        assert!(matches!(
            DiskStat::read(&dir, "vda"),
            Err(DiskStatError::Io(_))
        ));
        fs::write(dir.join("vda/stat"), "1 2 3\n").unwrap();
        let e = DiskStat::read(&dir, "vda").unwrap_err();
        assert!(e.to_string().contains("vda/stat"), "{e}");
        fs::write(dir.join("vda/stat"), SAMPLE).unwrap();
        assert_eq!(DiskStat::read(&dir, "vda").unwrap().write_ios, 9000);
        fs::remove_dir_all(&dir).unwrap();
    }
}
