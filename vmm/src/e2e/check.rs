// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The checks of an end-to-end run, from what was observed and how the VMM
//! ended.

use std::fmt;

use super::args::Expect;
use super::diskstat::DiskStat;
use super::parse::{GuestApf, Observations, Workload};

/// What a run with swap set up adds: the swap device's name and the
/// increase of its I/O counters over the run, or why they are not known.
pub type SwapDelta = (String, Result<DiskStat, String>);

/// How the VMM process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmEnd {
    /// Exited with this status.
    Exit(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed by the driver after `--timeout`.
    Timeout(u64),
}

/// One check and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// Passed.
    pub ok: bool,
    /// What was seen.
    pub details: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "e2e: check {}: {} ({})",
            self.name,
            if self.ok { "ok" } else { "FAIL" },
            self.details
        )
    }
}

/// A check named `name`.
pub fn check(name: &'static str, ok: bool, details: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        details: details.into(),
    }
}

/// The guest's counters to compare with: its shutdown line, or zeros if
/// the guest found no APF service (it then prints no shutdown line).
fn guest_counts(obs: &Observations) -> Option<GuestApf> {
    match (obs.guest, obs.guest_not_offered) {
        (Some(g), _) => Some(g),
        (None, true) => Some(GuestApf::default()),
        (None, false) => None,
    }
}

