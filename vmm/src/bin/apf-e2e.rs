// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! apf-e2e: end-to-end test driver for asynchronous page faults, run in the
//! emulated arm64 KVM host. It runs apf-vmm (whose guest runs
//! /bin/apf-workload and powers off), echoes its output as it comes, and
//! checks the workload's verdict and that the guest's and the host's APF
//! counters agree and match `--expect`. With `--swap-disk` it provides
//! swap for the cgroup memory mode, sets `vm.page-cluster` for the run, and
//! checks that the run swapped in from the device and that the VMM's
//! cgroup saw no OOM.
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

use apf_vmm::cgroup::{self, CGROUP_ROOT};
use apf_vmm::control;
use apf_vmm::e2e::args::{self, E2eArgs, MoveKind};
use apf_vmm::e2e::check::{self, SwapDelta, VmmEnd};
use apf_vmm::e2e::diskstat::DiskStat;
use apf_vmm::e2e::parse::Observations;
use apf_vmm::e2e::swap::{self, DiskSwap, PageCluster};
use apf_vmm::e2e::trace::{self, Tracer};
use apf_vmm::error::EXIT_FAILURE;
use apf_vmm::lines::Capture;
use apf_vmm::memcg::{self, MemcgReport};

/// After a kill, how long to wait for the rest of the output.
const DRAIN: Duration = Duration::from_secs(3);

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A line of a VMM process's output, its end, or a move's answer.
enum Ev {
    Line(usize, String),
    Eof(usize),
    Answer(usize, Result<String, String>),
}

/// One VMM process of the run.
struct Proc {
    child: std::process::Child,
    reader: Option<thread::JoinHandle<()>>,
    end: Option<VmmEnd>,
}

/// Starts `program args`, its stdout read line by line into `tx`.
fn spawn(
    program: &OsString,
    args: &[OsString],
    idx: usize,
    tx: &mpsc::Sender<Ev>,
) -> io::Result<Proc> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
    let tx = tx.clone();
    let reader = thread::Builder::new()
        .name(format!("vmm{idx}-stdout"))
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
                if tx.send(Ev::Line(idx, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ev::Eof(idx));
        })?;
    Ok(Proc {
        child,
        reader: Some(reader),
        end: None,
    })
}

fn end_of(status: ExitStatus) -> VmmEnd {
    match status.code() {
        Some(code) => VmmEnd::Exit(code),
        None => VmmEnd::Signal(status.signal().unwrap_or(0)),
    }
}

/// What the moves of a run left to check.
#[derive(Default)]
struct MoveLog {
    /// Exit status of each `restore --apf hidden` attempt.
    refusals: Vec<Option<i32>>,
}

fn scratch(kind: &str, n: usize) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("apf-e2e-{}-{kind}{n}", std::process::id()))
}

/// When move `k` stops the vCPUs.
fn stop_at(m: &apf_vmm::e2e::args::Moves, k: usize) -> control::StopAt {
    control::StopAt {
        min_parked: m.min_parked,
        unacked: m.unacked_at == Some(k),
    }
}

/// Asks the VMM behind `sock` for move `k` in a thread; the answer comes
/// back as `Ev::Answer(k, ..)`.
fn ask(sock: std::path::PathBuf, req: control::Request, k: usize, tx: &mpsc::Sender<Ev>) {
    let tx = tx.clone();
    thread::spawn(move || {
        let r = control::send(&sock, &req, Duration::from_secs(600)).map_err(|e| e.to_string());
        let _ = tx.send(Ev::Answer(k, r));
    });
}

