// SPDX-License-Identifier: GPL-2.0

//! apf-compress: workload (d) of `make bench`, a macro workload. It runs in
//! a guest booted by apf-vmm, whose RAM sits in a memory cgroup of the
//! emulated host that is smaller than what the guest touches, with swap on
//! the host's disk. apf-bench starts it for `APF_BENCH=macro`.
//!
//! It writes a generated, text-like data set of `APF_MACRO_MIB` files of
//! 1 MiB into the guest's rootfs (RAM), then, `APF_BENCH_ROUNDS` times,
//! compresses every file with gzip (deflate level 6, the `flate2` crate) in
//! `APF_MACRO_JOBS` worker processes, which are this program run as
//! `apf-compress worker DIR K JOBS FILES IO`. Worker K takes files K,
//! K + JOBS, ... and gets each input as `APF_MACRO_IO` says: `read`, with
//! read(2) into a buffer, as gzip and pigz do, or `mmap`, mapping the file
//! and compressing from the mapping.
//!
//! Which one matters to APF: with `read`, the guest kernel copies the page
//! cache to the buffer, so a page the host has swapped out faults at EL1,
//! where APF cannot park the task and the fault stays synchronous
//! (`apf_sync_not_el0`); with `mmap` the worker itself touches the page
//! cache at EL0.
//! The round's wall time, from the first worker's start to the last one's
//! exit, is printed as "apf-bench: macro round=R ... ms=T", for
//! scripts/bench.py. With APF hidden, a vCPU that waits for the host to
//! swap a page in runs nothing else meanwhile; with APF it runs another
//! worker.
//!
//! After each round, outside the timed part, every output is decompressed
//! and checked against the CRC32 of its input, so a page corrupted by the
//! swap path fails the run. It ends with the verdict line that apf-e2e
//! checks, "workload: ok ..." or "workload: FAIL ...". Exit status: 0 done,
//! 1 data corrupted or a worker failed, 2 bad settings.

use std::env;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command};
use std::time::Instant;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use memmap2::Mmap;

/// Exit status for a failed run.
const EXIT_FAIL: i32 = 1;
/// Exit status for bad settings, as for the C workloads (env.h).
const EXIT_USAGE: i32 = 2;
/// The deflate level: gzip's and pigz's fastest, `-1`. The default, 6,
/// spends ten times the CPU for a ratio of 4.4 instead of 3.2, and under
/// TCG that CPU would hide the paging the workload is there to show.
const LEVEL: u32 = 1;
/// Each input file's size.
const FILE_BYTES: usize = 1 << 20;
/// Where the data set lives: the guest's rootfs, which is RAM.
const DIR: &str = "/tmp/apf-compress";
/// Words the generated text is made of: it compresses about as well as
/// English text or source code (about 3:1 at level 6).
const WORDS: [&str; 32] = [
    "page", "fault", "guest", "host", "vcpu", "ready", "token", "async", "stage", "table", "swap",
    "memory", "cgroup", "kernel", "return", "struct", "static", "const", "unsigned", "long", "if",
    "else", "for", "while", "the", "of", "and", "to", "in", "is", "0x", "{",
];

/// The settings, from `KEY=value` parameters on the guest's kernel command
/// line (which init passes on as the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    /// Size of the data set, in MiB (one file per MiB).
    mib: usize,
    /// Worker processes per round.
    jobs: usize,
    /// Timed rounds.
    rounds: usize,
    /// How workers get their input.
    io: Io,
}

/// How a worker gets its input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    /// read(2) into a buffer.
    Read,
    /// Map the file and compress from the mapping.
    Mmap,
}

impl Io {
    fn parse(s: &str) -> Option<Io> {
        match s {
            "read" => Some(Io::Read),
            "mmap" => Some(Io::Mmap),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Io::Read => "read",
            Io::Mmap => "mmap",
        }
    }
}

/// `name` as a decimal in `min..=max`, or `def` if unset.
fn setting(
    get: &dyn Fn(&str) -> Option<String>,
    name: &str,
    def: usize,
    min: usize,
    max: usize,
) -> Result<usize, String> {
    let Some(s) = get(name) else {
        return Ok(def);
    };
    match s.parse::<usize>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("{name}='{s}': expected a number {min}..{max}")),
    }
}

impl Settings {
    fn from(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        Ok(Settings {
            mib: setting(get, "APF_MACRO_MIB", 32, 1, 1024)?,
            jobs: setting(get, "APF_MACRO_JOBS", 4, 1, 64)?,
            rounds: setting(get, "APF_BENCH_ROUNDS", 5, 1, 100)?,
            io: match get("APF_MACRO_IO") {
                None => Io::Read,
                Some(s) => Io::parse(&s)
                    .ok_or_else(|| format!("APF_MACRO_IO='{s}': expected read or mmap"))?,
            },
        })
    }
}

