// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Command line of `apf-e2e`, parsed with clap:
//! `apf-e2e [OPTIONS] -- VMM [VMM ARGS...]`. Everything after the first
//! `--` is the VMM's command line, passed on as it is.

use std::ffi::OsString;

use clap::{Parser, ValueEnum};

/// Default `--timeout` in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Largest `--timeout` (a day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// `vm.page-cluster` during a run with swap, unless `--page-cluster` says
/// otherwise: no swap readahead.
pub const DEFAULT_PAGE_CLUSTER: u32 = 0;
/// Largest `--page-cluster` (the kernel's limit).
pub const MAX_PAGE_CLUSTER: u32 = 31;
/// Largest `--min-parked`.
pub const MAX_MIN_PARKED: u64 = 1000;
/// Largest `--restore-latency-us`.
pub const MAX_RESTORE_LATENCY_US: u64 = 1_000_000;
/// Largest accepted `--restore-queue-depth`, as the VMM's.
pub const MAX_RESTORE_QUEUE_DEPTH: u64 = crate::args::MAX_UFFD_QUEUE_DEPTH as u64;
/// Largest `--unacked-at`.
pub const MAX_UNACKED_AT: u64 = 100;

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

/// `--expect`: [`Expect`] less its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ExpectArg {
    /// PAGE_NOT_PRESENT and PAGE_READY were seen.
    Events,
    /// No APF event at all (APF hidden).
    None,
}

/// How the VM is moved during the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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
    /// Its `--uffd-queue-depth`.
    pub queue_depth: u64,
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
    /// Break the faults' time down from KVM's trace events (`--trace`).
    pub trace: bool,
    /// The VMM and its arguments.
    pub command: Vec<OsString>,
}

const AFTER_HELP: &str = "\
With swap, the run also fails unless the swap device was read from during
the run (swap-ins, /sys/block/NAME/stat) and the VMM's cgroup saw no OOM
(its 'cgroup:' line, or the cgroup a killed VMM left behind).

Exit status: 0 pass, 1 fail, 2 bad usage.";

/// The command line as clap sees it; [`parse`] turns it into [`E2eArgs`].
#[derive(Debug, Parser)]
#[command(
    name = "apf-e2e",
    disable_version_flag = true,
    about = "Runs the VMM (apf-vmm booting a guest that runs /bin/apf-workload), \
             echoes its output, and checks the workload result and the APF \
             counters of guest and host.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// events: PAGE_NOT_PRESENT and PAGE_READY were seen, and KVM mapped
    /// pages before their PAGE_READY; none: no APF event at all (APF
    /// hidden) [default: only host/guest agreement]
    #[arg(
        long,
        value_enum,
        value_name = "events|none",
        hide_possible_values = true
    )]
    expect: Option<ExpectArg>,
    /// Use block device /dev/NAME (e.g. vda) whole as swap for the run.
    #[arg(long, value_name = "NAME", value_parser = disk_name)]
    swap_disk: Option<String>,
    /// With swap: vm.page-cluster for the run, 0..31, restored after
    /// [default: 0, no swap readahead].
    #[arg(long, value_name = "N", requires = "swap_disk",
          value_parser = decimal::<0, { MAX_PAGE_CLUSTER as u64 }>)]
    page_cluster: Option<u64>,
    /// Kill the VMM after SECS seconds, 1..86400.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS,
          value_parser = decimal::<1, MAX_TIMEOUT_SECS>)]
    timeout: u64,
    /// The guest's /proc/kvm_apf counter NAME ends at least N (repeatable).
    #[arg(long, value_name = "NAME=N", value_parser = counter_min)]
    guest_min: Vec<(String, u64)>,
    /// Some line of the output contains TEXT (repeatable).
    #[arg(long, value_name = "TEXT", value_parser = text)]
    console_has: Vec<String>,
    /// Move the VM during the run: snapshot and lazy restore, or post-copy
    /// migration to a second VMM.
    #[arg(
        long = "move",
        value_enum,
        value_name = "snapshot|postcopy",
        hide_possible_values = true,
        requires = "move_at"
    )]
    move_kind: Option<MoveKind>,
    /// With --move: move when a line of the output contains TEXT (repeatable:
    /// one move each, in order).
    #[arg(long, value_name = "TEXT", value_parser = text, requires = "move_kind")]
    move_at: Vec<String>,
    /// With --move: stop the vCPUs only with at least N tasks parked, 0..1000.
    #[arg(long, value_name = "N", requires = "move_kind",
          value_parser = decimal::<0, MAX_MIN_PARKED>)]
    min_parked: Option<u64>,
    /// With --move: --uffd-latency-us of the restoring or receiving VMM,
    /// 0..1000000 [default: 0].
    #[arg(long, value_name = "N", requires = "move_kind",
          value_parser = decimal::<0, MAX_RESTORE_LATENCY_US>)]
    restore_latency_us: Option<u64>,
    /// With --move: --uffd-queue-depth of the restoring or receiving VMM,
    /// 1..1024 [default: 1].
    #[arg(long, value_name = "N", requires = "move_kind",
          value_parser = decimal::<1, MAX_RESTORE_QUEUE_DEPTH>)]
    restore_queue_depth: Option<u64>,
    /// With --move snapshot: restore with --prefetch.
    #[arg(long, requires = "move_kind")]
    restore_prefetch: bool,
    /// With --move: move K (0-based, 0..100) must stop with an un-ACKed
    /// PAGE_READY in a control block.
    #[arg(long, value_name = "K", requires = "move_kind",
          value_parser = decimal::<0, MAX_UNACKED_AT>)]
    unacked_at: Option<u64>,
    /// Record KVM's async_pf, hypercall and stage-2 fault trace events
    /// during the run and print where the faults' time went
    /// ('e2e: trace ...'): fetch, delivery, ACK, retry.
    #[arg(long)]
    trace: bool,
    /// The VMM and its arguments, after --.
    #[arg(last = true, required = true, value_name = "VMM ARGS")]
    command: Vec<OsString>,
}

