// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! apf-e2e: end-to-end test driver for asynchronous page faults, run in the
//! emulated arm64 KVM host. It runs apf-vmm (whose guest runs
//! /bin/apf-workload and powers off), echoes its output as it comes, and
//! checks the workload's verdict and that the guest's and the host's APF
//! counters agree and match `--expect`. With `--swap-zram` or `--swap-disk`
//! it provides swap for the cgroup memory mode, sets `vm.page-cluster` for
//! the run, and checks that the run swapped in from the device and that
//! the VMM's cgroup saw no OOM.
//!
//! Exit status: 0 pass, 1 fail, 2 bad usage.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use apf_vmm::e2e::args::{self, E2eArgs, E2eCommand};
use apf_vmm::e2e::check::{self, SwapDelta, VmmEnd};
use apf_vmm::e2e::diskstat::DiskStat;
use apf_vmm::e2e::parse::Observations;
use apf_vmm::e2e::swap::{self, DiskSwap, PageCluster, ZramSwap};
use apf_vmm::memcg::{self, MemcgReport};

const EXIT_FAIL: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Where the VMM's cgroup mode expects cgroup v2.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// After a kill, how long to wait for the rest of the output.
const DRAIN: Duration = Duration::from_secs(3);

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the command, echoing and parsing its stdout, until it exits or the
/// timeout kills it. Returns how it ended and its process id.
fn run_vmm(args: &E2eArgs, obs: &mut Observations) -> io::Result<(VmmEnd, u32)> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;

    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::Builder::new()
        .name("vmm-stdout".into())
        .spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // The guest console may carry any bytes.
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']).to_string();
                say(&line);
                if tx.send(line).is_err() {
                    break;
                }
            }
        })?;

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut timed_out = false;
    let mut drain_until = None;
    loop {
        let limit = drain_until.unwrap_or(deadline);
        let left = limit.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => obs.feed(&line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) if drain_until.is_none() => {
                say(&format!(
                    "e2e: the VMM is still running after {}s; killing it",
                    args.timeout_secs
                ));
                timed_out = true;
                let _ = child.kill();
                drain_until = Some(Instant::now() + DRAIN);
            }
            Err(RecvTimeoutError::Timeout) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let status: ExitStatus = child.wait()?;
    // The pipe is closed once the child is gone, unless it left a
    // descendant holding it; do not wait for that one.
    if reader.is_finished() {
        let _ = reader.join();
    }
    let end = if timed_out {
        VmmEnd::Timeout(args.timeout_secs)
    } else if let Some(code) = status.code() {
        VmmEnd::Exit(code)
    } else {
        VmmEnd::Signal(status.signal().unwrap_or(0))
    };
    Ok((end, pid))
}

/// A VMM in cgroup mode that was killed (by the OOM killer, or the
/// timeout) leaves its cgroup behind without printing its report: read
/// the report from there, then remove the cgroup.
fn left_behind_cgroup(pid: u32) -> Option<MemcgReport> {
    let dir = Path::new(CGROUP_ROOT).join(memcg::cgroup_name(pid));
    if !dir.is_dir() {
        return None;
    }
    let report = match MemcgReport::read(&dir) {
        Ok(r) => {
            say(&format!(
                "e2e: the VMM left {} behind: {}",
                dir.display(),
                r.line()
            ));
            Some(r)
        }
        Err(e) => {
            say(&format!("e2e: warning: {e}"));
            None
        }
    };
    if let Err(e) = std::fs::remove_dir(&dir) {
        say(&format!("e2e: warning: removing {}: {e}", dir.display()));
    }
    report
}

