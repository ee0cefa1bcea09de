// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! KVM binary statistics (`KVM_GET_STATS_FD`), used to report the per-vCPU
//! `apf_*` counters.
//!
//! File format (include/uapi/linux/kvm.h): a `kvm_stats_header` at offset 0,
//! an id string, `num_desc` descriptors of `16 + name_size` bytes each at
//! `desc_offset`, and the values (u64 each) at `data_offset + desc.offset`.
//! The parser is independent of the architecture and of KVM itself.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use thiserror::Error;

use crate::lines::{ApfLine, ApfStats};

/// `_IO(KVMIO, 0xce)`.
pub const KVM_GET_STATS_FD: u64 = 0xae_ce;

/// Size of `struct kvm_stats_header`.
pub const HEADER_SIZE: usize = 24;
/// Size of `struct kvm_stats_desc` without its name.
pub const DESC_FIXED_SIZE: usize = 16;
/// Upper bound on descriptors accepted (KVM has well under 100 per vCPU).
const MAX_DESCRIPTORS: u32 = 4096;
/// Upper bound on `name_size` (KVM uses 48).
const MAX_NAME_SIZE: u32 = 4096;
/// Upper bound on the data block (64 KiB of counters is far beyond KVM's).
const MAX_DATA_SIZE: u64 = 1 << 16;

/// The counters this VMM reports, as the APF series defines them.
pub const APF_STATS: [&str; 9] = [
    "apf_not_present",
    "apf_ready",
    "apf_ready_mapped",
    "apf_sync_not_el0",
    "apf_sync_disabled",
    "apf_sync_busy",
    "apf_sync_queue_full",
    "apf_sync_repeat",
    "apf_sync_refault",
];

/// Positioned reads, implemented for the stats file and for byte slices.
pub trait ReadAt {
    /// Fills `buf` from `offset`, or fails.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Errors while reading statistics.
#[derive(Debug, Error)]
pub enum StatsError {
    /// `KVM_GET_STATS_FD` failed.
    #[error("KVM_GET_STATS_FD: {0}")]
    Open(io::Error),
    /// A read from the stats file failed.
    #[error("reading KVM statistics: {0}")]
    Read(io::Error),
    /// The file does not look like KVM binary statistics.
    #[error("malformed KVM statistics: {0}")]
    Malformed(&'static str),
}

/// `struct kvm_stats_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsHeader {
    /// Always 0 so far.
    pub flags: u32,
    /// Bytes reserved for each descriptor's name, NUL included.
    pub name_size: u32,
    /// Number of descriptors.
    pub num_desc: u32,
    /// Offset of the id string.
    pub id_offset: u32,
    /// Offset of the descriptor array.
    pub desc_offset: u32,
    /// Offset of the data block.
    pub data_offset: u32,
}

/// One statistic: its name and value. Histograms (several values) keep
/// only their first bucket; the counters reported here have one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Name from the descriptor.
    pub name: String,
    /// First (usually only) value.
    pub value: u64,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// Decodes a header.
pub fn parse_header(b: &[u8; HEADER_SIZE]) -> Result<StatsHeader, StatsError> {
    let h = StatsHeader {
        flags: u32_at(b, 0),
        name_size: u32_at(b, 4),
        num_desc: u32_at(b, 8),
        id_offset: u32_at(b, 12),
        desc_offset: u32_at(b, 16),
        data_offset: u32_at(b, 20),
    };
    if h.name_size == 0 || h.name_size > MAX_NAME_SIZE {
        return Err(StatsError::Malformed("implausible name_size"));
    }
    if h.num_desc > MAX_DESCRIPTORS {
        return Err(StatsError::Malformed("implausible number of descriptors"));
    }
    Ok(h)
}

/// Reads every statistic from a stats file (or an image of one).
pub fn read_stats<R: ReadAt + ?Sized>(r: &R) -> Result<Vec<Stat>, StatsError> {
    let mut hb = [0u8; HEADER_SIZE];
    r.read_exact_at(&mut hb, 0).map_err(StatsError::Read)?;
    let h = parse_header(&hb)?;

    // Both factors are bounded above, so this cannot overflow.
    let stride = DESC_FIXED_SIZE + h.name_size as usize;
    let mut descs = vec![0u8; stride * h.num_desc as usize];
    r.read_exact_at(&mut descs, u64::from(h.desc_offset))
        .map_err(StatsError::Read)?;

    struct Desc {
        name: String,
        size: u16,
        offset: u32,
    }
    let mut parsed = Vec::with_capacity(h.num_desc as usize);
    let mut data_len: u64 = 0;
    for d in descs.chunks_exact(stride) {
        let size = u16_at(d, 6);
        let offset = u32_at(d, 8);
        let raw_name = &d[DESC_FIXED_SIZE..];
        let name_len = raw_name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(raw_name.len());
        let name = std::str::from_utf8(&raw_name[..name_len])
            .map_err(|_| StatsError::Malformed("statistic name is not UTF-8"))?
            .to_string();
        if size > 0 {
            data_len = data_len.max(u64::from(offset) + 8 * u64::from(size));
        }
        parsed.push(Desc { name, size, offset });
    }
    if data_len > MAX_DATA_SIZE {
        return Err(StatsError::Malformed("implausible data block size"));
    }

    let mut data = vec![0u8; data_len as usize];
    r.read_exact_at(&mut data, u64::from(h.data_offset))
        .map_err(StatsError::Read)?;

    Ok(parsed
        .into_iter()
        .filter(|d| d.size > 0)
        .map(|d| {
            let off = d.offset as usize;
            let mut v = [0u8; 8];
            v.copy_from_slice(&data[off..off + 8]);
            Stat {
                name: d.name,
                value: u64::from_le_bytes(v),
            }
        })
        .collect())
}

/// Opens the binary statistics of a vCPU (or VM) fd.
pub fn open_stats_fd<F: AsRawFd>(fd: &F) -> Result<File, StatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
    // descriptor or -1; the fd passed in is owned by the caller and open.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _) };
    if ret < 0 {
        return Err(StatsError::Open(io::Error::last_os_error()));
    }
    // SAFETY: `ret` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(ret) })
}

