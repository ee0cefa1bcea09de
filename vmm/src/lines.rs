// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The lines apf-vmm prints on stdout that something reads back: apf-e2e
//! (`e2e::parse`), `scripts/report.py`, `scripts/bench.py` and the
//! `--console-has`/`--move-at` texts of `tests/*.list`. Each line is a
//! type here whose `Display` is what the VMM prints and whose `parse`
//! is what apf-e2e reads, so the two cannot drift apart; the tests below
//! print and read back each one.
//!
//! ```text
//! apf: vcpu0 apf_not_present=12 apf_ready=12 apf_sync_not_el0=3 ...
//! apf: vcpu1 no apf_* statistics (host kernel without APF)
//! apf: vcpu2 statistics unavailable: REASON
//! uffd: faults=812 pages_copied=812 from_source=0 already_present=0 restored=3 evictions=2 pages_evicted=9 evict_skipped=0
//! snapshot: saved DIR vcpus=2 in_flight=3 ready_unacked=1 block_reasons=vcpu0:2,vcpu1:1 pages=9
//! snapshot: migrated SOCKET vcpus=2 in_flight=0 ready_unacked=0 block_reasons= demanded=1 pushed=2 zero=3
//! migrate: received pages=N zero=Z
//! prefetch: pages=N
//! ```
//!
//! The memory cgroup's `cgroup: ...` line is [`crate::memcg::MemcgReport`]
//! (`line` and `parse_line`), which reads its files too.

use std::fmt;
use std::path::PathBuf;

/// Value of `key=N` among the space-separated words of `text`.
pub fn field(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace().find_map(|w| {
        w.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    })
}

/// The start of a vCPU's APF statistics line.
pub const APF_PREFIX: &str = "apf: vcpu";
/// What an APF statistics line says when the host kernel has none.
const NO_APF: &str = "no apf_* statistics (host kernel without APF)";
/// What precedes the reason when a vCPU's statistics could not be read.
const UNAVAILABLE: &str = "statistics unavailable: ";

/// What an `apf: vcpuK ...` line says about vCPU K.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApfStats {
    /// The `apf_*` counters, in the order printed (never empty).
    Counters(Vec<(String, u64)>),
    /// The host kernel has no `apf_*` statistics.
    NoApf,
    /// The statistics could not be read, and why.
    Unavailable(String),
    /// Anything else after `apf: vcpuK ` (not printed by this VMM).
    Other(String),
}

/// One vCPU's APF statistics line, printed by the VMM at exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApfLine {
    /// The vCPU index.
    pub vcpu: usize,
    /// Its statistics.
    pub stats: ApfStats,
}

impl fmt::Display for ApfLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{APF_PREFIX}{} ", self.vcpu)?;
        match &self.stats {
            ApfStats::Counters(c) if !c.is_empty() => {
                let words: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
                f.write_str(&words.join(" "))
            }
            ApfStats::Counters(_) | ApfStats::NoApf => f.write_str(NO_APF),
            ApfStats::Unavailable(why) => write!(f, "{UNAVAILABLE}{why}"),
            ApfStats::Other(text) => f.write_str(text),
        }
    }
}

impl ApfLine {
    /// Reads a line printed by `Display` (at the start of `line`).
    pub fn parse(line: &str) -> Option<ApfLine> {
        let rest = line.strip_prefix(APF_PREFIX)?;
        let (index, rest) = rest.split_once(' ')?;
        if !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let vcpu = index.parse().ok()?;
        let counters: Option<Vec<(String, u64)>> = rest
            .split(' ')
            .map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        let stats = match counters {
            Some(c) if !c.is_empty() => ApfStats::Counters(c),
            _ if rest == NO_APF => ApfStats::NoApf,
            _ => match rest.strip_prefix(UNAVAILABLE) {
                Some(why) => ApfStats::Unavailable(why.to_string()),
                None => ApfStats::Other(rest.to_string()),
            },
        };
        Some(ApfLine { vcpu, stats })
    }

    /// The counter `name`, if the line has it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        match &self.stats {
            ApfStats::Counters(c) => c.iter().find(|(k, _)| k == name).map(|(_, v)| *v),
            _ => None,
        }
    }
}

/// The start of the userfaultfd statistics line.
pub const UFFD_PREFIX: &str = "uffd: ";