fn run(args: E2eArgs) -> u8 {
    let start = Instant::now();
    let sys_block = Path::new("/sys/block");

    if args.swap_zram_mib.is_some() || args.swap_disk.is_some() {
        // Swap is for the cgroup memory mode, which needs cgroup v2.
        match swap::ensure_cgroup2(Path::new(CGROUP_ROOT)) {
            Ok(true) => say(&format!("e2e: mounted cgroup2 on {CGROUP_ROOT}")),
            Ok(false) => {}
            // The VMM says so itself if it needs it.
            Err(e) => say(&format!("e2e: warning: {e}")),
        }
    }
    let _disk = match args.swap_disk.as_deref() {
        None => None,
        Some(name) => match DiskSwap::setup(Path::new("/dev"), sys_block, name) {
            Ok(d) => {
                say(&format!("e2e: swap on {}", d.device().display()));
                Some(d)
            }
            Err(e) => {
                say(&format!("e2e: check swap: FAIL ({e})"));
                say("e2e: FAIL (swap)");
                return EXIT_FAIL;
            }
        },
    };
    let zram = match args.swap_zram_mib {
        None => None,
        Some(mib) => match ZramSwap::setup(Path::new("/dev"), sys_block, "zram0", mib) {
            Ok(z) => {
                say(&format!("e2e: swap on {}, {mib} MiB", z.device().display()));
                Some(z)
            }
            Err(e) => {
                say(&format!("e2e: check swap: FAIL ({e})"));
                say("e2e: FAIL (swap)");
                return EXIT_FAIL;
            }
        },
    };

    let page_cluster = match args.page_cluster {
        None => None,
        Some(n) => match PageCluster::set(Path::new(swap::PAGE_CLUSTER), n) {
            Ok(pc) => {
                say(&format!("e2e: vm.page-cluster {} -> {n}", pc.saved()));
                Some(pc)
            }
            Err(e) => {
                say(&format!("e2e: check swap: FAIL ({e})"));
                say("e2e: FAIL (swap)");
                return EXIT_FAIL;
            }
        },
    };
    // The device whose reads are swap-ins, and its counters before the run.
    let swap_device = match (&args.swap_disk, args.swap_zram_mib) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(_)) => Some("zram0".to_string()),
        (None, None) => None,
    };
    let io_before = match &swap_device {
        None => None,
        Some(name) => match DiskStat::read(sys_block, name) {
            Ok(v) => Some((name.clone(), v)),
            Err(e) => {
                say(&format!("e2e: check swap: FAIL ({e})"));
                say("e2e: FAIL (swap)");
                return EXIT_FAIL;
            }
        },
    };

    let cmdline: Vec<String> = args
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    say(&format!("e2e: running {}", cmdline.join(" ")));
    let mut obs = Observations::default();
    for text in &args.console_has {
        obs.watch(text);
    }
    let (end, pid) = match run_vmm(&args, &mut obs) {
        Ok(r) => r,
        Err(e) => {
            say(&format!(
                "e2e: check vmm-exit: FAIL (cannot run {}: {e})",
                cmdline[0]
            ));
            say("e2e: FAIL (vmm-exit)");
            return EXIT_FAIL;
        }
    };
    let swap_delta: Option<SwapDelta> = io_before.map(|(name, before)| {
        let delta = DiskStat::read(sys_block, &name)
            .map(|after| after.since(&before))
            .map_err(|e| e.to_string());
        (name, delta)
    });
    if let Some(r) = left_behind_cgroup(pid) {
        obs.memcg.get_or_insert(r);
    }
    drop(page_cluster);
    drop(zram);

    let checks = check::evaluate(&obs, end, args.expect, &args.guest_min, swap_delta.as_ref());
    for c in &checks {
        say(&c.to_string());
    }
    let (ok, line) = check::verdict(
        &checks,
        &obs,
        start.elapsed().as_secs_f64(),
        swap_delta.as_ref(),
    );
    say(&line);
    if ok {
        0
    } else {
        EXIT_FAIL
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args::parse(argv) {
        Ok(E2eCommand::Help) => {
            print!("{}", args::usage());
            ExitCode::SUCCESS
        }
        Ok(E2eCommand::Run(a)) => ExitCode::from(run(a)),
        Err(e) => {
            eprintln!("apf-e2e: error: {e}\nTry 'apf-e2e --help'.");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