/// The `apf_*` statistics of one vCPU: the known ones in `APF_STATS`
/// order, then any other `apf_*` in the kernel's order.
pub fn apf_stats(vcpu: usize, stats: &[Stat]) -> ApfLine {
    let known = APF_STATS
        .iter()
        .filter_map(|name| stats.iter().find(|s| s.name == *name));
    let others = stats
        .iter()
        .filter(|s| s.name.starts_with("apf_") && !APF_STATS.contains(&s.name.as_str()));
    let apf: Vec<(String, u64)> = known
        .chain(others)
        .map(|s| (s.name.clone(), s.value))
        .collect();
    ApfLine {
        vcpu,
        stats: if apf.is_empty() {
            ApfStats::NoApf
        } else {
            ApfStats::Counters(apf)
        },
    }
}

/// [`apf_stats`] as the line the VMM prints.
pub fn apf_line(vcpu: usize, stats: &[Stat]) -> String {
    apf_stats(vcpu, stats).to_string()
}

/// The generic KVM vCPU counters that tell what a fault costs in exits,
/// printed by [`kvm_line`] in this order.
pub const EXIT_STATS: &[&str] = &[
    "exits",
    "hvc_exit_stat",
    "wfi_exit_stat",
    "mmio_exit_user",
    "signal_exits",
    "halt_wakeup",
];

