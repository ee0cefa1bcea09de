// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reads the lines apf-vmm prints (the guest's console and the VMM's own
//! statistics) and keeps what the checks need:
//!
//! - the workload's summary, `workload: ok ...` or `workload: FAIL ...`;
//! - the guest kernel's `apf_guest: shutdown: not_present=N ready=M
//!   wake_all=W` (after a `[ 1.234] ` timestamp, or anywhere in a line that
//!   another console writer interleaved with);
//! - the guest kernel's `apf_guest: not offered by the hypervisor`;
//! - the workload's copy of `/proc/kvm_apf`, `workload: kvm_apf NAME N`;
//! - the VMM's own lines, each read with the type it prints it with
//!   ([`crate::lines`]): `apf: vcpuK ...` ([`ApfLine`]), `uffd: ...`
//!   ([`UffdLine`]), `snapshot: saved|migrated ...` ([`Capture`]) and
//!   `cgroup: ...` ([`MemcgReport`], cgroup memory mode).

use std::collections::BTreeMap;

use crate::lines::{field, ApfLine, Capture, UffdLine};
use crate::memcg::MemcgReport;

/// The guest's counters at power-off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestApf {
    /// PAGE_NOT_PRESENT events handled.
    pub not_present: u64,
    /// PAGE_READY events handled.
    pub ready: u64,
    /// Wake-all events.
    pub wake_all: u64,
}

/// One vCPU's counters as the host reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostApf {
    /// `apf_not_present`.
    pub not_present: u64,
    /// `apf_ready`.
    pub ready: u64,
    /// `apf_ready_mapped`: PAGE_READYs whose page KVM mapped first (0 if
    /// the kernel does not count them).
    pub ready_mapped: u64,
}

/// The workload's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `workload: ok ...`: the rest of the line.
    Ok(String),
    /// `workload: FAIL ...`: the rest of the line.
    Fail(String),
}

/// Everything seen so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observations {
    /// The workload summary (the first one seen).
    pub workload: Option<Workload>,
    /// The guest's shutdown counters.
    pub guest: Option<GuestApf>,
    /// The guest kernel said the hypervisor offers no APF.
    pub guest_not_offered: bool,
    /// The guest's `/proc/kvm_apf` counters as the workload printed them.
    pub kvm_apf: BTreeMap<String, u64>,
    /// Texts watched for with [`Observations::watch`], and whether a line
    /// contained each.
    pub watched: BTreeMap<String, bool>,
    /// Host counters by vCPU index, summed over the VMM processes of a
    /// run that moves the VM.
    pub host: BTreeMap<u32, HostApf>,
    /// Snapshots and migrations, in order.
    pub moves: Vec<Capture>,
    /// vCPUs whose statistics the VMM could not read.
    pub host_unavailable: Vec<u32>,
    /// The VMM's uffd statistics, if any.
    pub uffd: Option<UffdLine>,
    /// The VMM's memory cgroup report, if any.
    pub memcg: Option<MemcgReport>,
    /// Lines read.
    pub lines: u64,
}

const GUEST_SHUTDOWN: &str = "apf_guest: shutdown:";
const GUEST_NOT_OFFERED: &str = "apf_guest: not offered by the hypervisor";
const WORKLOAD_OK: &str = "workload: ok";
const WORKLOAD_FAIL: &str = "workload: FAIL";
const WORKLOAD_KVM_APF: &str = "workload: kvm_apf ";
/// The text after `marker`, if `marker` occurs in `line`.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

impl Observations {
    /// Starts looking for lines that contain `text`.
    pub fn watch(&mut self, text: &str) {
        self.watched.insert(text.to_string(), false);
    }

    /// Takes one line of output (without its newline).
    pub fn feed(&mut self, line: &str) {
        self.lines += 1;
        for (text, seen) in self.watched.iter_mut() {
            *seen |= line.contains(text.as_str());
        }
        if self.workload.is_none() {
            if let Some(rest) = after(line, WORKLOAD_OK) {
                self.workload = Some(Workload::Ok(rest.trim().to_string()));
            } else if let Some(rest) = after(line, WORKLOAD_FAIL) {
                self.workload = Some(Workload::Fail(rest.trim().to_string()));
            }
        }
        if let Some(rest) = after(line, GUEST_SHUTDOWN) {
            if let (Some(not_present), Some(ready)) =
                (field(rest, "not_present"), field(rest, "ready"))
            {
                self.guest = Some(GuestApf {
                    not_present,
                    ready,
                    wake_all: field(rest, "wake_all").unwrap_or(0),
                });
            }
        }
        if let Some((name, value)) = after(line, WORKLOAD_KVM_APF).and_then(|r| r.split_once(' ')) {
            if let Ok(value) = value.trim().parse() {
                self.kvm_apf.insert(name.to_string(), value);
            }
        }
        if line.contains(GUEST_NOT_OFFERED) {
            self.guest_not_offered = true;
        }
        // At the start of the line: the VMM prints it.
        if let Some(l) = ApfLine::parse(line) {
            // The vCPU index is below KVM's limit of 512.
            let index = l.vcpu as u32;
            match (l.counter("apf_not_present"), l.counter("apf_ready")) {
                (Some(not_present), Some(ready)) => {
                    let h = self.host.entry(index).or_default();
                    h.not_present += not_present;
                    h.ready += ready;
                    h.ready_mapped += l.counter("apf_ready_mapped").unwrap_or(0);
                }
                _ => self.host_unavailable.push(index),
            }
        }
        // Anywhere in the line: the guest console may have left half a
        // line before the VMM printed it.
        if let Some(c) = Capture::find_in_line(line) {
            self.moves.push(c);
        }
        if let Some(u) = UffdLine::parse(line) {
            self.uffd = Some(u);
        }
        if let Some(r) = MemcgReport::parse_line(line) {
            self.memcg = Some(r);
        }
    }

