// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `apf-e2e --trace`: where the time of an asynchronous page fault goes,
//! from the host's KVM trace events during the run.
//!
//! Each PAGE_NOT_PRESENT (`kvm_async_pf_not_present`: token and IPA, on the
//! vCPU's thread) is followed through:
//! - **fetch**: until the async_pf worker has the page
//!   (`kvm_async_pf_completed`, the same IPA);
//! - **delivery**: from then until KVM wrote PAGE_READY and raised the PPI
//!   (`kvm_async_pf_ready`, the same token);
//! - **wait**: the part of the delivery spent waiting for the vCPU's
//!   block: from the fetch until the ACK of the PAGE_READY that the block
//!   held then, if any (0 if the block was free when the fetch finished);
//! - **ack**: from PAGE_READY until that vCPU thread's next hypercall
//!   (`kvm_hvc_arm64`): the guest's ACK, from its PPI handler;
//! - **retry**: from PAGE_READY until the next stage-2 fault on that page
//!   (`kvm_guest_fault`): the woken task running again and repeating the
//!   access, which maps the page. KVM maps the page before PAGE_READY
//!   when it can (`apf_ready_mapped`), and then the retry takes no fault:
//!   `retry_n` counts only the PAGE_READYs whose page still faulted. A
//!   fault on the page that turns into a new PAGE_NOT_PRESENT (the page
//!   was evicted again) is not a retry.
//!
//! [`Breakdown`]'s `Display` is the `e2e: trace ...` line: the medians and
//! 90th percentiles in microseconds (of TCG time in the emulated host:
//! compare within a run, not with hardware).

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where tracefs is mounted, or is to be.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// The events followed, as `events/` paths.
pub const EVENTS: [&str; 5] = [
    "kvm/kvm_async_pf_not_present",
    "kvm/kvm_async_pf_completed",
    "kvm/kvm_async_pf_ready",
    "kvm/kvm_hvc_arm64",
    "kvm/kvm_guest_fault",
];

/// Per-CPU trace buffer size during the run, in KiB: a storm of a few
/// thousand faults writes about five events each.
const BUFFER_KIB: u32 = 8192;

/// Guest pages, for matching IPAs.
const PAGE_SHIFT: u32 = 12;

/// What one trace line says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// PAGE_NOT_PRESENT for `token`, at `ipa`.
    NotPresent { token: u64, ipa: u64 },
    /// The fetch of `ipa` finished.
    Completed { ipa: u64 },
    /// PAGE_READY for `token`.
    Ready { token: u64 },
    /// A hypercall.
    Hvc,
    /// A stage-2 fault at `ipa`.
    GuestFault { ipa: u64 },
}

/// One event: the thread it ran on, when (in microseconds), and what.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    /// The task's pid (a vCPU thread, or the async_pf worker).
    pub pid: u32,
    /// Trace clock, microseconds.
    pub us: f64,
    /// What happened.
    pub kind: Kind,
}

/// A number as the events print it: `%#llx` (`0` has no `0x`).
fn hex(s: &str) -> Option<u64> {
    let s = s.trim_end_matches(',');
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

/// The value after `key ` in an event's fields.
fn field(fields: &str, key: &str) -> Option<u64> {
    let mut words = fields.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return hex(words.next()?);
        }
    }
    None
}

/// Parses a line of the `trace` file:
/// `TASK-PID [CPU] FLAGS SECONDS: EVENT: FIELDS`. Other lines give `None`.
pub fn parse_line(line: &str) -> Option<Event> {
    if line.starts_with('#') {
        return None;
    }
    let at = line.find(": kvm_")?;
    let (head, rest) = (&line[..at], &line[at + 2..]);
    let (name, fields) = rest.split_once(": ").unwrap_or((rest, ""));
    let secs: f64 = head.split_whitespace().last()?.parse().ok()?;
    let task = head.split('[').next()?.trim_end();
    let pid = task.rsplit_once('-')?.1.parse().ok()?;
    let kind = match name {
        "kvm_async_pf_not_present" => Kind::NotPresent {
            token: field(fields, "token")?,
            ipa: field(fields, "gva")?,
        },
        "kvm_async_pf_completed" => Kind::Completed {
            ipa: field(fields, "gva")?,
        },
        "kvm_async_pf_ready" => Kind::Ready {
            token: field(fields, "token")?,
        },
        "kvm_hvc_arm64" => Kind::Hvc,
        "kvm_guest_fault" => Kind::GuestFault {
            ipa: field(fields, "ipa")?,
        },
        _ => return None,
    };
    Some(Event {
        pid,
        us: secs * 1e6,
        kind,
    })
}

