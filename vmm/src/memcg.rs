// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the memory cgroup of apf-vmm's cgroup mode went through, on one
//! line: apf-vmm prints it at exit, apf-e2e reads it back. Both use this
//! module, so the format is defined once ([`MemcgReport::line`] and
//! [`MemcgReport::parse_line`] go through the same key table).
//!
//! ```text
//! cgroup: high=50331648 max=75497472 peak=50528256 swap_peak=91684864 events_high=812 events_max=0 oom=0 oom_kill=0 pgmajfault=9013 workingset_refault_anon=8820
//! ```
//!
//! Limits and peaks are in bytes (`max` for no limit reads as
//! `u64::MAX`); the rest are event counts. The sources are the cgroup's
//! `memory.high`, `memory.max`, `memory.peak`, `memory.swap.peak`,
//! `memory.events` (`high`, `max`, `oom`, `oom_kill`) and `memory.stat`
//! (`pgmajfault`, `workingset_refault_anon`).

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::FileError;
use crate::lines::field;

/// The start of the line.
pub const PREFIX: &str = "cgroup:";

/// The name of the cgroup apf-vmm creates (under the cgroup v2 root) for
/// its process `pid`. apf-e2e looks there when the VMM died without
/// printing its report.
pub fn cgroup_name(pid: u32) -> String {
    format!("apf-vmm-{pid}")
}

/// The keys of the line, in order. [`MemcgReport::values`] follows it.
pub const KEYS: [&str; 10] = [
    "high",
    "max",
    "peak",
    "swap_peak",
    "events_high",
    "events_max",
    "oom",
    "oom_kill",
    "pgmajfault",
    "workingset_refault_anon",
];

/// Errors while reading a cgroup's files.
#[derive(Debug, Error)]
pub enum MemcgError {
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] FileError),
    /// A file lacks a value or holds something else than a number.
    #[error("{path}: no usable value for '{key}'")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The key, or the file name for single-value files.
        key: &'static str,
    },
}

/// The cgroup's limits, peaks and memory events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgReport {
    /// `memory.high` in bytes.
    pub high: u64,
    /// `memory.max` in bytes.
    pub max: u64,
    /// `memory.peak`: the highest usage, in bytes.
    pub peak: u64,
    /// `memory.swap.peak` in bytes (0 without swap accounting).
    pub swap_peak: u64,
    /// `memory.events` `high`: times usage went over memory.high (reclaim
    /// and throttling).
    pub events_high: u64,
    /// `memory.events` `max`: times usage was about to go over memory.max.
    pub events_max: u64,
    /// `memory.events` `oom`: times the OOM killer was about to be invoked
    /// (or a charge failed for lack of memory).
    pub oom: u64,
    /// `memory.events` `oom_kill`: processes OOM-killed in the cgroup.
    pub oom_kill: u64,
    /// `memory.stat` `pgmajfault`: major faults (swap-ins that waited).
    pub pgmajfault: u64,
    /// `memory.stat` `workingset_refault_anon`: anonymous pages faulted
    /// back in after reclaim.
    pub workingset_refault_anon: u64,
}

/// Value of `key` in a flat keyed file (`key value` per line), as in
/// `memory.events`, `memory.stat` and `/proc/vmstat`.
pub fn keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(k), Some(v), None) if k == key => v.parse().ok(),
            _ => None,
        }
    })
}

/// A single-value file such as `memory.max`: a number of bytes or `max`.
pub fn limit_value(content: &str) -> Option<u64> {
    match content.trim() {
        "max" => Some(u64::MAX),
        v => v.parse().ok(),
    }
}

fn read(path: &Path) -> Result<String, MemcgError> {
    Ok(fs::read_to_string(path).map_err(FileError::at(path))?)
}

impl MemcgReport {
    /// The values in [`KEYS`] order.
    pub fn values(&self) -> [u64; KEYS.len()] {
        [
            self.high,
            self.max,
            self.peak,
            self.swap_peak,
            self.events_high,
            self.events_max,
            self.oom,
            self.oom_kill,
            self.pgmajfault,
            self.workingset_refault_anon,
        ]
    }

    fn from_values(v: [u64; KEYS.len()]) -> MemcgReport {
        let [high, max, peak, swap_peak, events_high, events_max, oom, oom_kill, pgmajfault, workingset_refault_anon] =
            v;
        MemcgReport {
            high,
            max,
            peak,
            swap_peak,
            events_high,
            events_max,
            oom,
            oom_kill,
            pgmajfault,
            workingset_refault_anon,
        }
    }