/// Formats the [`EXIT_STATS`] counters of one vCPU on one line (`kvm:`),
/// those the kernel has.
pub fn kvm_line(vcpu: usize, stats: &[Stat]) -> String {
    let fields: Vec<String> = EXIT_STATS
        .iter()
        .filter_map(|name| stats.iter().find(|s| s.name == *name))
        .map(|s| format!("{}={}", s.name, s.value))
        .collect();
    format!("kvm: vcpu{vcpu} {}", fields.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME_SIZE: usize = 48;

    /// Lays out a stats file the way KVM does: header, id, descriptors, data.
    fn image(stats: &[(&str, &[u64])]) -> Vec<u8> {
        let id = b"kvm-1234/vcpu-0\0";
        let id_offset = HEADER_SIZE;
        let desc_offset = id_offset + NAME_SIZE;
        let stride = DESC_FIXED_SIZE + NAME_SIZE;
        let data_offset = desc_offset + stride * stats.len();

        let mut out = Vec::new();
        for v in [
            0u32,
            NAME_SIZE as u32,
            stats.len() as u32,
            id_offset as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let mut idb = [0u8; NAME_SIZE];
        idb[..id.len()].copy_from_slice(id);
        out.extend_from_slice(&idb);

        let mut data = Vec::new();
        for (name, values) in stats {
            out.extend_from_slice(&0u32.to_le_bytes()); // flags: cumulative counter
            out.extend_from_slice(&0i16.to_le_bytes()); // exponent
            out.extend_from_slice(&(values.len() as u16).to_le_bytes());
            out.extend_from_slice(&((data.len() * 8) as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes()); // bucket_size
            let mut nb = [0u8; NAME_SIZE];
            nb[..name.len()].copy_from_slice(name.as_bytes());
            out.extend_from_slice(&nb);
            data.extend_from_slice(values);
        }
        assert_eq!(out.len(), data_offset);
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    #[test]
    fn parses_counters_in_order() {
        let img = image(&[
            ("exits", &[1000]),
            ("apf_not_present", &[12]),
            ("halt_wait_hist", &[1, 2, 3, 4]),
            ("apf_ready", &[11]),
            ("apf_sync_repeat", &[u64::MAX]),
        ]);
        let stats = read_stats(img.as_slice()).unwrap();
        let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "exits",
                "apf_not_present",
                "halt_wait_hist",
                "apf_ready",
                "apf_sync_repeat"
            ]
        );
        assert_eq!(stats[0].value, 1000);
        assert_eq!(stats[1].value, 12);
        assert_eq!(stats[2].value, 1);
        assert_eq!(stats[3].value, 11);
        assert_eq!(stats[4].value, u64::MAX);
    }

    #[test]
    fn apf_line_format() {
        // Kernel order differs from the canonical one; an unknown apf_*
        // counter goes last.
        let img = image(&[
            ("exits", &[5]),
            ("apf_sync_busy", &[0]),
            ("apf_future", &[7]),
            ("apf_ready", &[11]),
            ("apf_not_present", &[12]),
        ]);
        let stats = read_stats(img.as_slice()).unwrap();
        assert_eq!(
            apf_line(3, &stats),
            "apf: vcpu3 apf_not_present=12 apf_ready=11 apf_sync_busy=0 apf_future=7"
        );
        let none = read_stats(image(&[("exits", &[5])]).as_slice()).unwrap();
        assert_eq!(
            apf_line(0, &none),
            "apf: vcpu0 no apf_* statistics (host kernel without APF)"
        );
    }

    #[test]
    fn all_apf_names_fit_kvm_name_size() {
        for name in APF_STATS {
            assert!(name.len() < NAME_SIZE);
            assert!(name.starts_with("apf_"));
        }
    }

    #[test]
    fn truncated_file_is_an_error() {
        let img = image(&[("apf_ready", &[1]), ("apf_not_present", &[2])]);
        for cut in [0, 10, HEADER_SIZE + 3, img.len() - 1] {
            assert!(
                matches!(read_stats(&img[..cut]), Err(StatsError::Read(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn implausible_header_rejected() {
        let mut img = image(&[("apf_ready", &[1])]);
        img[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            read_stats(img.as_slice()),
            Err(StatsError::Malformed(_))
        ));
        img[4..8].copy_from_slice(&48u32.to_le_bytes());
        img[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_stats(img.as_slice()),
            Err(StatsError::Malformed(_))
        ));
    }

    #[test]
    fn huge_data_offset_rejected() {
        let mut img = image(&[("apf_ready", &[1])]);
        // Descriptor offset field of the first descriptor.
        let off = HEADER_SIZE + NAME_SIZE + 8;
        img[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_stats(img.as_slice()),
            Err(StatsError::Malformed(_))
        ));
    }

    /// Reads real statistics from the host's KVM (any architecture): a fresh
    /// vCPU has the generic "exits" counter at 0. Needs /dev/kvm, so it only
    /// runs with `cargo test -- --ignored`.
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn reads_host_kvm_vcpu_stats() {
        let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        let file = open_stats_fd(&vcpu).expect("KVM_GET_STATS_FD");
        let stats = read_stats(&file).expect("parse stats");
        let exits = stats
            .iter()
            .find(|s| s.name == "exits")
            .expect("exits counter");
        assert_eq!(exits.value, 0);
        assert!(stats.iter().any(|s| s.name == "halt_exits"));
    }

    #[test]
    fn kvm_line_lists_exit_counters_in_order() {
        let stat = |name: &str, value| Stat {
            name: name.into(),
            value,
        };
        let stats = [
            stat("halt_wakeup", 3),
            stat("apf_ready", 9),
            stat("exits", 100),
            stat("hvc_exit_stat", 7),
        ];
        assert_eq!(
            kvm_line(1, &stats),
            "kvm: vcpu1 exits=100 hvc_exit_stat=7 halt_wakeup=3"
        );
    }
}