/// The times of one PAGE_NOT_PRESENT, as far as they were seen.
#[derive(Clone, Copy, Debug, Default)]
struct Fault {
    not_present: f64,
    completed: Option<f64>,
    /// When the vCPU's block was free for this PAGE_READY: the fetch, or
    /// the ACK of the PAGE_READY before on the vCPU if that came later.
    free: Option<f64>,
    ready: Option<f64>,
    ack: Option<f64>,
    retry: Option<f64>,
}

/// The median and 90th percentile of some durations, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    /// How many durations.
    pub n: usize,
    /// Their median.
    pub p50: f64,
    /// Their 90th percentile.
    pub p90: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Spread {
            n: v.len(),
            p50: at(0.5),
            p90: at(0.9),
        }
    }
}

/// Where the faults' time went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Breakdown {
    /// PAGE_NOT_PRESENTs seen.
    pub faults: usize,
    /// Not present to fetched.
    pub fetch: Spread,
    /// Fetched to PAGE_READY delivered.
    pub delivery: Spread,
    /// Of the delivery, fetched to the block free.
    pub wait: Spread,
    /// PAGE_READY to the vCPU's next hypercall (the ACK).
    pub ack: Spread,
    /// PAGE_READY to the next stage-2 fault on the page (the retry).
    pub retry: Spread,
}

/// Follows each PAGE_NOT_PRESENT of `events` (in time order) through the
/// later events.
pub fn breakdown(events: &[Event]) -> Breakdown {
    let page = |ipa: u64| ipa >> PAGE_SHIFT;
    let mut faults: Vec<Fault> = Vec::new();
    let mut fetching: HashMap<u64, VecDeque<usize>> = HashMap::new();
    let mut waiting: HashMap<u64, usize> = HashMap::new();
    let mut unacked: HashMap<u32, Vec<usize>> = HashMap::new();
    // Each vCPU thread's last ACK of a PAGE_READY.
    let mut acked: HashMap<u32, f64> = HashMap::new();
    let mut unretried: HashMap<u64, Vec<usize>> = HashMap::new();
    // The faults whose retry the last stage-2 fault on a page was taken for.
    let mut retried: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut ipa_of: Vec<u64> = Vec::new();
    for e in events {
        match e.kind {
            Kind::NotPresent { token, ipa } => {
                let i = faults.len();
                faults.push(Fault {
                    not_present: e.us,
                    ..Fault::default()
                });
                ipa_of.push(ipa);
                // The stage-2 fault just before was this new one, not the
                // retry of an earlier PAGE_READY for the page.
                for j in retried.remove(&page(ipa)).unwrap_or_default() {
                    faults[j].retry = None;
                }
                fetching.entry(page(ipa)).or_default().push_back(i);
                waiting.insert(token, i);
            }
            Kind::Completed { ipa } => {
                if let Some(i) = fetching.get_mut(&page(ipa)).and_then(VecDeque::pop_front) {
                    faults[i].completed = Some(e.us);
                }
            }
            Kind::Ready { token } => {
                // The wake-all token and tokens from before the trace match
                // nothing.
                if let Some(i) = waiting.remove(&token) {
                    let f = &mut faults[i];
                    f.ready = Some(e.us);
                    f.free = f
                        .completed
                        .map(|c| acked.get(&e.pid).map_or(c, |&a| a.max(c)));
                    unacked.entry(e.pid).or_default().push(i);
                    unretried.entry(page(ipa_of[i])).or_default().push(i);
                }
            }
            Kind::Hvc => {
                if let Some(acks) = unacked.remove(&e.pid) {
                    for i in acks {
                        faults[i].ack = Some(e.us);
                    }
                    acked.insert(e.pid, e.us);
                }
            }
            Kind::GuestFault { ipa } => {
                let now = unretried.remove(&page(ipa)).unwrap_or_default();
                for &i in &now {
                    faults[i].retry = Some(e.us);
                }
                retried.insert(page(ipa), now);
            }
        }
    }
    let span = |from: fn(&Fault) -> Option<f64>, to: fn(&Fault) -> Option<f64>| {
        Spread::of(
            faults
                .iter()
                .filter_map(|f| Some(to(f)? - from(f)?))
                .collect(),
        )
    };
    Breakdown {
        faults: faults.len(),
        fetch: span(|f| Some(f.not_present), |f| f.completed),
        delivery: span(|f| f.completed, |f| f.ready),
        wait: span(|f| f.completed, |f| f.free),
        ack: span(|f| f.ready, |f| f.ack),
        retry: span(|f| f.ready, |f| f.retry),
    }
}