    /// Reads the report from cgroup directory `dir`. `memory.swap.peak`
    /// may be missing (no swap accounting); every other file must be there.
    pub fn read(dir: &Path) -> Result<MemcgReport, MemcgError> {
        let single = |name: &'static str| -> Result<u64, MemcgError> {
            let path = dir.join(name);
            limit_value(&read(&path)?).ok_or(MemcgError::Missing { path, key: name })
        };
        let keyed_in = |name: &str, content: &str, key: &'static str| {
            keyed(content, key).ok_or_else(|| MemcgError::Missing {
                path: dir.join(name),
                key,
            })
        };
        let events = read(&dir.join("memory.events"))?;
        let stat = read(&dir.join("memory.stat"))?;
        Ok(MemcgReport {
            high: single("memory.high")?,
            max: single("memory.max")?,
            peak: single("memory.peak")?,
            swap_peak: single("memory.swap.peak").unwrap_or(0),
            events_high: keyed_in("memory.events", &events, "high")?,
            events_max: keyed_in("memory.events", &events, "max")?,
            oom: keyed_in("memory.events", &events, "oom")?,
            oom_kill: keyed_in("memory.events", &events, "oom_kill")?,
            pgmajfault: keyed_in("memory.stat", &stat, "pgmajfault")?,
            workingset_refault_anon: keyed_in("memory.stat", &stat, "workingset_refault_anon")?,
        })
    }

    /// The line apf-vmm prints.
    pub fn line(&self) -> String {
        let fields: Vec<String> = KEYS
            .iter()
            .zip(self.values())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{PREFIX} {}", fields.join(" "))
    }

    /// Reads a line printed by [`MemcgReport::line`] (at the start of
    /// `line`); `None` if it is not one or lacks a key.
    pub fn parse_line(line: &str) -> Option<MemcgReport> {
        let rest = line.strip_prefix(PREFIX)?;
        let mut v = [0u64; KEYS.len()];
        for (slot, key) in v.iter_mut().zip(KEYS) {
            *slot = field(rest, key)?;
        }
        Some(MemcgReport::from_values(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemcgReport {
        MemcgReport {
            high: 48 << 20,
            max: 72 << 20,
            peak: 50_528_256,
            swap_peak: 91_684_864,
            events_high: 812,
            events_max: 1,
            oom: 2,
            oom_kill: 3,
            pgmajfault: 9013,
            workingset_refault_anon: 8820,
        }
    }

    #[test]
    fn name() {
        assert_eq!(cgroup_name(4242), "apf-vmm-4242");
    }

    #[test]
    fn line_round_trip() {
        let r = sample();
        let line = r.line();
        assert_eq!(
            line,
            "cgroup: high=50331648 max=75497472 peak=50528256 swap_peak=91684864 \
             events_high=812 events_max=1 oom=2 oom_kill=3 pgmajfault=9013 \
             workingset_refault_anon=8820"
        );
        assert_eq!(MemcgReport::parse_line(&line), Some(r));
        let unlimited = MemcgReport { max: u64::MAX, ..r };
        assert_eq!(MemcgReport::parse_line(&unlimited.line()), Some(unlimited));
    }

    #[test]
    fn parse_line_rejects() {
        let line = sample().line();
        // Not at the start of the line, a key missing, a bad number.
        assert_eq!(MemcgReport::parse_line(&format!("x {line}")), None);
        assert_eq!(
            MemcgReport::parse_line(&line.replace(" oom_kill=3", "")),
            None
        );
        assert_eq!(
            MemcgReport::parse_line(&line.replace("peak=50528256", "peak=-1")),
            None
        );
        assert_eq!(MemcgReport::parse_line("cgroup:"), None);
        assert_eq!(MemcgReport::parse_line(""), None);
        // Keys are whole words: swap_peak does not stand in for peak.
        assert_eq!(
            MemcgReport::parse_line(&line.replace(" peak=50528256", "")),
            None
        );
    }

    #[test]
    fn keyed_files() {
        let events = "low 0\nhigh 812\nmax 1\noom 0\noom_kill 0\noom_group_kill 0\n";
        assert_eq!(keyed(events, "high"), Some(812));
        assert_eq!(keyed(events, "oom"), Some(0));
        assert_eq!(keyed(events, "oom_kill"), Some(0));
        assert_eq!(keyed(events, "oom_group"), None);
        assert_eq!(keyed("pswpin 12\npswpout x\n", "pswpout"), None);
        assert_eq!(keyed("pswpin 12 13\n", "pswpin"), None);
        assert_eq!(keyed("", "pswpin"), None);
        assert_eq!(limit_value("max\n"), Some(u64::MAX));
        assert_eq!(limit_value("50331648\n"), Some(50_331_648));
        assert_eq!(limit_value("-1"), None);
    }

    #[test]
    fn reads_a_cgroup_directory() {
        let dir = std::env::temp_dir().join(format!("apf-memcg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Missing files are named.
        let e = MemcgReport::read(&dir).unwrap_err();
        assert!(e.to_string().contains("memory.events"), "{e}");

        fs::write(dir.join("memory.high"), "50331648\n").unwrap();
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        fs::write(dir.join("memory.peak"), "50528256\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 812\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(
            dir.join("memory.stat"),
            "anon 4096\nfile 0\npgmajfault 9013\nworkingset_refault_anon 8820\n",
        )
        .unwrap();
        let r = MemcgReport::read(&dir).unwrap();
        assert_eq!(
            r,
            MemcgReport {
                high: 50_331_648,
                max: u64::MAX,
                peak: 50_528_256,
                swap_peak: 0,
                events_high: 812,
                events_max: 0,
                oom: 0,
                oom_kill: 0,
                pgmajfault: 9013,
                workingset_refault_anon: 8820,
            }
        );
        fs::write(dir.join("memory.swap.peak"), "4096\n").unwrap();
        assert_eq!(MemcgReport::read(&dir).unwrap().swap_peak, 4096);

        fs::write(dir.join("memory.stat"), "anon 4096\n").unwrap();
        let e = MemcgReport::read(&dir).unwrap_err();
        assert!(
            matches!(
                e,
                MemcgError::Missing {
                    key: "pgmajfault",
                    ..
                }
            ),
            "{e}"
        );
        fs::write(dir.join("memory.peak"), "lots\n").unwrap();
        assert!(matches!(
            MemcgReport::read(&dir),
            Err(MemcgError::Missing {
                key: "memory.peak",
                ..
            })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