/// Runs the VMM, echoing and parsing its output, until it exits or the
/// timeout kills it. With `--move`, moves the VM at each `--move-at` line:
/// a snapshot and a lazy restore (first trying, and expecting refused, a
/// restore with APF hidden), or a post-copy migration to a second VMM.
/// Returns how the VMM processes ended (the worst of them) and the first
/// one's process id.
fn run_vmm(args: &E2eArgs, obs: &mut Observations, log: &mut MoveLog) -> io::Result<(VmmEnd, u32)> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let (tx, rx) = mpsc::channel::<Ev>();
    let mut first_args = rest.to_vec();
    if args.moves.is_some() {
        first_args.extend(["--api-socket".into(), scratch("ctl", 0).into_os_string()]);
    }
    let mut procs = vec![spawn(program, &first_args, 0, &tx)?];
    let pid = procs[0].child.id();
    let mut current = 0;
    let mut next_move = 0;
    let mut moving = false;
    // A snapshot to restore once the VMM that saved it is gone, and
    // whether its guest had APF enabled (then a restore hiding it must be
    // refused).
    let mut to_restore: Option<(std::path::PathBuf, bool)> = None;
    // When the VM last started running somewhere else.
    let mut moved_at: Option<Instant> = None;

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut timed_out = false;
    let mut drain_until = None;
    loop {
        if procs.iter().all(|p| p.end.is_some()) && to_restore.is_none() && !moving {
            break;
        }
        let limit = drain_until.unwrap_or(deadline);
        let left = limit.saturating_duration_since(Instant::now());
        let ev = match rx.recv_timeout(left) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) if drain_until.is_none() => {
                say(&format!(
                    "e2e: the VMM is still running after {}s; killing it",
                    args.timeout_secs
                ));
                timed_out = true;
                for p in &mut procs {
                    let _ = p.child.kill();
                }
                drain_until = Some(Instant::now() + DRAIN);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => break,
        };
        match ev {
            Ev::Line(i, line) => {
                obs.feed(&line);
                let Some(m) = &args.moves else { continue };
                if i != current || moving || timed_out {
                    continue;
                }
                let Some(at) = m.at.get(next_move) else {
                    continue;
                };
                if !line.contains(at.as_str()) {
                    continue;
                }
                let k = next_move;
                next_move += 1;
                moving = true;
                let sock = scratch("ctl", k);
                match m.kind {
                    MoveKind::Snapshot => {
                        let dir = scratch("snap", k);
                        let _ = std::fs::remove_dir_all(&dir);
                        std::fs::create_dir_all(&dir)?;
                        say(&format!("e2e: move {k}: snapshot into {}", dir.display()));
                        let req = control::Request::Snapshot {
                            dir,
                            at: stop_at(m, k),
                        };
                        ask(sock, req, k, &tx);
                    }
                    MoveKind::Postcopy => {
                        let listen = scratch("rx", k);
                        let _ = std::fs::remove_file(&listen);
                        let dest: Vec<OsString> = vec![
                            "receive".into(),
                            "--listen".into(),
                            listen.clone().into_os_string(),
                            "--uffd-latency-us".into(),
                            m.latency_us.to_string().into(),
                            "--uffd-queue-depth".into(),
                            m.queue_depth.to_string().into(),
                            "--api-socket".into(),
                            scratch("ctl", k + 1).into_os_string(),
                        ];
                        say(&format!("e2e: move {k}: post-copy to {}", listen.display()));
                        procs.push(spawn(program, &dest, procs.len(), &tx)?);
                        moved_at = Some(Instant::now());
                        let t = Instant::now();
                        while !listen.exists() && t.elapsed() < Duration::from_secs(30) {
                            thread::sleep(Duration::from_millis(10));
                        }
                        let req = control::Request::Migrate {
                            to: listen,
                            at: stop_at(m, k),
                        };
                        ask(sock, req, k, &tx);
                    }
                }
            }
            Ev::Answer(k, answer) => {
                moving = false;
                match answer {
                    Ok(text) => {
                        say(&format!("e2e: move {k}: {text}"));
                        // `block_reasons=` lists the vCPUs with APF enabled.
                        let apf_on =
                            Capture::parse(&text).is_some_and(|c| !c.block_reasons.is_empty());
                        match args.moves.as_ref().map(|m| m.kind) {
                            Some(MoveKind::Snapshot) => {
                                to_restore = Some((scratch("snap", k), apf_on))
                            }
                            _ => current = procs.len() - 1,
                        }
                    }
                    Err(e) => say(&format!("e2e: move {k}: FAILED: {e}")),
                }
            }
            Ev::Eof(i) => {
                if let Some(r) = procs[i].reader.take() {
                    let _ = r.join();
                }
                let status = procs[i].child.wait()?;
                procs[i].end = Some(end_of(status));
            }
        }
        // The saving VMM is gone: refuse-check, then restore.
        if let (Some((dir, apf_on)), Some(m)) = (&to_restore, &args.moves) {
            if procs[current].end.is_some() && !timed_out {
                if *apf_on {
                    let code = Command::new(program)
                        .args(["restore", "--apf", "hidden", "--quiet", "--from"])
                        .arg(dir)
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .status()?
                        .code();
                    say(&format!(
                        "e2e: restore with --apf hidden: exit {code:?} (2 expected: refused)"
                    ));
                    log.refusals.push(code);
                }
                let k = next_move;
                let mut restore: Vec<OsString> = vec![
                    "restore".into(),
                    "--from".into(),
                    dir.clone().into_os_string(),
                    "--uffd-latency-us".into(),
                    m.latency_us.to_string().into(),
                    "--uffd-queue-depth".into(),
                    m.queue_depth.to_string().into(),
                    "--api-socket".into(),
                    scratch("ctl", k).into_os_string(),
                ];
                if m.prefetch {
                    restore.push("--prefetch".into());
                }
                say(&format!("e2e: restoring {}", dir.display()));
                procs.push(spawn(program, &restore, procs.len(), &tx)?);
                moved_at = Some(Instant::now());
                current = procs.len() - 1;
                to_restore = None;
            }
        }
    }
    if let Some(t) = moved_at {
        // The time the guest took to finish its work where it was moved
        // to (make bench's workload (e)).
        say(&format!(
            "e2e: after-move wall={:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    for p in &mut procs {
        if p.end.is_none() {
            let _ = p.child.kill();
            p.end = Some(end_of(p.child.wait()?));
        }
    }
    for k in 0..=next_move {
        let _ = std::fs::remove_dir_all(scratch("snap", k));
        let _ = std::fs::remove_file(scratch("ctl", k));
        let _ = std::fs::remove_file(scratch("rx", k));
    }
    let end = if timed_out {
        VmmEnd::Timeout(args.timeout_secs)
    } else {
        procs
            .iter()
            .filter_map(|p| p.end)
            .find(|e| *e != VmmEnd::Exit(0))
            .unwrap_or(VmmEnd::Exit(0))
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

    if args.swap_disk.is_some() {
        // Swap is for the cgroup memory mode, which needs cgroup v2.
        match cgroup::ensure_cgroup2(Path::new(CGROUP_ROOT)) {
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
                return EXIT_FAILURE;
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
                return EXIT_FAILURE;
            }
        },
    };
    // The device whose reads are swap-ins, and its counters before the run.
    let io_before = match &args.swap_disk {
        None => None,
        Some(name) => match DiskStat::read(sys_block, name) {
            Ok(v) => Some((name.clone(), v)),
            Err(e) => {
                say(&format!("e2e: check swap: FAIL ({e})"));
                say("e2e: FAIL (swap)");
                return EXIT_FAILURE;
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
    let mut log = MoveLog::default();
    // Measurement only: a run is not failed for want of tracing.
    let tracer = match args.trace {
        false => None,
        true => Tracer::start(Path::new(trace::TRACEFS))
            .map_err(|e| say(&format!("e2e: warning: trace: {e}")))
            .ok(),
    };
    let vmm = run_vmm(&args, &mut obs, &mut log);
    match tracer.map(Tracer::finish) {
        Some(Ok(b)) => say(&b.to_string()),
        Some(Err(e)) => say(&format!("e2e: warning: trace: {e}")),
        None => {}
    }
    let (end, pid) = match vmm {
        Ok(r) => r,
        Err(e) => {
            say(&format!(
                "e2e: check vmm-exit: FAIL (cannot run {}: {e})",
                cmdline[0]
            ));
            say("e2e: FAIL (vmm-exit)");
            return EXIT_FAILURE;
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

    let mut checks = check::evaluate(&obs, end, args.expect, &args.guest_min, swap_delta.as_ref());
    if let Some(m) = &args.moves {
        checks.extend(check::move_checks(
            m.at.len(),
            m.min_parked,
            m.unacked_at,
            &obs,
            &log.refusals,
        ));
    }
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
        EXIT_FAILURE
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args::parse(argv) {
        Ok(a) => ExitCode::from(run(a)),
        // Prints the help and exits 0, or the error and exits 2.
        Err(e) => e.exit(),
    }
}