/// File `index` of the data set: lines of words picked by a xorshift
/// generator seeded by the index, so every file differs.
fn generate(index: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let mut out = Vec::with_capacity(FILE_BYTES + 16);
    let mut col = 0;
    while out.len() < FILE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = WORDS[(x % WORDS.len() as u64) as usize];
        out.extend_from_slice(word.as_bytes());
        col += word.len() + 1;
        if col > 72 || x >> 60 == 0 {
            out.push(b'\n');
            col = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(FILE_BYTES);
    out
}

fn input(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("in-{index:04}"))
}

fn output(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("out-{index:04}.gz"))
}

/// gzips `from` into `to`.
fn compress(from: &Path, to: &Path, io: Io) -> io::Result<()> {
    let mut gz = GzEncoder::new(BufWriter::new(File::create(to)?), Compression::new(LEVEL));
    match io {
        Io::Read => {
            let mut data = Vec::with_capacity(FILE_BYTES);
            File::open(from)?.read_to_end(&mut data)?;
            gz.write_all(&data)?;
        }
        Io::Mmap => {
            // SAFETY: nothing writes or truncates the inputs while the
            // rounds run: `run` writes them before the first and removes
            // them after the last, and the workers only read them.
            let map = unsafe { Mmap::map(&File::open(from)?)? };
            gz.write_all(&map)?;
        }
    }
    gz.finish()?.flush()
}

/// The CRC32 and length of what the gzip file `path` holds.
fn gunzip_crc(path: &Path) -> io::Result<(u32, usize)> {
    let mut data = Vec::with_capacity(FILE_BYTES);
    GzDecoder::new(File::open(path)?).read_to_end(&mut data)?;
    Ok((crc32fast::hash(&data), data.len()))
}

/// A worker: compresses files `k`, `k + jobs`, ... below `files`.
fn worker(dir: &Path, k: usize, jobs: usize, files: usize, io: Io) -> Result<(), String> {
    for i in (k..files).step_by(jobs) {
        compress(&input(dir, i), &output(dir, i), io)
            .map_err(|e| format!("worker {k}: file {i}: {e}"))?;
    }
    Ok(())
}