/// A decimal number (digits only) in `MIN..=MAX`.
fn decimal<const MIN: u64, const MAX: u64>(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a decimal number".into());
    }
    let n: u64 = s.parse().map_err(|_| "number too large".to_string())?;
    if n < MIN || n > MAX {
        return Err(format!("must be {MIN}..{MAX}"));
    }
    Ok(n)
}

/// A block device name such as `vda`.
fn disk_name(s: &str) -> Result<String, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("expected a block device name such as vda".into());
    }
    Ok(s.to_string())
}

/// `NAME=N`: a counter name (lower case and `_`) and its least value.
fn counter_min(s: &str) -> Result<(String, u64), String> {
    let bad = || "expected NAME=N, NAME a counter of /proc/kvm_apf".to_string();
    let (name, n) = s.split_once('=').ok_or_else(bad)?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(bad());
    }
    Ok((name.to_string(), decimal::<0, { u64::MAX }>(n)?))
}

/// A non-empty text.
fn text(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("expected a non-empty text".into());
    }
    Ok(s.to_string())
}

impl From<Cli> for E2eArgs {
    fn from(c: Cli) -> E2eArgs {
        // clap has checked the ranges and that the move options come with
        // --move and --move-at.
        let moves = c.move_kind.map(|kind| Moves {
            kind,
            at: c.move_at,
            min_parked: c.min_parked.map_or(0, |n| n as u32),
            latency_us: c.restore_latency_us.unwrap_or(0),
            queue_depth: c.restore_queue_depth.unwrap_or(1),
            prefetch: c.restore_prefetch,
            unacked_at: c.unacked_at.map(|n| n as usize),
        });
        let with_swap = c.swap_disk.is_some();
        E2eArgs {
            expect: match c.expect {
                None => Expect::Any,
                Some(ExpectArg::Events) => Expect::Events,
                Some(ExpectArg::None) => Expect::None,
            },
            swap_disk: c.swap_disk,
            page_cluster: with_swap
                .then(|| c.page_cluster.map_or(DEFAULT_PAGE_CLUSTER, |n| n as u32)),
            timeout_secs: c.timeout,
            guest_min: c.guest_min,
            console_has: c.console_has,
            moves,
            trace: c.trace,
            command: c.command,
        }
    }
}

/// Parses the arguments after the program name. `--help` comes back as an
/// error of kind `DisplayHelp`; `clap::Error::exit` prints it and exits 0,
/// and exits 2 for any other error.
pub fn parse<I>(args: I) -> Result<E2eArgs, clap::Error>
where
    I: IntoIterator<Item = OsString>,
{
    let argv = std::iter::once(OsString::from("apf-e2e")).chain(args);
    Cli::try_parse_from(argv).map(E2eArgs::from)
}

