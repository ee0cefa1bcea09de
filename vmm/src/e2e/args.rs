// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Command line of `apf-e2e`:
//! `apf-e2e [--expect events|none] [--swap-zram MIB | --swap-disk NAME]
//! [--page-cluster N] [--timeout SECS] -- VMM ARGS...`

use std::ffi::OsString;

use thiserror::Error;

/// Default `--timeout` in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Largest `--timeout` (a day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Smallest `--swap-zram` in MiB (a swap area needs a few pages).
pub const MIN_SWAP_MIB: u64 = 1;
/// Largest `--swap-zram` in MiB.
pub const MAX_SWAP_MIB: u64 = 65_536;
/// `vm.page-cluster` during a run with swap, unless `--page-cluster` says
/// otherwise: no swap readahead.
pub const DEFAULT_PAGE_CLUSTER: u32 = 0;
/// Largest `--page-cluster` (the kernel's limit).
pub const MAX_PAGE_CLUSTER: u32 = 31;

/// What the APF event counters must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Only that host and guest agree.
    Any,
    /// Events happened: PAGE_NOT_PRESENT and PAGE_READY both above zero.
    Events,
    /// APF hidden: no event at all on either side.
    None,
}

/// How the VM is moved during the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// `apf-vmm snapshot`, then `apf-vmm restore` (lazy, from the memory file).
    Snapshot,
    /// `apf-vmm migrate` to an `apf-vmm receive` (post-copy).
    Postcopy,
}

/// The moves of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moves {
    /// Snapshot and restore, or post-copy.
    pub kind: MoveKind,
    /// One move for each: done when a line of the running VM's output
    /// contains the text.
    pub at: Vec<String>,
    /// Faults in flight required when the vCPUs stop (`--min-parked`).
    pub min_parked: u32,
    /// `--uffd-latency-us` of the restoring or receiving VMM.
    pub latency_us: u64,
    /// Restore with `--prefetch`.
    pub prefetch: bool,
    /// The move (0-based) that must stop with an un-ACKed PAGE_READY in a
    /// control block (`--unacked-at`).
    pub unacked_at: Option<usize>,
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct E2eArgs {
    /// Expected APF activity.
    pub expect: Expect,
    /// zram swap size in MiB, if swap is to be set up on zram.
    pub swap_zram_mib: Option<u64>,
    /// Block device (a name in `/dev`, e.g. `vda`) to use whole as swap.
    pub swap_disk: Option<String>,
    /// `vm.page-cluster` for the run; `Some` exactly when swap is set up.
    pub page_cluster: Option<u32>,
    /// Kill the VMM after this many seconds.
    pub timeout_secs: u64,
    /// Lower bounds on the guest's `/proc/kvm_apf` counters, by name.
    pub guest_min: Vec<(String, u64)>,
    /// Texts that some line of the output must contain.
    pub console_has: Vec<String>,
    /// Moves of the VM, if any.
    pub moves: Option<Moves>,
    /// The VMM and its arguments.
    pub command: Vec<OsString>,
}

/// Result of a successful parse.
#[derive(Debug, PartialEq, Eq)]
pub enum E2eCommand {
    /// Run the test.
    Run(E2eArgs),
    /// Print the usage.
    Help,
}