/// One timed round: every file compressed by `jobs` workers. Returns the
/// wall time in ms.
fn round(dir: &Path, s: &Settings) -> Result<f64, String> {
    let exe = env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let start = Instant::now();
    let children: Vec<Child> = (0..s.jobs)
        .map(|k| {
            Command::new(&exe)
                .arg("worker")
                .arg(dir)
                .args([k, s.jobs, s.mib].map(|n| n.to_string()))
                .arg(s.io.name())
                .spawn()
                .map_err(|e| format!("spawning worker {k}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut failed = Vec::new();
    for (k, mut child) in children.into_iter().enumerate() {
        match child.wait() {
            Ok(st) if st.success() => {}
            Ok(st) => failed.push(format!("worker {k}: {st}")),
            Err(e) => failed.push(format!("worker {k}: wait: {e}")),
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if failed.is_empty() {
        Ok(ms)
    } else {
        Err(failed.join(", "))
    }
}

/// Checks every output against its input's CRC; returns the outputs' size.
fn verify(dir: &Path, crcs: &[u32]) -> Result<u64, String> {
    let mut bytes = 0;
    for (i, &want) in crcs.iter().enumerate() {
        let path = output(dir, i);
        let (crc, len) = gunzip_crc(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if crc != want || len != FILE_BYTES {
            return Err(format!(
                "file {i} corrupted: crc {crc:#010x} len {len}, expected {want:#010x} len {FILE_BYTES}"
            ));
        }
        bytes += fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(bytes)
}

fn run(s: &Settings) -> Result<(), String> {
    let dir = Path::new(DIR);
    fs::create_dir_all(dir).map_err(|e| format!("{DIR}: {e}"))?;
    let crcs: Vec<u32> = (0..s.mib)
        .map(|i| {
            let data = generate(i);
            fs::write(input(dir, i), &data).map_err(|e| format!("writing file {i}: {e}"))?;
            Ok(crc32fast::hash(&data))
        })
        .collect::<Result<_, String>>()?;
    for r in 0..s.rounds {
        let ms = round(dir, s)?;
        let out = verify(dir, &crcs)?;
        println!(
            "apf-bench: macro round={r} files={} jobs={} ms={ms:.1} out_kib={} io={}",
            s.mib,
            s.jobs,
            out / 1024,
            s.io.name()
        );
    }
    for i in 0..s.mib {
        // The data set is in RAM: give it back.
        let _ = fs::remove_file(input(dir, i));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        let n: Vec<usize> = args
            .get(3..6)
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let io = args.get(6).and_then(|a| Io::parse(a));
        let (Some(dir), &[k, jobs @ 1..=usize::MAX, files], Some(io)) = (args.get(2), &n[..], io)
        else {
            eprintln!("usage: apf-compress worker DIR K JOBS FILES read|mmap (JOBS > 0)");
            process::exit(EXIT_USAGE);
        };
        if let Err(e) = worker(Path::new(dir), k, jobs, files, io) {
            eprintln!("apf-compress: {e}");
            process::exit(EXIT_FAIL);
        }
        return;
    }
    let s = match Settings::from(&|k| env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            println!("apf-compress: error: {e}");
            process::exit(EXIT_USAGE);
        }
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "apf-bench: start mode=macro mib={} rounds={} jobs={} io={} cpus={cpus}",
        s.mib,
        s.rounds,
        s.jobs,
        s.io.name()
    );
    match run(&s) {
        Ok(()) => println!(
            "workload: ok apf-compress rounds={} mib={} jobs={} io={}",
            s.rounds,
            s.mib,
            s.jobs,
            s.io.name()
        ),
        Err(e) => {
            println!("workload: FAIL apf-compress: {e}");
            process::exit(EXIT_FAIL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from(&|k| map.get(k).cloned())
    }

    #[test]
    fn settings_default_and_range() {
        assert_eq!(
            settings(&[]),
            Ok(Settings {
                mib: 32,
                jobs: 4,
                rounds: 5,
                io: Io::Read,
            })
        );
        let s = settings(&[
            ("APF_MACRO_MIB", "8"),
            ("APF_MACRO_JOBS", "2"),
            ("APF_BENCH_ROUNDS", "3"),
        ]);
        assert_eq!(
            s,
            Ok(Settings {
                mib: 8,
                jobs: 2,
                rounds: 3,
                io: Io::Read,
            })
        );
        assert_eq!(
            settings(&[("APF_MACRO_IO", "mmap")]).map(|s| s.io),
            Ok(Io::Mmap)
        );
        let e = settings(&[("APF_MACRO_IO", "splice")]).unwrap_err();
        assert_eq!(e, "APF_MACRO_IO='splice': expected read or mmap");
        for bad in ["0", "1025", "-1", "x", ""] {
            let e = settings(&[("APF_MACRO_MIB", bad)]).unwrap_err();
            assert!(e.starts_with("APF_MACRO_MIB='"), "{e}");
        }
        assert!(settings(&[("APF_MACRO_JOBS", "65")]).is_err());
        assert!(settings(&[("APF_BENCH_ROUNDS", "0")]).is_err());
    }

    #[test]
    fn files_differ_and_compress_like_text() {
        let (a, b) = (generate(0), generate(1));
        assert_eq!((a.len(), b.len()), (FILE_BYTES, FILE_BYTES));
        assert_ne!(a, b);
        assert_eq!(a, generate(0));
        let mut gz = GzEncoder::new(Vec::new(), Compression::new(LEVEL));
        gz.write_all(&a).unwrap();
        let ratio = FILE_BYTES as f64 / gz.finish().unwrap().len() as f64;
        assert!((2.0..8.0).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn verify_finds_a_corrupted_output() {
        let dir = env::temp_dir().join(format!("apf-compress-test-{}", process::id()));
        fs::create_dir_all(&dir).unwrap();
        let crcs: Vec<u32> = (0..2)
            .map(|i| {
                let data = generate(i);
                fs::write(input(&dir, i), &data).unwrap();
                crc32fast::hash(&data)
            })
            .collect();
        worker(&dir, 0, 1, 2, Io::Read).unwrap();
        let size = verify(&dir, &crcs).unwrap();
        assert!(size > 0);
        worker(&dir, 0, 1, 2, Io::Mmap).unwrap();
        assert_eq!(verify(&dir, &crcs), Ok(size), "the same output either way");
        // Output 1 now holds input 0's data.
        worker(&dir, 0, 1, 2, Io::Read).unwrap();
        fs::copy(output(&dir, 0), output(&dir, 1)).unwrap();
        let e = verify(&dir, &crcs).unwrap_err();
        assert!(e.starts_with("file 1 corrupted"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