/// The `--help` text.
pub fn usage() -> String {
    use clap::CommandFactory;
    Cli::command().render_long_help().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn p(args: &[&str]) -> Result<E2eArgs, clap::Error> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> E2eArgs {
        match p(args) {
            Ok(a) => a,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    /// The kind of error `args` give.
    fn kind(args: &[&str]) -> ErrorKind {
        match p(args) {
            Ok(a) => panic!("{args:?} parsed: {a:?}"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
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
        assert_eq!(
            (m.min_parked, m.latency_us, m.prefetch, m.unacked_at),
            (2, 500, false, None)
        );
        let a = run(&["--move", "postcopy", "--move-at", "x", "--", "vmm"]);
        let m = a.moves.unwrap();
        assert_eq!(m.kind, MoveKind::Postcopy);
        assert_eq!((m.min_parked, m.latency_us), (0, 0));
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
        assert!(run(&["--", "vmm"]).moves.is_none());
        // --move needs --move-at, and every move option needs --move.
        assert_eq!(
            kind(&["--move", "postcopy", "--", "vmm"]),
            ErrorKind::MissingRequiredArgument
        );
        for opt in [
            &["--move-at", "x"][..],
            &["--min-parked", "1"],
            &["--restore-latency-us", "1"],
            &["--restore-prefetch"],
            &["--unacked-at", "0"],
        ] {
            let args = [opt, &["--", "vmm"]].concat();
            assert_eq!(kind(&args), ErrorKind::MissingRequiredArgument, "{opt:?}");
        }
        assert_eq!(
            kind(&["--move", "teleport", "--move-at", "x", "--", "vmm"]),
            ErrorKind::InvalidValue
        );
        let with = |opt: &'static str, v: &'static str| {
            ["--move", "snapshot", "--move-at", "x", opt, v, "--", "vmm"]
        };
        assert_eq!(
            run(&with("--min-parked", "1000")).moves.unwrap().min_parked,
            1000
        );
        assert_eq!(
            run(&with("--restore-latency-us", "1000000"))
                .moves
                .unwrap()
                .latency_us,
            1_000_000
        );
        assert_eq!(
            run(&with("--unacked-at", "100")).moves.unwrap().unacked_at,
            Some(100)
        );
        assert_eq!(
            run(&with("--restore-queue-depth", "1024"))
                .moves
                .unwrap()
                .queue_depth,
            1024
        );
        for (opt, bad) in [
            ("--min-parked", "1001"),
            ("--restore-latency-us", "1000001"),
            ("--restore-queue-depth", "0"),
            ("--restore-queue-depth", "1025"),
            ("--unacked-at", "101"),
            ("--move-at", ""),
        ] {
            assert_eq!(
                kind(&with(opt, bad)),
                ErrorKind::ValueValidation,
                "{opt} {bad}"
            );
        }
    }

    #[test]
    fn defaults_and_full() {
        let a = run(&["--", "/bin/apf-vmm", "--kernel", "k"]);
        assert_eq!(a.expect, Expect::Any);
        assert_eq!(a.swap_disk, None);
        assert_eq!(a.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(a.command, ["/bin/apf-vmm", "--kernel", "k"]);

        let a = run(&[
            "--expect",
            "events",
            "--timeout",
            "90",
            "--",
            "vmm",
            "--",
            "--expect",
            "-h",
        ]);
        assert_eq!(a.expect, Expect::Events);
        assert_eq!(a.timeout_secs, 90);
        // Everything after the first -- belongs to the VMM.
        assert_eq!(a.command, ["vmm", "--", "--expect", "-h"]);
        assert_eq!(run(&["--expect=none", "--", "v"]).expect, Expect::None);
        assert_eq!(run(&["--timeout=86400", "--", "v"]).timeout_secs, 86_400);
        assert_eq!(run(&["--timeout", "1", "--", "v"]).timeout_secs, 1);
    }

    #[test]
    fn errors() {
        for no_command in [&[][..], &["--expect", "none"], &["--"]] {
            assert_eq!(
                kind(no_command),
                ErrorKind::MissingRequiredArgument,
                "{no_command:?}"
            );
        }
        assert_eq!(kind(&["--bogus", "--", "v"]), ErrorKind::UnknownArgument);
        assert_eq!(
            kind(&["--swap-zram", "64", "--", "v"]),
            ErrorKind::UnknownArgument
        );
        // The VMM only after --.
        assert_eq!(kind(&["vmm"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--timeout"]), ErrorKind::InvalidValue);
        assert_eq!(
            kind(&["--expect", "none", "--expect", "events", "--", "v"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["--timeout", "5", "--timeout", "5", "--", "v"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&[
                "--move",
                "snapshot",
                "--move-at",
                "x",
                "--restore-prefetch",
                "--restore-prefetch",
                "--",
                "v"
            ]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["--expect", "some", "--", "v"]),
            ErrorKind::InvalidValue
        );
        for bad in [
            "0",
            "86401",
            "-1",
            "+5",
            " 5",
            "1e3",
            "99999999999999999999999",
            "",
        ] {
            assert!(p(&["--timeout", bad, "--", "v"]).is_err(), "{bad:?}");
        }
        for bad in ["0", "86401", "+5", "1e3", "99999999999999999999999", ""] {
            assert_eq!(
                kind(&["--timeout", bad, "--", "v"]),
                ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
        assert_eq!(kind(&["--help"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["-h"]), ErrorKind::DisplayHelp);
        let u = usage();
        for opt in [
            "--expect",
            "--swap-disk",
            "--page-cluster",
            "--timeout",
            "--guest-min",
            "--console-has",
            "--move ",
            "--move-at",
            "--min-parked",
            "--restore-latency-us",
            "--restore-prefetch",
            "--unacked-at",
            "Exit status: 0 pass, 1 fail, 2 bad usage.",
        ] {
            assert!(u.contains(opt), "{opt} not in\n{u}");
        }
        assert!(!u.contains("--swap-zram"));
    }

    #[test]
    fn swap_disk_names() {
        let a = run(&["--swap-disk", "vda", "--", "v"]);
        assert_eq!(a.swap_disk.as_deref(), Some("vda"));
        assert_eq!(a.page_cluster, Some(DEFAULT_PAGE_CLUSTER));
        assert_eq!(
            run(&["--swap-disk=nvme0n1", "--", "v"])
                .swap_disk
                .as_deref(),
            Some("nvme0n1")
        );
        for bad in ["", "../vda", "vd a", "vda/"] {
            assert_eq!(
                kind(&["--swap-disk", bad, "--", "v"]),
                ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn page_cluster() {
        assert_eq!(run(&["--", "v"]).page_cluster, None);
        assert_eq!(
            run(&["--swap-disk", "vda", "--page-cluster=3", "--", "v"]).page_cluster,
            Some(3)
        );
        assert_eq!(
            run(&["--page-cluster", "31", "--swap-disk", "vda", "--", "v"]).page_cluster,
            Some(MAX_PAGE_CLUSTER)
        );
        // Only with swap.
        assert_eq!(
            kind(&["--page-cluster", "0", "--", "v"]),
            ErrorKind::MissingRequiredArgument
        );
        for bad in ["32", "-1", "x", ""] {
            assert!(
                p(&["--swap-disk", "vda", "--page-cluster", bad, "--", "v"]).is_err(),
                "{bad:?}"
            );
        }
        for bad in ["32", "x", ""] {
            assert_eq!(
                kind(&["--swap-disk", "vda", "--page-cluster", bad, "--", "v"]),
                ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
        assert_eq!(
            kind(&[
                "--swap-disk",
                "vda",
                "--page-cluster",
                "0",
                "--page-cluster",
                "1",
                "--",
                "v"
            ]),
            ErrorKind::ArgumentConflict
        );
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
        for bad in [
            "killed",
            "=1",
            "Killed=1",
            "killed=x",
            "killed=-1",
            "killed=",
        ] {
            assert_eq!(
                kind(&["--guest-min", bad, "--", "v"]),
                ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn console_has_is_repeatable_and_not_empty() {
        let a = run(&["--console-has", "ACPI: APIC ", "--console-has=x", "--", "v"]);
        assert_eq!(a.console_has, ["ACPI: APIC ", "x"]);
        assert_eq!(
            kind(&["--console-has", "", "--", "v"]),
            ErrorKind::ValueValidation
        );
    }

    /// Every apf-e2e command of the test lists parses.
    #[test]
    fn test_lists_parse() {
        let mut seen = 0;
        for (list, words) in crate::testutil::list_cases() {
            // NAME TIMEOUT COMMAND ARGS...
            let Some(cmd) = words.get(2) else { continue };
            if !cmd.ends_with("/apf-e2e") {
                continue;
            }
            let args: Vec<OsString> = words[3..].iter().map(OsString::from).collect();
            if let Err(e) = parse(args) {
                panic!("{}: {words:?}: {e}", list.display());
            }
            seen += 1;
        }
        assert!(seen >= 10, "only {seen} apf-e2e lines in tests/*.list");
    }
}