/// Command line errors.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum E2eArgsError {
    /// An option this program does not know.
    #[error("unknown option '{0}'")]
    UnknownOption(String),
    /// An option without its value.
    #[error("option {0} needs a value")]
    MissingValue(&'static str),
    /// The same option twice.
    #[error("option {0} given more than once")]
    Duplicate(&'static str),
    /// A value that cannot be used.
    #[error("invalid value '{value}' for {option}: {reason}")]
    InvalidValue {
        /// The option.
        option: &'static str,
        /// The value, lossily converted.
        value: String,
        /// Why.
        reason: String,
    },
    /// An option that only applies with swap.
    #[error("{0} needs --swap-disk or --swap-zram")]
    NeedsSwap(&'static str),
    /// A move option without --move, or --move without --move-at.
    #[error("{0}")]
    Moves(&'static str),
    /// Nothing after `--`, or no `--`.
    #[error("no VMM command given (put it after --)")]
    NoCommand,
}

/// The usage text.
pub fn usage() -> String {
    format!(
        "Usage: apf-e2e [OPTIONS] -- VMM [VMM ARGS...]\n\
         Runs the VMM (apf-vmm booting a guest that runs /bin/apf-workload),\n\
         echoes its output, and checks the workload result and the APF counters\n\
         of guest and host. Exit status: 0 pass, 1 fail, 2 bad usage.\n\
         \n\
         Options:\n\
         \x20 --expect events|none  events: PAGE_NOT_PRESENT and PAGE_READY were seen;\n\
         \x20                       none: no APF event at all (APF hidden)\n\
         \x20                       (default: only host/guest agreement)\n\
         \x20 --swap-zram MIB       set up MIB of swap on /dev/zram0 for the run, {MIN_SWAP_MIB}..{MAX_SWAP_MIB}\n\
         \x20 --swap-disk NAME      use block device /dev/NAME (e.g. vda) whole as swap for the run\n\
         \x20 --page-cluster N      with swap: vm.page-cluster for the run, 0..{MAX_PAGE_CLUSTER}, restored after\n\
         \x20                       (default {DEFAULT_PAGE_CLUSTER}: no swap readahead)\n\
         \x20 --timeout SECS        kill the VMM after SECS seconds, 1..{MAX_TIMEOUT_SECS} (default {DEFAULT_TIMEOUT_SECS})\n\
         \x20 --guest-min NAME=N    the guest's /proc/kvm_apf counter NAME ends at least N (repeatable)\n\
         \x20 --console-has TEXT    some line of the output contains TEXT (repeatable)\n\
         \x20 -h, --help            this text\n\
         \n\
         With swap, the run also fails unless the swap device was read from during\n\
         the run (swap-ins, /sys/block/NAME/stat) and the VMM's cgroup saw no OOM\n\
         (its 'cgroup:' line, or the cgroup a killed VMM left behind).\n"
    )
}

fn number(option: &'static str, value: &OsString, min: u64, max: u64) -> Result<u64, E2eArgsError> {
    let text = value.to_string_lossy().into_owned();
    let bad = |reason: String| E2eArgsError::InvalidValue {
        option,
        value: text.clone(),
        reason,
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a decimal number".into()));
    }
    let n: u64 = text.parse().map_err(|_| bad("number too large".into()))?;
    if n < min || n > max {
        return Err(bad(format!("must be {min}..{max}")));
    }
    Ok(n)
}

/// `NAME=N`: a counter name (lower case and `_`) and its least value.
fn counter_min(option: &'static str, value: &OsString) -> Result<(String, u64), E2eArgsError> {
    let text = value.to_string_lossy().into_owned();
    let bad = || E2eArgsError::InvalidValue {
        option,
        value: text.clone(),
        reason: "expected NAME=N, NAME a counter of /proc/kvm_apf".into(),
    };
    let (name, n) = text.split_once('=').ok_or_else(bad)?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(bad());
    }
    let n = number(option, &OsString::from(n), 0, u64::MAX)?;
    Ok((name.to_string(), n))
}

fn set_once<T>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), E2eArgsError> {
    if slot.is_some() {
        return Err(E2eArgsError::Duplicate(name));
    }
    *slot = Some(v);
    Ok(())
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<E2eCommand, E2eArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut iter = args.into_iter();
    let mut expect = None;
    let mut swap = None;
    let mut disk = None;
    let mut page_cluster = None;
    let mut timeout = None;
    let mut guest_min = Vec::new();
    let mut console_has = Vec::new();
    let mut move_kind = None;
    let mut move_at = Vec::new();
    let mut min_parked = None;
    let mut restore_latency = None;
    let mut prefetch = false;
    let mut unacked_at = None;
    let mut command = None;

    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        if text == "--" {
            command = Some(iter.by_ref().collect::<Vec<_>>());
            break;
        }
        if text == "-h" || text == "--help" {
            return Ok(E2eCommand::Help);
        }
        if text == "--restore-prefetch" {
            if prefetch {
                return Err(E2eArgsError::Duplicate("--restore-prefetch"));
            }
            prefetch = true;
            continue;
        }
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(OsString::from(v))),
            _ => (text.clone(), None),
        };
        let option: &'static str = match name.as_str() {
            "--expect" => "--expect",
            "--swap-zram" => "--swap-zram",
            "--swap-disk" => "--swap-disk",
            "--page-cluster" => "--page-cluster",
            "--timeout" => "--timeout",
            "--guest-min" => "--guest-min",
            "--console-has" => "--console-has",
            "--move" => "--move",
            "--move-at" => "--move-at",
            "--min-parked" => "--min-parked",
            "--restore-latency-us" => "--restore-latency-us",
            "--unacked-at" => "--unacked-at",
            _ => return Err(E2eArgsError::UnknownOption(text)),
        };
        let value = match inline {
            Some(v) => v,
            None => iter.next().ok_or(E2eArgsError::MissingValue(option))?,
        };
        match option {
            "--expect" => {
                let e = match value.to_str() {
                    Some("events") => Expect::Events,
                    Some("none") => Expect::None,
                    _ => {
                        return Err(E2eArgsError::InvalidValue {
                            option,
                            value: value.to_string_lossy().into_owned(),
                            reason: "expected events or none".into(),
                        })
                    }
                };
                set_once(&mut expect, option, e)?;
            }
            "--swap-zram" => {
                let n = number(option, &value, MIN_SWAP_MIB, MAX_SWAP_MIB)?;
                set_once(&mut swap, option, n)?;
            }
            "--swap-disk" => {
                let name = value
                    .to_str()
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()));
                let Some(name) = name else {
                    return Err(E2eArgsError::InvalidValue {
                        option,
                        value: value.to_string_lossy().into_owned(),
                        reason: "expected a block device name such as vda".into(),
                    });
                };
                set_once(&mut disk, option, name.to_string())?;
            }
            "--page-cluster" => {
                let n = number(option, &value, 0, u64::from(MAX_PAGE_CLUSTER))?;
                // At most MAX_PAGE_CLUSTER, so it fits.
                let n = u32::try_from(n).unwrap_or(MAX_PAGE_CLUSTER);
                set_once(&mut page_cluster, option, n)?;
            }
            "--guest-min" => guest_min.push(counter_min(option, &value)?),
            "--move" => {
                let k = match value.to_str() {
                    Some("snapshot") => MoveKind::Snapshot,
                    Some("postcopy") => MoveKind::Postcopy,
                    _ => {
                        return Err(E2eArgsError::InvalidValue {
                            option,
                            value: value.to_string_lossy().into_owned(),
                            reason: "expected snapshot or postcopy".into(),
                        })
                    }
                };
                set_once(&mut move_kind, option, k)?;
            }
            "--min-parked" => {
                let n = number(option, &value, 0, 1000)?;
                set_once(&mut min_parked, option, n as u32)?;
            }
            "--restore-latency-us" => {
                let n = number(option, &value, 0, 1_000_000)?;
                set_once(&mut restore_latency, option, n)?;
            }
            "--unacked-at" => {
                let n = number(option, &value, 0, 100)?;
                set_once(&mut unacked_at, option, n as usize)?;
            }
            "--console-has" | "--move-at" => match value.to_str().filter(|t| !t.is_empty()) {
                Some(text) if option == "--move-at" => move_at.push(text.to_string()),
                Some(text) => console_has.push(text.to_string()),
                None => {
                    return Err(E2eArgsError::InvalidValue {
                        option,
                        value: value.to_string_lossy().into_owned(),
                        reason: "expected a non-empty UTF-8 text".into(),
                    })
                }
            },
            _ => {
                let n = number(option, &value, 1, MAX_TIMEOUT_SECS)?;
                set_once(&mut timeout, option, n)?;
            }
        }
    }

    let command = command
        .filter(|c| !c.is_empty())
        .ok_or(E2eArgsError::NoCommand)?;
    let with_swap = swap.is_some() || disk.is_some();
    if !with_swap && page_cluster.is_some() {
        return Err(E2eArgsError::NeedsSwap("--page-cluster"));
    }
    let moves = match move_kind {
        Some(kind) if !move_at.is_empty() => Some(Moves {
            kind,
            at: move_at,
            min_parked: min_parked.unwrap_or(0),
            latency_us: restore_latency.unwrap_or(0),
            prefetch,
            unacked_at,
        }),
        Some(_) => return Err(E2eArgsError::Moves("--move needs at least one --move-at")),
        None if !move_at.is_empty()
            || min_parked.is_some()
            || restore_latency.is_some()
            || prefetch
            || unacked_at.is_some() =>
        {
            return Err(E2eArgsError::Moves(
                "--move-at, --min-parked and --restore-latency-us need --move",
            ))
        }
        None => None,
    };
    Ok(E2eCommand::Run(E2eArgs {
        expect: expect.unwrap_or(Expect::Any),
        swap_zram_mib: swap,
        swap_disk: disk,
        page_cluster: with_swap.then(|| page_cluster.unwrap_or(DEFAULT_PAGE_CLUSTER)),
        timeout_secs: timeout.unwrap_or(DEFAULT_TIMEOUT_SECS),
        guest_min,
        console_has,
        moves,
        command,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<E2eCommand, E2eArgsError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> E2eArgs {
        match p(args) {
            Ok(E2eCommand::Run(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn moves() {
        let a = run(&[
            "--move",
            "snapshot",
            "--move-at",
            "workload: start",
            "--move-at",
            "round 1/",
            "--min-parked",
            "2",
            "--restore-latency-us",
            "500",
            "--",
            "vmm",
        ]);
        let m = a.moves.unwrap();
        assert_eq!(m.kind, MoveKind::Snapshot);
        assert_eq!(
            m.at,
            vec!["workload: start".to_string(), "round 1/".to_string()]
        );
        assert_eq!((m.min_parked, m.latency_us, m.prefetch), (2, 500, false));
        let a = run(&[
            "--move",
            "snapshot",
            "--move-at",
            "x",
            "--restore-prefetch",
            "--",
            "vmm",
        ]);
        assert!(a.moves.unwrap().prefetch);
        let a = run(&[
            "--move",
            "snapshot",
            "--move-at",
            "x",
            "--unacked-at",
            "1",
            "--",
            "vmm",
        ]);
        assert_eq!(a.moves.unwrap().unacked_at, Some(1));
        assert!(matches!(
            p(&["--restore-prefetch", "--", "vmm"]),
            Err(E2eArgsError::Moves(_))
        ));
        assert!(run(&["--", "vmm"]).moves.is_none());
        assert!(matches!(
            p(&["--move", "postcopy", "--", "vmm"]),
            Err(E2eArgsError::Moves(_))
        ));
        assert!(matches!(
            p(&["--move-at", "x", "--", "vmm"]),
            Err(E2eArgsError::Moves(_))
        ));
        assert!(matches!(
            p(&["--min-parked", "1", "--", "vmm"]),
            Err(E2eArgsError::Moves(_))
        ));
        assert!(p(&["--move", "teleport", "--move-at", "x", "--", "vmm"]).is_err());
        assert!(p(&[
            "--move",
            "snapshot",
            "--move-at",
            "x",
            "--min-parked",
            "1001",
            "--",
            "vmm"
        ])
        .is_err());
    }

    #[test]
    fn defaults_and_full() {
        let a = run(&["--", "/bin/apf-vmm", "--kernel", "k"]);
        assert_eq!(a.expect, Expect::Any);
        assert_eq!(a.swap_zram_mib, None);
        assert_eq!(a.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(a.command, ["/bin/apf-vmm", "--kernel", "k"]);

        let a = run(&[
            "--expect",
            "events",
            "--swap-zram=512",
            "--timeout",
            "90",
            "--",
            "vmm",
            "--",
            "--expect",
        ]);
        assert_eq!(a.expect, Expect::Events);
        assert_eq!(a.swap_zram_mib, Some(512));
        assert_eq!(a.timeout_secs, 90);
        // Everything after the first -- belongs to the VMM.
        assert_eq!(a.command, ["vmm", "--", "--expect"]);
        assert_eq!(run(&["--expect=none", "--", "v"]).expect, Expect::None);
    }

    #[test]
    fn errors() {
        assert_eq!(p(&[]), Err(E2eArgsError::NoCommand));
        assert_eq!(p(&["--expect", "none"]), Err(E2eArgsError::NoCommand));
        assert_eq!(p(&["--"]), Err(E2eArgsError::NoCommand));
        assert_eq!(
            p(&["--bogus", "--", "v"]),
            Err(E2eArgsError::UnknownOption("--bogus".into()))
        );
        assert_eq!(p(&["vmm"]), Err(E2eArgsError::UnknownOption("vmm".into())));
        assert_eq!(
            p(&["--timeout"]),
            Err(E2eArgsError::MissingValue("--timeout"))
        );
        assert_eq!(
            p(&["--expect", "none", "--expect", "events", "--", "v"]),
            Err(E2eArgsError::Duplicate("--expect"))
        );
        for bad in [
            &["--expect", "some", "--", "v"][..],
            &["--timeout", "0", "--", "v"],
            &["--timeout", "86401", "--", "v"],
            &["--timeout", "-1", "--", "v"],
            &["--swap-zram", "0", "--", "v"],
            &["--swap-zram", "1e3", "--", "v"],
            &["--swap-zram", "99999999999999999999999", "--", "v"],
        ] {
            assert!(
                matches!(p(bad), Err(E2eArgsError::InvalidValue { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(p(&["--help"]), Ok(E2eCommand::Help));
        assert!(usage().contains("--swap-zram"));
    }

    #[test]
    fn swap_disk_names() {
        let a = run(&["--swap-disk", "vda", "--", "v"]);
        assert_eq!(a.swap_disk.as_deref(), Some("vda"));
        assert_eq!(a.page_cluster, Some(DEFAULT_PAGE_CLUSTER));
        for bad in ["", "../vda", "vd a"] {
            assert!(p(&["--swap-disk", bad, "--", "v"]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_cluster() {
        assert_eq!(run(&["--", "v"]).page_cluster, None);
        assert_eq!(
            run(&["--swap-zram", "64", "--page-cluster=3", "--", "v"]).page_cluster,
            Some(3)
        );
        assert_eq!(
            run(&["--page-cluster", "31", "--swap-disk", "vda", "--", "v"]).page_cluster,
            Some(31)
        );
        assert_eq!(
            p(&["--page-cluster", "0", "--", "v"]),
            Err(E2eArgsError::NeedsSwap("--page-cluster"))
        );
        for bad in ["32", "-1", "x", ""] {
            assert!(
                matches!(
                    p(&["--swap-disk", "vda", "--page-cluster", bad, "--", "v"]),
                    Err(E2eArgsError::InvalidValue { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            p(&[
                "--swap-disk",
                "vda",
                "--page-cluster",
                "0",
                "--page-cluster",
                "1",
                "--",
                "v"
            ]),
            Err(E2eArgsError::Duplicate("--page-cluster"))
        );
        assert!(usage().contains("--page-cluster"));
    }

    #[test]
    fn guest_min_is_repeatable_and_checked() {
        let a = run(&[
            "--guest-min",
            "killed=1",
            "--guest-min=migrated=0",
            "--",
            "v",
        ]);
        assert_eq!(
            a.guest_min,
            [("killed".to_string(), 1), ("migrated".to_string(), 0)]
        );
        for bad in ["killed", "=1", "Killed=1", "killed=x", "killed=-1"] {
            assert!(matches!(
                p(&["--guest-min", bad, "--", "v"]),
                Err(E2eArgsError::InvalidValue {
                    option: "--guest-min",
                    ..
                })
            ));
        }
    }

    #[test]
    fn console_has_is_repeatable_and_not_empty() {
        let a = run(&["--console-has", "ACPI: APIC ", "--console-has=x", "--", "v"]);
        assert_eq!(a.console_has, ["ACPI: APIC ", "x"]);
        assert!(matches!(
            p(&["--console-has", "", "--", "v"]),
            Err(E2eArgsError::InvalidValue {
                option: "--console-has",
                ..
            })
        ));
    }
}