/// The userfaultfd handler's and the evictor's counters, printed by the
/// VMM at exit in the memory modes behind userfaultfd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdLine {
    /// Faults served.
    pub faults: u64,
    /// Pages copied in (or zero-filled).
    pub pages_copied: u64,
    /// Pages read from the source file.
    pub from_source: u64,
    /// Faults on pages another thread had already filled.
    pub already_present: u64,
    /// Pages restored from the page store after an eviction.
    pub restored: u64,
    /// The most fetches in progress at once.
    pub fetch_peak: u64,
    /// Evictions done.
    pub evictions: u64,
    /// Pages they dropped.
    pub pages_evicted: u64,
    /// Evictions skipped because the vCPUs did not pause in time.
    pub evict_skipped: u64,
}

impl UffdLine {
    /// The values with their keys, in the order printed.
    fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("faults", self.faults),
            ("pages_copied", self.pages_copied),
            ("from_source", self.from_source),
            ("already_present", self.already_present),
            ("restored", self.restored),
            ("fetch_peak", self.fetch_peak),
            ("evictions", self.evictions),
            ("pages_evicted", self.pages_evicted),
            ("evict_skipped", self.evict_skipped),
        ]
    }

    /// Reads a line printed by `Display` (at the start of `line`); `None`
    /// if it is not one or lacks a key.
    pub fn parse(line: &str) -> Option<UffdLine> {
        let rest = line.strip_prefix(UFFD_PREFIX)?;
        let f = |key| field(rest, key);
        Some(UffdLine {
            faults: f("faults")?,
            pages_copied: f("pages_copied")?,
            from_source: f("from_source")?,
            already_present: f("already_present")?,
            restored: f("restored")?,
            fetch_peak: f("fetch_peak")?,
            evictions: f("evictions")?,
            pages_evicted: f("pages_evicted")?,
            evict_skipped: f("evict_skipped")?,
        })
    }
}

impl fmt::Display for UffdLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(UFFD_PREFIX.trim_end())?;
        for (k, v) in self.fields() {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// The start of the line the VMM prints for a snapshot or a migration.
pub const CAPTURE_PREFIX: &str = "snapshot: ";

/// Where a stopped VM went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureTo {
    /// Saved into a snapshot directory.
    Saved {
        /// The directory.
        dir: PathBuf,
        /// Pages written to its memory file.
        pages: u64,
    },
    /// Sent by post-copy to a receiving VMM.
    Migrated {
        /// The receiver's socket.
        to: PathBuf,
        /// Pages the receiver asked for.
        demanded: u64,
        /// Pages pushed unasked.
        pushed: u64,
        /// Zero pages sent as such.
        zero: u64,
    },
}

/// A snapshot or migration of a running VM: the control socket's answer
/// (`Display`), which the VMM also prints after [`CAPTURE_PREFIX`]
/// ([`Capture::line`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Where the VM went.
    pub to: CaptureTo,
    /// vCPUs.
    pub vcpus: usize,
    /// Faults in flight on the host when the vCPUs stopped.
    pub in_flight: u64,
    /// Control blocks that held a PAGE_READY the guest had not ACKed.
    pub ready_unacked: u64,
    /// The `reason` of the control block of each vCPU with APF enabled.
    pub block_reasons: Vec<(usize, u32)>,
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, path) = match &self.to {
            CaptureTo::Saved { dir, .. } => ("saved", dir),
            CaptureTo::Migrated { to, .. } => ("migrated", to),
        };
        let reasons: Vec<String> = self
            .block_reasons
            .iter()
            .map(|(i, r)| format!("vcpu{i}:{r}"))
            .collect();
        write!(
            f,
            "{verb} {} vcpus={} in_flight={} ready_unacked={} block_reasons={}",
            path.display(),
            self.vcpus,
            self.in_flight,
            self.ready_unacked,
            reasons.join(",")
        )?;
        match &self.to {
            CaptureTo::Saved { pages, .. } => write!(f, " pages={pages}"),
            CaptureTo::Migrated {
                demanded,
                pushed,
                zero,
                ..
            } => write!(f, " demanded={demanded} pushed={pushed} zero={zero}"),
        }
    }
}

impl Capture {
    /// The line the VMM prints.
    pub fn line(&self) -> String {
        format!("{CAPTURE_PREFIX}{self}")
    }