    /// Host counters summed over the vCPUs.
    pub fn host_total(&self) -> HostApf {
        self.host.values().fold(HostApf::default(), |a, h| HostApf {
            not_present: a.not_present + h.not_present,
            ready: a.ready + h.ready,
            ready_mapped: a.ready_mapped + h.ready_mapped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Observations {
        let mut o = Observations::default();
        for l in lines {
            o.feed(l);
        }
        o
    }

    #[test]
    fn moves_and_summed_host_counters() {
        let o = feed(&[
            "apf: vcpu0 apf_not_present=5 apf_ready=3 apf_ready_mapped=2",
            "snapshot: saved /tmp/s vcpus=2 in_flight=3 ready_unacked=1 block_reasons=vcpu0:2 pages=9",
            "apf: vcpu0 apf_not_present=2 apf_ready=4",
            "wosnapshot: migrated /tmp/r vcpus=2 in_flight=0 ready_unacked=0 block_reasons= demanded=1 pushed=0 zero=0",
            // Incomplete: not a move.
            "snapshot: saved /tmp/t vcpus=2 in_flight=3",
        ]);
        assert_eq!(
            o.host[&0],
            HostApf {
                not_present: 7,
                ready: 7,
                ready_mapped: 2
            }
        );
        let seen: Vec<(u64, u64)> = o
            .moves
            .iter()
            .map(|m| (m.in_flight, m.ready_unacked))
            .collect();
        assert_eq!(seen, [(3, 1), (0, 0)]);
    }

    #[test]
    fn full_run() {
        let o = feed(&[
            "[    0.512345] apf_guest: version 0x10000, 64 slots, PPI 18",
            "workload: round 1/4 done (proc 0)",
            "workload: ok procs=2 threads=2 mib=48 rounds=4 pages=12288 compute_iters=123",
            "workload: kvm_apf not_present 10",
            "[    9.876000] apf_guest: shutdown: not_present=10 ready=9 wake_all=1",
            "@@guest DONE",
            "apf: vcpu0 apf_not_present=6 apf_ready=5 apf_ready_mapped=4 apf_sync_not_el0=3 apf_sync_disabled=0",
            "apf: vcpu1 apf_not_present=4 apf_ready=4 apf_ready_mapped=3 apf_sync_not_el0=1 apf_sync_disabled=0",
            "uffd: faults=812 pages_copied=812 from_source=0 already_present=0 restored=3 fetch_peak=1 evictions=2 pages_evicted=9 evict_skipped=0",
        ]);
        assert_eq!(
            o.workload,
            Some(Workload::Ok(
                "procs=2 threads=2 mib=48 rounds=4 pages=12288 compute_iters=123".into()
            ))
        );
        assert_eq!(
            o.guest,
            Some(GuestApf {
                not_present: 10,
                ready: 9,
                wake_all: 1
            })
        );
        assert!(!o.guest_not_offered);
        assert_eq!(o.host.len(), 2);
        assert_eq!(
            o.host_total(),
            HostApf {
                not_present: 10,
                ready: 9,
                ready_mapped: 7
            }
        );
        assert_eq!(o.uffd.map(|u| (u.faults, u.evictions)), Some((812, 2)));
        assert_eq!(o.memcg, None);
        assert_eq!(o.lines, 9);
    }

    #[test]
    fn cgroup_line() {
        let r = MemcgReport {
            high: 48 << 20,
            max: 72 << 20,
            peak: 49 << 20,
            events_high: 5,
            ..MemcgReport::default()
        };
        let o = feed(&[&r.line(), "workload: ok procs=2"]);
        assert_eq!(o.memcg, Some(r));
        // Only from the VMM, at the start of a line, and complete.
        let o = feed(&[&format!("guest says {}", r.line()), "cgroup: high=1 max=2"]);
        assert_eq!(o.memcg, None);
    }

    #[test]
    fn interleaved_and_failing() {
        let o = feed(&[
            "workload: FAIL proc=1 thread=0 page=7 expected=0x1 got=0x2",
            "workload: ok procs=2",
            "some text[   3.1] apf_guest: shutdown: not_present=0 ready=0 wake_all=0",
            "[    0.1] apf_guest: not offered by the hypervisor",
            "apf: vcpu0 statistics unavailable: no such file",
            "apf: vcpu1 host kernel without apf",
            "apf: vcpuX apf_not_present=1 apf_ready=1",
            "  apf: vcpu2 apf_not_present=1 apf_ready=1",
        ]);
        // The first verdict counts.
        assert!(matches!(o.workload, Some(Workload::Fail(ref s)) if s.contains("page=7")));
        assert_eq!(o.guest, Some(GuestApf::default()));
        assert!(o.guest_not_offered);
        assert!(o.host.is_empty());
        assert_eq!(o.host_unavailable, vec![0, 1]);
        assert_eq!(o.host_total(), HostApf::default());
    }

    #[test]
    fn incomplete_shutdown_line_ignored() {
        let o = feed(&["apf_guest: shutdown: not_present=3"]);
        assert_eq!(o.guest, None);
        assert_eq!(o.workload, None);
    }
}
