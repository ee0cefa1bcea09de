// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The checks of an end-to-end run, from what was observed and how the VMM
//! ended.

use std::fmt;

use super::args::Expect;
use super::parse::{GuestApf, Observations, Workload};

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

fn check(name: &'static str, ok: bool, details: impl Into<String>) -> Check {
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

/// Evaluates every check, in the order they are reported.
pub fn evaluate(obs: &Observations, end: VmmEnd, expect: Expect) -> Vec<Check> {
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
    checks
}

/// The final line: `e2e: PASS not_present=N ready=M wall=Xs` or `e2e: FAIL ...`.
pub fn verdict(checks: &[Check], obs: &Observations, wall_secs: f64) -> (bool, String) {
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let g = guest_counts(obs).unwrap_or_default();
    if failed.is_empty() {
        (
            true,
            format!(
                "e2e: PASS not_present={} ready={} wall={wall_secs:.1}s",
                g.not_present, g.ready
            ),
        )
    } else {
        (
            false,
            format!("e2e: FAIL ({}) wall={wall_secs:.1}s", failed.join(", ")),
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
        "apf: vcpu0 apf_not_present=3 apf_ready=3",
        "apf: vcpu1 apf_not_present=4 apf_ready=4",
    ];

    #[test]
    fn passing_events_run() {
        let o = obs(&GOOD);
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events);
        assert_eq!(names_failed(&c), Vec::<&str>::new());
        assert_eq!(c.len(), 6);
        let (ok, line) = verdict(&c, &o, 12.34);
        assert!(ok);
        assert_eq!(line, "e2e: PASS not_present=7 ready=7 wall=12.3s");
        assert_eq!(
            c[4].to_string(),
            "e2e: check host-guest-agree: ok (not_present host=7 guest=7, ready host=7 guest=7)"
        );
        // The same run does not pass as "none".
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::None);
        assert_eq!(names_failed(&c), vec!["apf-hidden"]);
        // Nor with a mismatch.
        let mut o2 = o.clone();
        o2.feed("apf: vcpu1 apf_not_present=5 apf_ready=4");
        let c = evaluate(&o2, VmmEnd::Exit(0), Expect::Any);
        assert_eq!(names_failed(&c), vec!["host-guest-agree"]);
    }

    #[test]
    fn hidden_run_without_shutdown_line() {
        let o = obs(&[
            "[    0.3] apf_guest: not offered by the hypervisor",
            "workload: ok procs=2",
            "apf: vcpu0 apf_not_present=0 apf_ready=0",
        ]);
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::None);
        assert_eq!(names_failed(&c), Vec::<&str>::new());
        assert!(verdict(&c, &o, 1.0).0);
        // Expecting events from it fails on the missing line and counts.
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events);
        assert_eq!(names_failed(&c), vec!["guest-shutdown", "events"]);
    }

    #[test]
    fn failures_are_named() {
        let o = obs(&["workload: FAIL proc=0 thread=1 page=3 expected=0x1 got=0x0"]);
        let c = evaluate(&o, VmmEnd::Timeout(600), Expect::Events);
        assert_eq!(
            names_failed(&c),
            vec![
                "vmm-exit",
                "workload",
                "guest-shutdown",
                "host-stats",
                "host-guest-agree",
                "events"
            ]
        );
        assert!(c[0].details.contains("600s"));
        let (ok, line) = verdict(&c, &o, 600.0);
        assert!(!ok);
        assert!(line.starts_with("e2e: FAIL (vmm-exit, workload"));

        let c = evaluate(&obs(&GOOD), VmmEnd::Signal(9), Expect::Any);
        assert_eq!(names_failed(&c), vec!["vmm-exit"]);
        let c = evaluate(&obs(&GOOD), VmmEnd::Exit(1), Expect::Any);
        assert_eq!(names_failed(&c), vec!["vmm-exit"]);

        let mut o = obs(&GOOD);
        o.feed("apf: vcpu2 statistics unavailable: EIO");
        let c = evaluate(&o, VmmEnd::Exit(0), Expect::Events);
        assert_eq!(names_failed(&c), vec!["host-stats"]);
    }
}