    /// Reads an answer printed by `Display` (paths without white space,
    /// as the control socket requires); `None` if it is not one or lacks
    /// a key.
    pub fn parse(text: &str) -> Option<Capture> {
        let mut words = text.split(' ');
        let verb = words.next()?;
        let path = PathBuf::from(words.next().filter(|p| !p.is_empty())?);
        let rest = text.get(verb.len() + 1 + path.as_os_str().len()..)?;
        let f = |key| field(rest, key);
        let to = match verb {
            "saved" => CaptureTo::Saved {
                dir: path,
                pages: f("pages")?,
            },
            "migrated" => CaptureTo::Migrated {
                to: path,
                demanded: f("demanded")?,
                pushed: f("pushed")?,
                zero: f("zero")?,
            },
            _ => return None,
        };
        let reasons = rest
            .split(' ')
            .find_map(|w| w.strip_prefix("block_reasons="))?;
        let block_reasons = reasons
            .split(',')
            .filter(|r| !r.is_empty())
            .map(|r| {
                let (i, reason) = r.strip_prefix("vcpu")?.split_once(':')?;
                Some((i.parse().ok()?, reason.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Capture {
            to,
            vcpus: usize::try_from(f("vcpus")?).ok()?,
            in_flight: f("in_flight")?,
            ready_unacked: f("ready_unacked")?,
            block_reasons,
        })
    }

    /// Reads the line the VMM prints, anywhere in `line`: the guest
    /// console may have left half a line before the VMM printed it.
    pub fn find_in_line(line: &str) -> Option<Capture> {
        ["saved ", "migrated "].iter().find_map(|verb| {
            let i = line.find(&format!("{CAPTURE_PREFIX}{verb}"))?;
            Capture::parse(&line[i + CAPTURE_PREFIX.len()..])
        })
    }
}

/// What a VMM that received a migrated VM got, printed when the last page
/// arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Pages received.
    pub pages: u64,
    /// Of which zero pages.
    pub zero: u64,
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "migrate: received pages={} zero={}",
            self.pages, self.zero
        )
    }
}

impl Received {
    /// Reads a line printed by `Display`.
    pub fn parse(line: &str) -> Option<Received> {
        let rest = line.strip_prefix("migrate: received ")?;
        Some(Received {
            pages: field(rest, "pages")?,
            zero: field(rest, "zero")?,
        })
    }
}

/// Pages a restore with `--prefetch` copied in the background, printed
/// when the VM stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefetched {
    /// Pages copied.
    pub pages: u64,
}

impl fmt::Display for Prefetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "prefetch: pages={}", self.pages)
    }
}