impl fmt::Display for Breakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e2e: trace faults={}", self.faults)?;
        for (name, s) in [
            ("fetch", self.fetch),
            ("delivery", self.delivery),
            ("wait", self.wait),
            ("ack", self.ack),
            ("retry", self.retry),
        ] {
            write!(
                f,
                " {name}_n={} {name}_us={:.0} {name}_p90_us={:.0}",
                s.n, s.p50, s.p90
            )?;
        }
        Ok(())
    }
}

/// The trace events of a run, on from [`Tracer::start`] until
/// [`Tracer::finish`] or drop.
pub struct Tracer {
    root: PathBuf,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Tracer {
    /// Mounts tracefs at `root` if it is not there, empties the buffer and
    /// turns the [`EVENTS`] on.
    pub fn start(root: &Path) -> io::Result<Tracer> {
        if !root.join("trace").exists() {
            let dir = CString::new(root.as_os_str().as_encoded_bytes())?;
            // SAFETY: Both strings are NUL-terminated and outlive the call;
            // tracefs takes no data.
            let r = unsafe {
                libc::mount(
                    c"nodev".as_ptr(),
                    dir.as_ptr(),
                    c"tracefs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let tracer = Tracer {
            root: root.to_path_buf(),
        };
        write(&root.join("tracing_on"), "0")?;
        write(&root.join("buffer_size_kb"), &BUFFER_KIB.to_string())?;
        write(&root.join("trace"), "")?;
        for e in EVENTS {
            write(&root.join("events").join(e).join("enable"), "1")?;
        }
        write(&root.join("tracing_on"), "1")?;
        Ok(tracer)
    }

    /// Stops tracing and follows the faults through what was recorded.
    pub fn finish(self) -> io::Result<Breakdown> {
        write(&self.root.join("tracing_on"), "0")?;
        let text = fs::read_to_string(self.root.join("trace"))?;
        let events: Vec<Event> = text.lines().filter_map(parse_line).collect();
        Ok(breakdown(&events))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = write(&self.root.join("tracing_on"), "0");
        for e in EVENTS {
            let _ = write(&self.root.join("events").join(e).join("enable"), "0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = "\
# tracer: nop
#
           vcpu0-145     [001] d..1.   100.000100: kvm_async_pf_not_present: token 0x1001 gva 0x4a000
  kworker/u8:2-45      [000] .....   100.001100: kvm_async_pf_completed: gva 0x4a000 address 0xffff8000
           vcpu0-145     [001] d..1.   100.001400: kvm_async_pf_ready: token 0x1001 gva 0x4a000
           vcpu0-145     [001] .....   100.001500: kvm_hvc_arm64: HVC at 0x0000ffff12345678 (r0: 0x00000000c6000010, imm: 0x0)
           vcpu1-146     [000] .....   100.001700: kvm_guest_fault: ipa 0x4a008, hsr 0x92000007, hxfar 0x12345008, pc 0x0000aaaa00001000
           vcpu1-146     [000] d..1.   100.002000: kvm_async_pf_not_present: token 0 gva 0x5b000
           vcpu1-146     [000] d..1.   100.003000: kvm_async_pf_ready: token 0xffffffff gva 0
";

    fn events() -> Vec<Event> {
        LINES.lines().filter_map(parse_line).collect()
    }

    #[test]
    fn parses_each_event() {
        let e = events();
        assert_eq!(e.len(), 7);
        assert_eq!(e[0].pid, 145);
        assert!((e[0].us - 100_000_100.0).abs() < 1.0);
        assert_eq!(
            e[0].kind,
            Kind::NotPresent {
                token: 0x1001,
                ipa: 0x4a000
            }
        );
        assert_eq!(e[1].pid, 45);
        assert_eq!(e[1].kind, Kind::Completed { ipa: 0x4a000 });
        assert_eq!(e[2].kind, Kind::Ready { token: 0x1001 });
        assert_eq!(e[3].kind, Kind::Hvc);
        assert_eq!(e[4].kind, Kind::GuestFault { ipa: 0x4a008 });
        assert_eq!(
            e[5].kind,
            Kind::NotPresent {
                token: 0,
                ipa: 0x5b000
            }
        );
        assert!(parse_line("# tracer: nop").is_none());
        assert!(parse_line("  vcpu0-1 [000] ..... 1.0: sched_switch: x").is_none());
        assert!(parse_line("garbage: kvm_async_pf_ready: token zz").is_none());
    }

    #[test]
    fn follows_a_fault_through() {
        let b = breakdown(&events());
        assert_eq!(b.faults, 2);
        let one = |s: Spread, us: f64| {
            assert_eq!(s.n, 1, "{s:?}");
            assert!((s.p50 - us).abs() < 1.0, "{s:?} against {us}");
        };
        one(b.fetch, 1000.0);
        one(b.delivery, 300.0);
        // The block was free when the fetch finished.
        one(b.wait, 0.0);
        one(b.ack, 100.0);
        // Any vCPU's fault on the page counts as the retry.
        one(b.retry, 300.0);
        let line = b.to_string();
        assert!(
            line.starts_with("e2e: trace faults=2 fetch_n=1 fetch_us=1000 "),
            "{line}"
        );
        assert!(
            line.contains(" retry_n=1 retry_us=300 retry_p90_us=300"),
            "{line}"
        );
    }

    #[test]
    fn a_new_fault_on_the_page_is_not_a_retry() {
        // The page was mapped before PAGE_READY; evicted, it faults again
        // later, and that fault turns into PAGE_NOT_PRESENT.
        let mut e = events();
        e.truncate(4);
        e.extend(
            [
                "vcpu0-145 [001] ..... 100.009000: kvm_guest_fault: ipa 0x4a000, hsr 0x92000007, hxfar 0x1, pc 0x2",
                "vcpu0-145 [001] d..1. 100.009010: kvm_async_pf_not_present: token 0x2001 gva 0x4a000",
                "vcpu0-145 [001] ..... 100.012000: kvm_guest_fault: ipa 0x4a000, hsr 0x92000007, hxfar 0x1, pc 0x2",
            ]
            .iter()
            .filter_map(|l| parse_line(l)),
        );
        let b = breakdown(&e);
        assert_eq!((b.faults, b.retry.n), (2, 0));
        // Without the new PAGE_NOT_PRESENT, the fault is the retry.
        e.remove(5);
        let b = breakdown(&e);
        assert_eq!((b.faults, b.retry.n), (1, 1));
        assert!((b.retry.p50 - 7600.0).abs() < 1.0, "{:?}", b.retry);
    }

    #[test]
    fn waits_for_the_ack_of_the_event_before() {
        // The second fetch ends while the block holds the first
        // PAGE_READY; the third after the second's ACK.
        let e: Vec<Event> = [
            "vcpu0-145 [001] d..1. 100.000100: kvm_async_pf_not_present: token 0x1001 gva 0x4a000",
            "vcpu0-145 [001] d..1. 100.000200: kvm_async_pf_not_present: token 0x2001 gva 0x5b000",
            "vcpu0-145 [001] d..1. 100.000300: kvm_async_pf_not_present: token 0x3001 gva 0x6c000",
            "kworker-45 [000] ..... 100.001000: kvm_async_pf_completed: gva 0x4a000 address 0x1",
            "kworker-45 [000] ..... 100.001100: kvm_async_pf_completed: gva 0x5b000 address 0x1",
            "vcpu0-145 [001] d..1. 100.001300: kvm_async_pf_ready: token 0x1001 gva 0x4a000",
            "vcpu0-145 [001] ..... 100.001500: kvm_hvc_arm64: HVC at 0x1 (r0: 0xc6000060, imm: 0x0)",
            "vcpu0-145 [001] d..1. 100.001700: kvm_async_pf_ready: token 0x2001 gva 0x5b000",
            "vcpu0-145 [001] ..... 100.001800: kvm_hvc_arm64: HVC at 0x1 (r0: 0xc6000060, imm: 0x0)",
            "kworker-45 [000] ..... 100.002000: kvm_async_pf_completed: gva 0x6c000 address 0x1",
            "vcpu0-145 [001] d..1. 100.002300: kvm_async_pf_ready: token 0x3001 gva 0x6c000",
        ]
        .iter()
        .filter_map(|l| parse_line(l))
        .collect();
        let b = breakdown(&e);
        assert_eq!(b.faults, 3);
        let near = |s: Spread, p50: f64, p90: f64| {
            assert_eq!(s.n, 3, "{s:?}");
            assert!(
                (s.p50 - p50).abs() < 1.0 && (s.p90 - p90).abs() < 1.0,
                "{s:?}"
            );
        };
        // Waits of 0, 400 (1100 to the ACK at 1500) and 0 us.
        near(b.wait, 0.0, 400.0);
        // Deliveries of 300, 600 and 300 us.
        near(b.delivery, 300.0, 600.0);
        assert!(b
            .to_string()
            .contains(" wait_n=3 wait_us=0 wait_p90_us=400 "));
    }

    #[test]
    fn spread_of_durations() {
        let s = Spread::of((1..=10).map(f64::from).collect());
        assert_eq!((s.n, s.p50, s.p90), (10, 6.0, 9.0));
        assert_eq!(Spread::of(Vec::new()), Spread::default());
    }
}