/// Bytes as MiB with one decimal, or `max`.
fn mib(bytes: u64) -> String {
    if bytes == u64::MAX {
        "max".to_string()
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

/// The checks of a run with swap: swap-ins from the device happened, and
/// the VMM's cgroup saw no OOM (neither an OOM kill nor a failed charge).
fn swap_checks(obs: &Observations, swap: &SwapDelta) -> [Check; 2] {
    let (device, delta) = swap;
    let swap_in = match delta {
        Ok(d) => {
            let mut details = format!(
                "/dev/{device}: read {} KiB in {} requests ({} ms waiting), wrote {} KiB",
                d.read_kib(),
                d.read_ios,
                d.read_ms,
                d.write_kib()
            );
            if let Some(r) = &obs.memcg {
                details += &format!(
                    "; cgroup: pgmajfault={} workingset_refault_anon={}",
                    r.pgmajfault, r.workingset_refault_anon
                );
            }
            check("swap-in", d.read_ios > 0, details)
        }
        Err(e) => check("swap-in", false, e.clone()),
    };
    let no_oom = match &obs.memcg {
        Some(r) => check(
            "no-oom",
            r.oom == 0 && r.oom_kill == 0,
            format!(
                "cgroup: oom={} oom_kill={}, events high={} max={}, peak {} (high {}, max {})",
                r.oom,
                r.oom_kill,
                r.events_high,
                r.events_max,
                mib(r.peak),
                mib(r.high),
                mib(r.max)
            ),
        ),
        None => check("no-oom", false, "no report of the VMM's cgroup"),
    };
    [swap_in, no_oom]
}

/// Evaluates every check, in the order they are reported. `swap` is given
/// for a run with swap set up.
pub fn evaluate(
    obs: &Observations,
    end: VmmEnd,
    expect: Expect,
    guest_min: &[(String, u64)],
    swap: Option<&SwapDelta>,
) -> Vec<Check> {
    let mut checks = Vec::new();

    checks.push(match end {
        VmmEnd::Exit(0) => check("vmm-exit", true, "exit status 0, guest powered off"),
        VmmEnd::Exit(n) => check("vmm-exit", false, format!("exit status {n}")),
        VmmEnd::Signal(s) => check("vmm-exit", false, format!("killed by signal {s}")),
        VmmEnd::Timeout(t) => check(
            "vmm-exit",
            false,
            format!("still running after {t}s, killed"),
        ),
    });

    checks.push(match &obs.workload {
        Some(Workload::Ok(s)) => check("workload", true, s.clone()),
        Some(Workload::Fail(s)) => check("workload", false, format!("FAIL {s}")),
        None => check("workload", false, "no 'workload: ok' line"),
    });

    let guest = guest_counts(obs);
    checks.push(match (obs.guest, expect) {
        (Some(g), _) => check(
            "guest-shutdown",
            true,
            format!(
                "not_present={} ready={} wake_all={}",
                g.not_present, g.ready, g.wake_all
            ),
        ),
        // With APF hidden the guest never starts it, so it has nothing
        // to report at shutdown; it says so at boot instead.
        (None, Expect::None) if obs.guest_not_offered => check(
            "guest-shutdown",
            true,
            "no shutdown line; the guest found no APF service",
        ),
        (None, _) => check("guest-shutdown", false, "no 'apf_guest: shutdown:' line"),
    });

    let host = obs.host_total();
    checks.push(if obs.host.is_empty() || !obs.host_unavailable.is_empty() {
        check(
            "host-stats",
            false,
            format!(
                "{} vCPU stats lines, unavailable for vCPUs {:?}",
                obs.host.len(),
                obs.host_unavailable
            ),
        )
    } else {
        check(
            "host-stats",
            true,
            format!(
                "{} vCPUs: apf_not_present={} apf_ready={}",
                obs.host.len(),
                host.not_present,
                host.ready
            ),
        )
    });

    checks.push(match guest {
        Some(g) => {
            let ok =
                !obs.host.is_empty() && host.not_present == g.not_present && host.ready == g.ready;
            check(
                "host-guest-agree",
                ok,
                format!(
                    "not_present host={} guest={}, ready host={} guest={}",
                    host.not_present, g.not_present, host.ready, g.ready
                ),
            )
        }
        None => check("host-guest-agree", false, "no guest counters to compare"),
    });

    match expect {
        Expect::Any => {}
        Expect::Events => {
            let g = guest.unwrap_or_default();
            checks.push(check(
                "events",
                g.not_present > 0 && g.ready > 0,
                format!("guest not_present={} ready={}", g.not_present, g.ready),
            ));
            // KVM maps a fetched page before its PAGE_READY when it is
            // still in, so that the woken task's retry does not fault.
            checks.push(check(
                "ready-mapped",
                host.ready_mapped > 0 && host.ready_mapped <= host.ready,
                format!(
                    "apf_ready_mapped={} of apf_ready={}",
                    host.ready_mapped, host.ready
                ),
            ));
        }
        Expect::None => {
            let g = guest.unwrap_or_default();
            checks.push(check(
                "apf-hidden",
                guest.is_some() && host.not_present == 0 && g.not_present == 0 && g.ready == 0,
                format!(
                    "host not_present={}, guest not_present={} ready={}",
                    host.not_present, g.not_present, g.ready
                ),
            ));
        }
    }
    for (text, seen) in &obs.watched {
        checks.push(check("console-has", *seen, format!("{text:?}")));
    }
    for (name, min) in guest_min {
        checks.push(match obs.kvm_apf.get(name) {
            Some(&v) => check(
                "guest-min",
                v >= *min,
                format!("{name}={v}, at least {min}"),
            ),
            None => check("guest-min", false, format!("no kvm_apf {name} line")),
        });
    }
    if let Some(delta) = swap {
        checks.extend(swap_checks(obs, delta));
    }
    checks
}

/// The checks of a run that moved the VM: every move was made and
/// reported, each with at least `min_parked` tasks parked (faults in
/// flight, and PAGE_READYs the guest has not consumed), move
/// `unacked_at` with a PAGE_READY the guest had not ACKed, and every
/// attempt to restore a snapshot with APF hidden (`refusals`: its exit
/// status) was refused.
pub fn move_checks(
    moves: usize,
    min_parked: u32,
    unacked_at: Option<usize>,
    obs: &Observations,
    refusals: &[Option<i32>],
) -> Vec<Check> {
    let seen = &obs.moves;
    let mut checks = vec![check(
        "moves",
        seen.len() == moves,
        format!("{} of {moves} moves reported by the VMM", seen.len()),
    )];
    let in_flight: Vec<u64> = seen.iter().map(|m| m.in_flight).collect();
    let unacked: Vec<u64> = seen.iter().map(|m| m.ready_unacked).collect();
    checks.push(check(
        "in-flight",
        !seen.is_empty()
            && seen
                .iter()
                .all(|m| m.in_flight + m.ready_unacked >= u64::from(min_parked)),
        format!(
            "faults in flight at each stop {in_flight:?}, un-ACKed PAGE_READY {unacked:?} \
             (tasks parked: at least {min_parked})"
        ),
    ));
    if let Some(k) = unacked_at {
        let n = unacked.get(k).copied().unwrap_or(0);
        checks.push(check(
            "ack-after-save",
            n >= 1,
            format!("move {k} stopped with {n} un-ACKed PAGE_READY (the guest ACKs it after the restore)"),
        ));
    }
    // Every task parked when the VM stopped is woken by the wake-all of the
    // VM that takes over: the guest's count of tasks a wake-all woke must
    // reach the faults that were in flight at the stops.
    let parked: u64 = in_flight.iter().sum();
    checks.push(match obs.kvm_apf.get("wake_all_woken") {
        Some(&woken) => check(
            "parked-woken",
            woken >= parked,
            format!("{woken} tasks woken by a wake-all, {parked} faults in flight at the stops"),
        ),
        // A guest without APF has no /proc/kvm_apf, and nothing parked.
        None => check(
            "parked-woken",
            parked == 0,
            format!("no kvm_apf wake_all_woken line, {parked} faults in flight at the stops"),
        ),
    });
    if !refusals.is_empty() {
        checks.push(check(
            "refuse-hidden",
            refusals.iter().all(|c| *c == Some(2)),
            format!("restore with --apf hidden exited {refusals:?} (2: refused)"),
        ));
    }
    checks
}

/// The final line: `e2e: PASS not_present=N ready=M wall=Xs` or `e2e: FAIL
/// (checks) wall=Xs`, followed by ` swap_read_kib=N` (read from the swap
/// device) for a run with swap and ` peak_mib=X.X` (the cgroup's
/// memory.peak) for one in a cgroup.
pub fn verdict(
    checks: &[Check],
    obs: &Observations,
    wall_secs: f64,
    swap: Option<&SwapDelta>,
) -> (bool, String) {
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let g = guest_counts(obs).unwrap_or_default();
    let mut extra = String::new();
    if let Some((_, Ok(d))) = swap {
        extra += &format!(" swap_read_kib={}", d.read_kib());
    }
    if let Some(r) = &obs.memcg {
        extra += &format!(" peak_mib={:.1}", r.peak as f64 / f64::from(1u32 << 20));
    }
    if failed.is_empty() {
        (
            true,
            format!(
                "e2e: PASS not_present={} ready={} wall={wall_secs:.1}s{extra}",
                g.not_present, g.ready
            ),
        )
    } else {
        (
            false,
            format!(
                "e2e: FAIL ({}) wall={wall_secs:.1}s{extra}",
                failed.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(lines: &[&str]) -> Observations {
        let mut o = Observations::default();
        for l in lines {
            o.feed(l);
        }
        o
    }

    fn names_failed(c: &[Check]) -> Vec<&'static str> {
        c.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    const GOOD: [&str; 4] = [
        "workload: ok procs=2 threads=2 mib=48 rounds=4 pages=12288 compute_iters=99",
        "[    5.000000] apf_guest: shutdown: not_present=7 ready=7 wake_all=0",
        "apf: vcpu0 apf_not_present=3 apf_ready=3 apf_ready_mapped=2",
        "apf: vcpu1 apf_not_present=4 apf_ready=4 apf_ready_mapped=4",
    ];

    #[test]
    fn passing_events_run() {
        let o = obs(&GOOD);
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &[], None);
        assert_eq!(names_failed(&c), Vec::<&str>::new());
        assert_eq!(c.len(), 7);
        let (ok, line) = verdict(&c, &o, 12.34, None);
        assert!(ok);
        assert_eq!(line, "e2e: PASS not_present=7 ready=7 wall=12.3s");
        assert_eq!(
            c[4].to_string(),
            "e2e: check host-guest-agree: ok (not_present host=7 guest=7, ready host=7 guest=7)"
        );
        // The same run does not pass as "none".
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::None, &[], None);
        assert_eq!(names_failed(&c), vec!["apf-hidden"]);
        // Nor with a mismatch.
        let mut o2 = o.clone();
        o2.feed("apf: vcpu1 apf_not_present=5 apf_ready=4");
        let c = evaluate(&o2, VmmEnd::Exit(0), Expect::Any, &[], None);
        assert_eq!(names_failed(&c), vec!["host-guest-agree"]);
    }

    #[test]
    fn events_need_pages_mapped_before_ready() {
        let mapped = |vcpu0: &str| {
            let mut lines = GOOD;
            lines[2] = vcpu0;
            evaluate(&obs(&lines), VmmEnd::Exit(0), Expect::Events, &[], None)
        };
        // The vCPU 1 line of GOOD maps all 4; none mapped on vCPU 0 is fine.
        let c = mapped("apf: vcpu0 apf_not_present=3 apf_ready=3 apf_ready_mapped=0");
        assert_eq!(names_failed(&c), Vec::<&str>::new());
        assert_eq!(
            c[6].to_string(),
            "e2e: check ready-mapped: ok (apf_ready_mapped=4 of apf_ready=7)"
        );
        // More mapped than delivered cannot be.
        let c = mapped("apf: vcpu0 apf_not_present=3 apf_ready=3 apf_ready_mapped=4");
        assert_eq!(names_failed(&c), vec!["ready-mapped"]);
        // Nothing mapped at all, or a kernel that does not count it.
        let mut lines = GOOD;
        lines[2] = "apf: vcpu0 apf_not_present=3 apf_ready=3";
        lines[3] = "apf: vcpu1 apf_not_present=4 apf_ready=4 apf_ready_mapped=0";
        let c = evaluate(&obs(&lines), VmmEnd::Exit(0), Expect::Events, &[], None);
        assert_eq!(names_failed(&c), vec!["ready-mapped"]);
        // Not asked for by the other expectations.
        let c = evaluate(&obs(&lines), VmmEnd::Exit(0), Expect::Any, &[], None);
        assert_eq!(names_failed(&c), Vec::<&str>::new());
    }

    #[test]
    fn hidden_run_without_shutdown_line() {
        let o = obs(&[
            "[    0.3] apf_guest: not offered by the hypervisor",
            "workload: ok procs=2",
            "apf: vcpu0 apf_not_present=0 apf_ready=0",
        ]);
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::None, &[], None);
        assert_eq!(names_failed(&c), Vec::<&str>::new());
        assert!(verdict(&c, &o, 1.0, None).0);
        // Expecting events from it fails on the missing line and counts.
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &[], None);
        assert_eq!(
            names_failed(&c),
            vec!["guest-shutdown", "events", "ready-mapped"]
        );
    }

    #[test]
    fn failures_are_named() {
        let o = obs(&["workload: FAIL proc=0 thread=1 page=3 expected=0x1 got=0x0"]);
        let c = evaluate(&o, VmmEnd::Timeout(600), Expect::Events, &[], None);
        assert_eq!(
            names_failed(&c),
            vec![
                "vmm-exit",
                "workload",
                "guest-shutdown",
                "host-stats",
                "host-guest-agree",
                "events",
                "ready-mapped"
            ]
        );
        assert!(c[0].details.contains("600s"));
        let (ok, line) = verdict(&c, &o, 600.0, None);
        assert!(!ok);
        assert!(line.starts_with("e2e: FAIL (vmm-exit, workload"));

        let c = evaluate(&obs(&GOOD), VmmEnd::Signal(9), Expect::Any, &[], None);
        assert_eq!(names_failed(&c), vec!["vmm-exit"]);
        let c = evaluate(&obs(&GOOD), VmmEnd::Exit(1), Expect::Any, &[], None);
        assert_eq!(names_failed(&c), vec!["vmm-exit"]);

        let mut o = obs(&GOOD);
        o.feed("apf: vcpu2 statistics unavailable: EIO");
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &[], None);
        assert_eq!(names_failed(&c), vec!["host-stats"]);
    }

    #[test]
    fn swap_runs() {
        use crate::memcg::MemcgReport;

        let report = MemcgReport {
            high: 48 << 20,
            max: 72 << 20,
            peak: 50 << 20,
            events_high: 300,
            pgmajfault: 1400,
            workingset_refault_anon: 1500,
            ..MemcgReport::default()
        };
        let mut o = obs(&GOOD);
        o.feed(&report.line());
        let io = DiskStat {
            read_ios: 1500,
            read_sectors: 12000,
            read_ms: 900,
            write_ios: 2000,
            write_sectors: 16000,
        };
        let good: SwapDelta = ("vda".into(), Ok(io));
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &[], Some(&good));
        assert_eq!(names_failed(&c), Vec::<&str>::new());
        assert_eq!(c.len(), 9);
        assert_eq!(
            c[7].to_string(),
            "e2e: check swap-in: ok (/dev/vda: read 6000 KiB in 1500 requests (900 ms waiting), \
             wrote 8000 KiB; cgroup: pgmajfault=1400 workingset_refault_anon=1500)"
        );
        assert_eq!(
            c[8].to_string(),
            "e2e: check no-oom: ok (cgroup: oom=0 oom_kill=0, events high=300 max=0, \
             peak 50.0 MiB (high 48.0 MiB, max 72.0 MiB))"
        );
        let (ok, line) = verdict(&c, &o, 60.04, Some(&good));
        assert!(ok);
        assert_eq!(
            line,
            "e2e: PASS not_present=7 ready=7 wall=60.0s swap_read_kib=6000 peak_mib=50.0"
        );

        // Nothing read back from the device: the case did not swap in.
        let none: SwapDelta = (
            "vda".into(),
            Ok(DiskStat {
                write_ios: 10,
                ..DiskStat::default()
            }),
        );
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &[], Some(&none));
        assert_eq!(names_failed(&c), vec!["swap-in"]);

        // No cgroup report (the VMM was killed), or an OOM in the cgroup.
        let c = evaluate(
            &obs(&GOOD),
            VmmEnd::Signal(9),
            Expect::Events,
            &[],
            Some(&good),
        );
        assert_eq!(names_failed(&c), vec!["vmm-exit", "no-oom"]);
        assert_eq!(c[8].details, "no report of the VMM's cgroup");
        for r in [
            MemcgReport { oom: 1, ..report },
            MemcgReport {
                oom_kill: 1,
                ..report
            },
        ] {
            let mut o2 = obs(&GOOD);
            o2.feed(&r.line());
            let c = evaluate(&o2, VmmEnd::Exit(0), Expect::Events, &[], Some(&good));
            assert_eq!(names_failed(&c), vec!["no-oom"]);
            let (ok, line) = verdict(&c, &o2, 1.0, Some(&good));
            assert!(!ok);
            assert_eq!(
                line,
                "e2e: FAIL (no-oom) wall=1.0s swap_read_kib=6000 peak_mib=50.0"
            );
        }

        // The device's counters could not be read.
        let err: SwapDelta = ("vda".into(), Err("/sys/block/vda/stat: gone".into()));
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &[], Some(&err));
        assert_eq!(names_failed(&c), vec!["swap-in"]);
        assert_eq!(c[7].details, "/sys/block/vda/stat: gone");
        let (_, line) = verdict(&c, &o, 1.0, Some(&err));
        assert!(line.ends_with("wall=1.0s peak_mib=50.0"), "{line}");
        assert_eq!(mib(u64::MAX), "max");
    }

    #[test]
    fn guest_min_needs_the_counter_at_least_that_high() {
        let mut o = obs(&GOOD);
        o.feed("workload: kvm_apf killed 2");
        let min = |n: u64| [("killed".to_string(), n)];
        let failed = |c: &[Check]| c.iter().filter(|c| !c.ok).count();
        assert_eq!(
            failed(&evaluate(
                &o,
                VmmEnd::Exit(0),
                Expect::Events,
                &min(2),
                None
            )),
            0
        );
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &min(3), None);
        assert_eq!(
            c.iter()
                .filter(|c| !c.ok)
                .map(|c| c.name)
                .collect::<Vec<_>>(),
            ["guest-min"]
        );
        let absent = [("migrated".to_string(), 0)];
        assert_eq!(
            failed(&evaluate(
                &o,
                VmmEnd::Exit(0),
                Expect::Events,
                &absent,
                None
            )),
            1
        );
    }

    #[test]
    fn console_has_needs_a_line_with_the_text() {
        let mut o = Observations::default();
        o.watch("ACPI: APIC ");
        o.watch("never");
        for line in GOOD {
            o.feed(line);
        }
        o.feed("[    0.000000] ACPI: APIC 0x000000004FF101F0 0000F8 (v01 APFVMM APFVMM   00000001 RVAT 01000000)");
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events, &[], None);
        let failed: Vec<_> = c
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.details.as_str())
            .collect();
        assert_eq!(failed, ["\"never\""]);
    }

    #[test]
    fn move_checks_need_every_move_the_parked_woken_and_refusals() {
        let moved = |woken: &str| {
            obs(&[
                "snapshot: saved /s vcpus=2 in_flight=2 ready_unacked=0 block_reasons=vcpu0:1 pages=3",
                "snapshot: saved /t vcpus=2 in_flight=1 ready_unacked=1 block_reasons=vcpu0:2 pages=3",
                woken,
            ])
        };
        let o = moved("workload: kvm_apf wake_all_woken 3");
        assert!(names_failed(&move_checks(2, 1, Some(1), &o, &[Some(2), Some(2)])).is_empty());
        // One parked task not woken.
        let o = moved("workload: kvm_apf wake_all_woken 2");
        assert_eq!(
            names_failed(&move_checks(2, 1, None, &o, &[])),
            ["parked-woken"]
        );
        // The un-ACKed PAGE_READY's task is still parked: 1 + 1 count.
        let o = moved("workload: kvm_apf wake_all_woken 3");
        assert!(names_failed(&move_checks(2, 2, None, &o, &[])).is_empty());
        // A move missing, too few parked, a restore hiding APF accepted.
        assert_eq!(
            names_failed(&move_checks(3, 3, Some(0), &o, &[Some(2), Some(0)])),
            ["moves", "in-flight", "ack-after-save", "refuse-hidden"]
        );
        // No move reported at all.
        let o = obs(&["workload: kvm_apf wake_all_woken 0"]);
        assert_eq!(
            names_failed(&move_checks(1, 0, None, &o, &[])),
            ["moves", "in-flight"]
        );
        // APF hidden: no /proc/kvm_apf, nothing in flight.
        let o =
            obs(&["snapshot: saved /s vcpus=2 in_flight=0 ready_unacked=0 block_reasons= pages=3"]);
        assert!(names_failed(&move_checks(1, 0, None, &o, &[])).is_empty());
    }
}