impl Prefetched {
    /// Reads a line printed by `Display`.
    pub fn parse(line: &str) -> Option<Prefetched> {
        let rest = line.strip_prefix("prefetch: ")?;
        Some(Prefetched {
            pages: field(rest, "pages")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(field("a=1 b=22 c=x", "b"), Some(22));
        assert_eq!(field("a=1 ab=3", "b"), None);
        assert_eq!(field("a=1 b=x", "b"), None);
        assert_eq!(
            field("apf_ready=5 apf_not_present=7", "apf_not_present"),
            Some(7)
        );
        assert_eq!(field("", "a"), None);
    }

    #[test]
    fn apf_lines_round_trip() {
        let lines = [
            ApfLine {
                vcpu: 3,
                stats: ApfStats::Counters(vec![
                    ("apf_not_present".into(), 12),
                    ("apf_ready".into(), u64::MAX),
                ]),
            },
            ApfLine {
                vcpu: 0,
                stats: ApfStats::NoApf,
            },
            ApfLine {
                vcpu: 1,
                stats: ApfStats::Unavailable("KVM_GET_STATS_FD: bad fd".into()),
            },
            ApfLine {
                vcpu: 2,
                stats: ApfStats::Other("host kernel without apf".into()),
            },
        ];
        for l in lines {
            assert_eq!(ApfLine::parse(&l.to_string()), Some(l.clone()), "{l}");
        }
        assert_eq!(
            ApfLine {
                vcpu: 3,
                stats: ApfStats::Counters(vec![
                    ("apf_not_present".into(), 12),
                    ("apf_ready".into(), 11)
                ])
            }
            .to_string(),
            "apf: vcpu3 apf_not_present=12 apf_ready=11"
        );
        // No counters prints (and reads back) as no APF.
        let empty = ApfLine {
            vcpu: 0,
            stats: ApfStats::Counters(Vec::new()),
        };
        assert_eq!(
            empty.to_string(),
            "apf: vcpu0 no apf_* statistics (host kernel without APF)"
        );
        assert_eq!(
            ApfLine::parse(&empty.to_string()).map(|l| l.stats),
            Some(ApfStats::NoApf)
        );
        assert_eq!(
            ApfLine::parse("apf: vcpu1 statistics unavailable: EIO").map(|l| l.stats),
            Some(ApfStats::Unavailable("EIO".into()))
        );
        let l = ApfLine::parse("apf: vcpu7 apf_not_present=5 apf_ready=3").unwrap();
        assert_eq!((l.vcpu, l.counter("apf_ready")), (7, Some(3)));
        assert_eq!(l.counter("apf_sync_busy"), None);
        for not in [
            "apf: vcpuX apf_ready=1",
            "apf: vcpu+1 apf_ready=1",
            "  apf: vcpu2 apf_ready=1",
            "apf: vcpu2",
            "kvm: vcpu0 exits=1",
        ] {
            assert_eq!(ApfLine::parse(not), None, "{not}");
        }
    }

    #[test]
    fn uffd_line_round_trip() {
        let u = UffdLine {
            faults: 812,
            pages_copied: 811,
            from_source: 1,
            already_present: 2,
            restored: 3,
            fetch_peak: 7,
            evictions: 4,
            pages_evicted: 5,
            evict_skipped: 6,
        };
        let line = u.to_string();
        assert_eq!(
            line,
            "uffd: faults=812 pages_copied=811 from_source=1 already_present=2 restored=3 \
             fetch_peak=7 evictions=4 pages_evicted=5 evict_skipped=6"
        );
        assert_eq!(UffdLine::parse(&line), Some(u));
        assert_eq!(UffdLine::parse(&format!(" {line}")), None);
        assert_eq!(UffdLine::parse(&line.replace(" restored=3", "")), None);
    }

    #[test]
    fn capture_round_trip() {
        let saved = Capture {
            to: CaptureTo::Saved {
                dir: "/tmp/s".into(),
                pages: 9,
            },
            vcpus: 2,
            in_flight: 3,
            ready_unacked: 1,
            block_reasons: vec![(0, 2), (1, 1)],
        };
        assert_eq!(
            saved.line(),
            "snapshot: saved /tmp/s vcpus=2 in_flight=3 ready_unacked=1 \
             block_reasons=vcpu0:2,vcpu1:1 pages=9"
        );
        let migrated = Capture {
            to: CaptureTo::Migrated {
                to: "/tmp/rx".into(),
                demanded: 1,
                pushed: 2,
                zero: 3,
            },
            vcpus: 1,
            in_flight: 0,
            ready_unacked: 0,
            block_reasons: Vec::new(),
        };
        assert_eq!(
            migrated.to_string(),
            "migrated /tmp/rx vcpus=1 in_flight=0 ready_unacked=0 block_reasons= \
             demanded=1 pushed=2 zero=3"
        );
        for c in [saved, migrated] {
            assert_eq!(Capture::parse(&c.to_string()), Some(c.clone()));
            assert_eq!(Capture::find_in_line(&c.line()), Some(c.clone()));
            // After half a line of guest console.
            assert_eq!(
                Capture::find_in_line(&format!("[    1.2] wo{}", c.line())),
                Some(c.clone())
            );
            let text = c.to_string();
            assert_eq!(Capture::parse(&text.replace(" in_flight=", " x=")), None);
            assert_eq!(Capture::parse(&text.replace("vcpus=", "vcpus=-")), None);
            assert_eq!(Capture::find_in_line(&text), None);
        }
        assert_eq!(
            Capture::parse(
                "saved /s vcpus=1 in_flight=0 ready_unacked=0 block_reasons=cpu0:1 pages=1"
            ),
            None
        );
        assert_eq!(Capture::parse("sent /s vcpus=1"), None);
    }

    #[test]
    fn received_and_prefetched_round_trip() {
        let r = Received { pages: 7, zero: 2 };
        assert_eq!(r.to_string(), "migrate: received pages=7 zero=2");
        assert_eq!(Received::parse(&r.to_string()), Some(r));
        let p = Prefetched { pages: 65536 };
        assert_eq!(Prefetched::parse(&p.to_string()), Some(p));
        assert_eq!(Prefetched::parse("prefetch: done"), None);
    }

    /// The texts the test lists wait for (`--console-has`, `--move-at`)
    /// start lines printed here.
    #[test]
    fn test_lists_match_these_lines() {
        let list =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e.list"))
                .unwrap();
        let printed = Prefetched::default().to_string();
        let pattern = "--console-has \"prefetch: pages=\"";
        assert!(list.contains(pattern));
        assert!(printed.starts_with("prefetch: pages="), "{printed}");
    }
}
