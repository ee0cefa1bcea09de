// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Runs the apf-e2e binary with a shell script standing in for the VMM.

use std::process::{Command, Output};

fn e2e(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apf-e2e"))
        .args(args)
        .output()
        .expect("run apf-e2e")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const GOOD_RUN: &str =
    "echo 'workload: ok procs=2 threads=2 mib=8 rounds=2 pages=2048 compute_iters=5'; \
     echo '[    3.141592] apf_guest: shutdown: not_present=3 ready=3 wake_all=0'; \
     echo 'apf: vcpu0 apf_not_present=1 apf_ready=1 apf_ready_mapped=1 apf_sync_not_el0=0'; \
     echo 'apf: vcpu1 apf_not_present=2 apf_ready=2 apf_ready_mapped=1 apf_sync_not_el0=0'";

#[test]
fn usage_errors_exit_2() {
    assert_eq!(e2e(&[]).status.code(), Some(2));
    assert_eq!(
        e2e(&["--expect", "maybe", "--", "true"]).status.code(),
        Some(2)
    );
    let o = e2e(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--expect"));
}

#[test]
fn passing_run_echoes_and_checks() {
    let o = e2e(&["--expect", "events", "--", "/bin/sh", "-c", GOOD_RUN]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("\nworkload: ok procs=2"), "echoed: {out}");
    assert!(out.contains("e2e: check host-guest-agree: ok"), "{out}");
    assert!(
        out.contains("e2e: check ready-mapped: ok (apf_ready_mapped=2 of apf_ready=3)"),
        "{out}"
    );
    assert!(
        out.contains("e2e: PASS not_present=3 ready=3 wall="),
        "{out}"
    );
}

#[test]
fn failing_runs() {
    // Same output, but the VMM fails, and APF events contradict "none".
    let script = format!("{GOOD_RUN}; exit 1");
    let o = e2e(&["--expect", "none", "--", "/bin/sh", "-c", &script]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("e2e: check vmm-exit: FAIL (exit status 1)"),
        "{out}"
    );
    assert!(out.contains("e2e: check apf-hidden: FAIL"), "{out}");
    assert!(out.contains("e2e: FAIL (vmm-exit, apf-hidden)"), "{out}");

    // A VMM that does not exist.
    let o = e2e(&["--", "/nonexistent/apf-vmm"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("e2e: check vmm-exit: FAIL (cannot run"));
}

#[test]
fn timeout_kills_the_vmm() {
    let o = e2e(&[
        "--timeout",
        "1",
        "--",
        "/bin/sh",
        "-c",
        "echo workload: round 1/4 done; exec sleep 30",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("still running after 1s; killing it"), "{out}");
    assert!(
        out.contains("e2e: check vmm-exit: FAIL (still running after 1s, killed)"),
        "{out}"
    );
}

#[test]
fn cgroup_line_reaches_the_verdict() {
    let script = format!(
        "{GOOD_RUN}; echo 'cgroup: high=50331648 max=75497472 peak=52428800 swap_peak=0 \
         events_high=700 events_max=0 oom=0 oom_kill=0 pgmajfault=50000 \
         workingset_refault_anon=50000'"
    );
    let o = e2e(&["--expect", "events", "--", "/bin/sh", "-c", &script]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains(" peak_mib=50.0\n"), "{out}");
}

#[test]
fn swap_options_need_swap() {
    let o = e2e(&["--page-cluster", "0", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("required arguments were not provided:\n  --swap-disk <NAME>"),
        "{err}"
    );
}
