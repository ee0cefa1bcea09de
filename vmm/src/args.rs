// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The boot command line, `apf-vmm --kernel IMAGE [options]`.
//!
//! clap parses it (see [`crate::cli::Cli`], which also holds the commands
//! that move a VM) into [`BootOptions`]: names, values, ranges, repeated
//! options and the options a memory mode requires. [`BootOptions::validate`]
//! then checks what clap cannot say (options of another memory mode, the
//! room `--boot acpi` needs on the kernel command line, `--cgroup-max`
//! against `--cgroup-limit`) and gives the typed [`Args`] the VMM runs
//! with.

use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::builder::{RangedU64ValueParser, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, ValueEnum};
use linux_loader::cmdline::Cmdline;
use thiserror::Error;

use crate::cli::{Cli, MoveCommand};
use crate::layout::{
    reserved_ppi_intids, MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB, PPI_BASE_INTID, SPI_BASE_INTID,
};

/// Command line used when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlycon panic=-1";
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest RAM size in MiB.
pub const DEFAULT_MEM_MIB: u64 = 512;
/// Largest accepted `--uffd-latency-us` (one second).
pub const MAX_UFFD_LATENCY_US: u64 = 1_000_000;
/// Largest accepted `--uffd-queue-depth`.
pub const MAX_UFFD_QUEUE_DEPTH: usize = 1024;
/// Smallest non-zero `--uffd-evict-ms`: below this the guest would do
/// little but fault its pages back in.
pub const MIN_UFFD_EVICT_MS: u64 = 10;
/// Largest accepted `--uffd-evict-ms` (ten minutes).
pub const MAX_UFFD_EVICT_MS: u64 = 600_000;
/// Smallest accepted `--cgroup-limit`: below this the VMM itself cannot run.
pub const MIN_CGROUP_LIMIT_MIB: u64 = 16;
/// Largest accepted `--cgroup-limit` (1 TiB), so that the byte count fits.
pub const MAX_CGROUP_LIMIT_MIB: u64 = 1 << 20;
/// Largest accepted `--cgroup-max`.
pub const MAX_CGROUP_MAX_MIB: u64 = 2 * MAX_CGROUP_LIMIT_MIB;
/// arm64 `COMMAND_LINE_SIZE`, including the terminating NUL.
pub const CMDLINE_CAPACITY: usize = 2048;
/// Added to the kernel command line with `--boot acpi`: there is no EFI
/// firmware behind the EFI system table, so no runtime services.
pub const EFI_NORUNTIME: &str = "efi=noruntime";

/// How guest RAM is backed and how slow page fetches are produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MemMode {
    /// Anonymous memory, nothing special.
    Plain,
    /// Anonymous memory registered with userfaultfd; pages are served late.
    Uffd,
    /// Anonymous memory in a cgroup v2 with a memory.high limit (swap),
    /// and memory.max above it as a backstop.
    Cgroup,
}

/// How the guest kernel finds the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BootMode {
    /// A full device tree (the default).
    Dt,
    /// ACPI tables, found through an EFI system table and memory map that
    /// a stub device tree (only `/chosen`) points at.
    Acpi,
}

/// Whether the guest is offered asynchronous page faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApfMode {
    /// Leave the APF service as KVM offers it (the default).
    On,
    /// Clear the APF bit in KVM_REG_ARM_VENDOR_HYP_BMAP_2 before the first run.
    Hidden,
}

/// Options of the userfaultfd memory mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UffdOptions {
    /// Delay, in microseconds, before each missing page is served.
    pub latency_us: u64,
    /// Fetches that may be in progress at once.
    pub depth: NonZeroUsize,
    /// Interval, in milliseconds, of the evictor that drops every
    /// populated page again; 0 turns it off.
    pub evict_ms: u64,
}

impl Default for UffdOptions {
    fn default() -> Self {
        UffdOptions {
            latency_us: 0,
            depth: NonZeroUsize::MIN,
            evict_ms: 0,
        }
    }
}

/// Everything the VMM needs to know from its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// arm64 Image to boot.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (with `EFI_NORUNTIME` added for `BootMode::Acpi`).
    pub cmdline: String,
    /// Device tree or ACPI.
    pub boot: BootMode,
    /// Number of vCPUs, 1 to `MAX_VCPUS`.
    pub vcpus: u8,
    /// Guest RAM size in MiB.
    pub mem_mib: u64,
    /// Memory backing mode.
    pub mem_mode: MemMode,
    /// userfaultfd options, only meaningful with `MemMode::Uffd`.
    pub uffd: UffdOptions,
    /// memory.high of the cgroup in MiB, set only with `MemMode::Cgroup`.
    pub cgroup_limit_mib: Option<u64>,
    /// memory.max of the cgroup in MiB, set only with `MemMode::Cgroup`:
    /// `--cgroup-max`, or [`default_cgroup_max_mib`] of the limit.
    pub cgroup_max_mib: Option<u64>,
    /// APF offered or hidden.
    pub apf: ApfMode,
    /// PPI INTID for PAGE_READY; `None` leaves the KVM default.
    pub apf_irq: Option<u32>,
    /// Do not print statistics or informational messages.
    pub quiet: bool,
    /// Control socket for `apf-vmm snapshot` and `apf-vmm migrate`.
    pub api_socket: Option<PathBuf>,
}

/// The result of a successful parse.
#[derive(Debug)]
pub enum Command {
    /// Boot a guest.
    Run(Box<Args>),
    /// Save, move or restore a VM (`apf-vmm snapshot|migrate|restore|receive`).
    Move(MoveCommand),
}

/// What [`BootOptions::validate`] refuses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A value that could not be used.
    #[error("invalid value '{value}' for {option}: {reason}")]
    InvalidValue {
        /// The option.
        option: &'static str,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// `--kernel` is mandatory (clap checks it first).
    #[error("missing required option --kernel")]
    MissingKernel,
    /// `--mem-mode cgroup` without a limit (clap checks it first).
    #[error("--mem-mode cgroup needs --cgroup-limit")]
    MissingCgroupLimit,
    /// An option that belongs to another memory mode.
    #[error("{option} only applies to --mem-mode {mode}")]
    WrongMode {
        /// The option.
        option: &'static str,
        /// The mode it belongs to.
        mode: &'static str,
    },
}

impl ArgsError {
    /// As clap would report it: same format, usage and `--help` hint.
    pub fn into_clap(self) -> clap::Error {
        let kind = match self {
            ArgsError::InvalidValue { .. } => ErrorKind::ValueValidation,
            ArgsError::MissingKernel | ArgsError::MissingCgroupLimit => {
                ErrorKind::MissingRequiredArgument
            }
            ArgsError::WrongMode { .. } => ErrorKind::ArgumentConflict,
        };
        Cli::command().error(kind, self)
    }
}

/// memory.max without `--cgroup-max`: half the limit above it. The gap
/// holds what is charged while reclaim catches up (swap-outs waiting for
/// the disk, and fetches in flight on the kernel's async page fault
/// workers, which memory.high does not throttle).
pub fn default_cgroup_max_mib(limit_mib: u64) -> u64 {
    limit_mib + limit_mib / 2
}

/// The boot options as clap parses them; [`BootOptions::validate`] turns
/// them into [`Args`]. The help text of each option is its first line here.
#[derive(Clone, Debug, clap::Args)]
pub struct BootOptions {
    /// arm64 Image to boot (required)
    #[arg(long, value_name = "PATH", required = true)]
    pub kernel: Option<PathBuf>,
    /// initial ramdisk
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// kernel command line
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE,
          allow_hyphen_values = true, value_parser = kernel_cmdline)]
    pub cmdline: String,
    /// how the guest finds the machine: a device tree, or ACPI tables behind
    /// an EFI system table and memory map that a stub device tree points at
    /// (acpi adds efi=noruntime to the command line unless it sets
    /// efi=[no]runtime)
    #[arg(long, value_enum, value_name = "dt|acpi", default_value_t = BootMode::Dt,
          hide_possible_values = true)]
    pub boot: BootMode,
    /// number of vCPUs, 1..8
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VCPUS,
          value_parser = decimal::<u8>(1, u64::from(MAX_VCPUS)))]
    pub vcpus: u8,
    /// guest RAM in MiB, 64..4096
    #[arg(long = "mem", value_name = "MIB", default_value_t = DEFAULT_MEM_MIB,
          value_parser = decimal::<u64>(MIN_MEM_MIB, MAX_MEM_MIB))]
    pub mem_mib: u64,
    /// how guest RAM is backed: plain, uffd (userfaultfd, pages served
    /// late) or cgroup (swapped out by a memory cgroup's limit)
    #[arg(long, value_enum, value_name = "MODE", default_value_t = MemMode::Plain,
          hide_possible_values = true)]
    pub mem_mode: MemMode,
    /// uffd: delay before each page is served, 0..1000000 [default: 0]
    #[arg(long, value_name = "N",
          value_parser = decimal::<u64>(0, MAX_UFFD_LATENCY_US))]
    pub uffd_latency_us: Option<u64>,
    /// uffd: fetches in progress at once, 1..1024 [default: 1, one page at
    /// a time]
    #[arg(long, value_name = "N", value_parser = queue_depth())]
    pub uffd_queue_depth: Option<NonZeroUsize>,
    /// uffd: every N ms pause the vCPUs and drop every populated page (its
    /// content is kept and served again); 0 (off) or 10..600000 [default: 0]
    #[arg(long, value_name = "N",
          value_parser = decimal::<u64>(0, MAX_UFFD_EVICT_MS).try_map(evict_interval))]
    pub uffd_evict_ms: Option<u64>,
    /// cgroup: memory.high of the VMM's cgroup, 16..1048576 (required): above
    /// it the kernel reclaims (swaps) and throttles the VMM instead of
    /// OOM-killing it
    #[arg(long = "cgroup-limit", value_name = "MIB",
          required_if_eq("mem_mode", "cgroup"),
          value_parser = decimal::<u64>(MIN_CGROUP_LIMIT_MIB, MAX_CGROUP_LIMIT_MIB))]
    pub cgroup_limit_mib: Option<u64>,
    /// cgroup: memory.max, the hard limit: a backstop above --cgroup-limit,
    /// up to 2097152 [default: 1.5 x --cgroup-limit]; a charge there that
    /// reclaim cannot satisfy ends in an OOM kill
    #[arg(long = "cgroup-max", value_name = "MIB",
          value_parser = decimal::<u64>(MIN_CGROUP_LIMIT_MIB, MAX_CGROUP_MAX_MIB))]
    pub cgroup_max_mib: Option<u64>,
    /// offer asynchronous page faults or hide them
    #[arg(long, value_enum, value_name = "on|hidden", default_value_t = ApfMode::On,
          hide_possible_values = true)]
    pub apf: ApfMode,
    /// PPI for APF PAGE_READY, 16..31 except 23 and 25..30 [default: KVM's, 18]
    #[arg(long, value_name = "INTID",
          value_parser = decimal::<u32>(u64::from(PPI_BASE_INTID), u64::from(SPI_BASE_INTID - 1))
              .try_map(apf_intid))]
    pub apf_irq: Option<u32>,
    /// take snapshot and migrate requests on this Unix socket (apf-vmm
    /// snapshot, apf-vmm migrate)
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// do not print statistics and informational messages
    #[arg(long)]
    pub quiet: bool,
}

/// A number parser: plain decimal digits (`u64::from_str` would also take
/// a leading '+'), within `min..=max`, as a `T`.
#[derive(Clone)]
struct Decimal<T: TryFrom<u64>> {
    range: RangedU64ValueParser<T>,
}

fn decimal<T>(min: u64, max: u64) -> Decimal<T>
where
    T: TryFrom<u64> + Clone + Send + Sync,
{
    Decimal {
        range: RangedU64ValueParser::new().range(min..=max),
    }
}

impl<T> TypedValueParser for Decimal<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: Send + Sync + 'static + std::error::Error + ToString,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        if value.as_encoded_bytes().first() == Some(&b'+') {
            let mut e = clap::Error::new(ErrorKind::ValueValidation).with_cmd(cmd);
            let name = arg.map_or_else(|| "...".to_string(), ToString::to_string);
            e.insert(ContextKind::InvalidArg, ContextValue::String(name));
            let value = value.to_string_lossy().into_owned();
            e.insert(ContextKind::InvalidValue, ContextValue::String(value));
            return Err(e);
        }
        self.range.parse_ref(cmd, arg, value)
    }
}

/// `--uffd-evict-ms`: 0 (off), or at least `MIN_UFFD_EVICT_MS`.
/// `--uffd-queue-depth`, of every command that serves guest memory:
/// 1..=[`MAX_UFFD_QUEUE_DEPTH`].
pub fn queue_depth() -> impl TypedValueParser<Value = NonZeroUsize> {
    decimal::<usize>(1, MAX_UFFD_QUEUE_DEPTH as u64)
        .try_map(|n| NonZeroUsize::new(n).ok_or("must be at least 1"))
}

fn evict_interval(ms: u64) -> Result<u64, String> {
    if ms != 0 && ms < MIN_UFFD_EVICT_MS {
        return Err(format!(
            "must be 0 (off) or {MIN_UFFD_EVICT_MS}..{MAX_UFFD_EVICT_MS}"
        ));
    }
    Ok(ms)
}

/// `--apf-irq`: a PPI nobody else owns.
fn apf_intid(intid: u32) -> Result<u32, &'static str> {
    if reserved_ppi_intids().contains(&intid) {
        return Err("used by the PMU, the vGIC maintenance interrupt or a timer");
    }
    Ok(intid)
}

/// Validates the command line with linux-loader and returns it as the
/// kernel will see it.
fn kernel_cmdline(text: &str) -> Result<String, String> {
    // One byte is needed for the terminating NUL.
    if text.len() >= CMDLINE_CAPACITY {
        return Err(format!(
            "{} bytes, the arm64 limit is {}",
            text.len(),
            CMDLINE_CAPACITY - 1
        ));
    }
    let cmdline = Cmdline::try_from(text, CMDLINE_CAPACITY).map_err(|e| e.to_string())?;
    let cstring = cmdline.as_cstring().map_err(|e| e.to_string())?;
    cstring
        .into_string()
        .map_err(|_| "not valid UTF-8".to_string())
}

/// Whether the command line already chooses about EFI runtime services
/// (`efi=runtime` or `efi=noruntime`, possibly in a list: `efi=debug,noruntime`).
fn sets_efi_runtime(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix("efi="))
        .flat_map(|value| value.split(','))
        .any(|option| option == "runtime" || option == "noruntime")
}

/// The command line for `--boot acpi`: `cmdline` with `EFI_NORUNTIME`
/// added, unless it already says.
fn acpi_cmdline(cmdline: String) -> Result<String, ArgsError> {
    if sets_efi_runtime(&cmdline) {
        return Ok(cmdline);
    }
    let text = if cmdline.is_empty() {
        EFI_NORUNTIME.to_string()
    } else {
        format!("{cmdline} {EFI_NORUNTIME}")
    };
    let invalid = |reason: String| ArgsError::InvalidValue {
        option: "--cmdline",
        value: cmdline.clone(),
        reason,
    };
    if text.len() >= CMDLINE_CAPACITY {
        return Err(invalid(format!(
            "{} bytes with the '{EFI_NORUNTIME}' that --boot acpi adds, the arm64 limit is {}",
            text.len(),
            CMDLINE_CAPACITY - 1
        )));
    }
    kernel_cmdline(&text).map_err(invalid)
}

impl BootOptions {
    /// The checks clap cannot make, and the options as the VMM uses them.
    pub fn validate(self) -> Result<Args, ArgsError> {
        let kernel = self.kernel.ok_or(ArgsError::MissingKernel)?;
        let mem_mode = self.mem_mode;

        if mem_mode != MemMode::Uffd {
            for (given, option) in [
                (self.uffd_latency_us.is_some(), "--uffd-latency-us"),
                (self.uffd_queue_depth.is_some(), "--uffd-queue-depth"),
                (self.uffd_evict_ms.is_some(), "--uffd-evict-ms"),
            ] {
                if given {
                    return Err(ArgsError::WrongMode {
                        option,
                        mode: "uffd",
                    });
                }
            }
        }
        let cgroup_max_mib = match (mem_mode, self.cgroup_limit_mib, self.cgroup_max_mib) {
            (MemMode::Cgroup, None, _) => return Err(ArgsError::MissingCgroupLimit),
            (MemMode::Cgroup, Some(limit), Some(max)) if max < limit => {
                return Err(ArgsError::InvalidValue {
                    option: "--cgroup-max",
                    value: max.to_string(),
                    reason: format!("below --cgroup-limit ({limit})"),
                });
            }
            (MemMode::Cgroup, Some(limit), max) => {
                Some(max.unwrap_or(default_cgroup_max_mib(limit)))
            }
            (MemMode::Plain | MemMode::Uffd, Some(_), _) => {
                return Err(ArgsError::WrongMode {
                    option: "--cgroup-limit",
                    mode: "cgroup",
                });
            }
            (MemMode::Plain | MemMode::Uffd, None, Some(_)) => {
                return Err(ArgsError::WrongMode {
                    option: "--cgroup-max",
                    mode: "cgroup",
                });
            }
            (MemMode::Plain | MemMode::Uffd, None, None) => None,
        };

        let cmdline = match self.boot {
            BootMode::Dt => self.cmdline,
            BootMode::Acpi => acpi_cmdline(self.cmdline)?,
        };

        Ok(Args {
            kernel,
            initrd: self.initrd,
            cmdline,
            boot: self.boot,
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            mem_mode,
            uffd: UffdOptions {
                latency_us: self.uffd_latency_us.unwrap_or(0),
                depth: self.uffd_queue_depth.unwrap_or(NonZeroUsize::MIN),
                evict_ms: self.uffd_evict_ms.unwrap_or(0),
            },
            cgroup_limit_mib: self.cgroup_limit_mib,
            cgroup_max_mib,
            apf: self.apf,
            apf_irq: self.apf_irq,
            quiet: self.quiet,
            api_socket: self.api_socket,
        })
    }
}

/// Parses the arguments that follow the program name. `--help` and the
/// errors come back as clap errors: print them with `print`, and exit
/// with 0 if `use_stderr` is false (help), with `EXIT_USAGE` otherwise.
pub fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv = std::iter::once(OsString::from("apf-vmm")).chain(args.into_iter().map(Into::into));
    let cli = Cli::try_parse_from(argv)?;
    match cli.command {
        Some(command) => Ok(Command::Move(command)),
        None => cli
            .boot
            .validate()
            .map(|a| Command::Run(Box::new(a)))
            .map_err(ArgsError::into_clap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, clap::Error> {
        parse(args.iter().copied())
    }

    fn run_args(args: &[&str]) -> Args {
        match parse_strs(args) {
            Ok(Command::Run(a)) => *a,
            other => panic!("expected Run for {args:?}, got {other:?}"),
        }
    }

    /// The error clap (or `validate`, through [`ArgsError::into_clap`]) gives.
    fn err(args: &[&str]) -> clap::Error {
        match parse_strs(args) {
            Err(e) => e,
            Ok(c) => panic!("expected an error for {args:?}, got {c:?}"),
        }
    }

    /// The option a clap error names ("--vcpus" of "--vcpus <N>").
    fn rejected(e: &clap::Error) -> String {
        match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.split(' ').next().unwrap_or_default().to_string(),
            other => panic!("no invalid argument in {e:?}: {other:?}"),
        }
    }

    /// The option whose value clap refuses.
    fn invalid_option(args: &[&str]) -> String {
        let e = err(args);
        assert!(
            matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ),
            "{args:?}: {e}"
        );
        rejected(&e)
    }

    /// A boot in each memory mode with its required options.
    const UFFD: [&str; 4] = ["--kernel", "k", "--mem-mode", "uffd"];
    const CGROUP: [&str; 4] = ["--kernel", "k", "--mem-mode", "cgroup"];
    const CGROUP_64: [&str; 6] = [
        "--kernel",
        "k",
        "--mem-mode",
        "cgroup",
        "--cgroup-limit",
        "64",
    ];

    /// Checks that each of `bads`, as the value of `option` after `base`,
    /// is refused by clap, naming `option`.
    fn rejects(base: &[&str], option: &str, bads: &[&str]) {
        for bad in bads {
            let mut args = base.to_vec();
            args.extend([option, bad]);
            assert_eq!(invalid_option(&args), option, "value {bad:?}");
        }
    }

    /// Checks that `validate` refuses `option` (with `value`, after
    /// `base`) as an option of memory mode `mode` only.
    fn wrong_mode(base: &[&str], option: &'static str, value: &str, mode: &'static str) {
        let args = [base, &[option, value]].concat();
        assert_eq!(refused(&args), ArgsError::WrongMode { option, mode });
    }

    /// What `validate` refuses, after clap accepted the line.
    fn refused(args: &[&str]) -> ArgsError {
        let cli = Cli::try_parse_from(std::iter::once("apf-vmm").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("clap refused {args:?}: {e}"));
        let e = cli.boot.validate().unwrap_err();
        // And `parse` reports it as a usage error.
        assert!(err(args).use_stderr());
        e
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = run_args(&["--kernel", "/boot/Image"]);
        assert_eq!(a.kernel, PathBuf::from("/boot/Image"));
        assert_eq!(a.initrd, None);
        assert_eq!(a.cmdline, DEFAULT_CMDLINE);
        assert_eq!(a.boot, BootMode::Dt);
        assert_eq!(a.vcpus, 1);
        assert_eq!(a.mem_mib, 512);
        assert_eq!(a.mem_mode, MemMode::Plain);
        assert_eq!(a.uffd, UffdOptions::default());
        assert_eq!(a.cgroup_limit_mib, None);
        assert_eq!(a.cgroup_max_mib, None);
        assert_eq!(a.apf, ApfMode::On);
        assert_eq!(a.apf_irq, None);
        assert_eq!(a.api_socket, None);
        assert!(!a.quiet);
    }

    #[test]
    fn all_options() {
        let a = run_args(&[
            "--kernel",
            "k",
            "--initrd=i",
            "--cmdline",
            "console=ttyS0 init=/bin/sh",
            "--boot",
            "acpi",
            "--vcpus",
            "8",
            "--mem=4096",
            "--mem-mode",
            "uffd",
            "--uffd-latency-us",
            "250",
            "--uffd-evict-ms",
            "3000",
            "--apf",
            "hidden",
            "--apf-irq",
            "31",
            "--api-socket",
            "/run/vm.sock",
            "--quiet",
        ]);
        assert_eq!(a.kernel, PathBuf::from("k"));
        assert_eq!(a.initrd, Some(PathBuf::from("i")));
        assert_eq!(a.cmdline, "console=ttyS0 init=/bin/sh efi=noruntime");
        assert_eq!(a.boot, BootMode::Acpi);
        assert_eq!(a.vcpus, 8);
        assert_eq!(a.mem_mib, 4096);
        assert_eq!(a.mem_mode, MemMode::Uffd);
        assert_eq!(a.uffd.latency_us, 250);
        assert_eq!(a.uffd.evict_ms, 3000);
        assert_eq!(a.apf, ApfMode::Hidden);
        assert_eq!(a.apf_irq, Some(31));
        assert_eq!(a.api_socket, Some(PathBuf::from("/run/vm.sock")));
        assert!(a.quiet);
    }

    #[test]
    fn uffd_source_is_gone() {
        let e = err(&[&UFFD[..], &["--uffd-source", "ram.img"]].concat());
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn cgroup_mode() {
        let a = run_args(&[&CGROUP[..], &["--cgroup-limit", "128"]].concat());
        assert_eq!(a.mem_mode, MemMode::Cgroup);
        assert_eq!(a.cgroup_limit_mib, Some(128));
        assert_eq!(a.cgroup_max_mib, Some(192));

        let a = run_args(&[&CGROUP[..], &["--cgroup-limit", "48", "--cgroup-max=48"]].concat());
        assert_eq!(a.cgroup_limit_mib, Some(48));
        assert_eq!(a.cgroup_max_mib, Some(48));
        assert_eq!(default_cgroup_max_mib(17), 25);
    }

    #[test]
    fn cgroup_max_checks() {
        rejects(&CGROUP_64, "--cgroup-max", &["15", "2097153", "x", "+64"]);
        // Below the limit: `validate`'s check.
        let mut args = CGROUP_64.to_vec();
        args.extend(["--cgroup-max", "63"]);
        assert_eq!(
            refused(&args),
            ArgsError::InvalidValue {
                option: "--cgroup-max",
                value: "63".into(),
                reason: "below --cgroup-limit (64)".into(),
            }
        );
        let mut args = CGROUP_64.to_vec();
        args.extend(["--cgroup-max", "2097152"]);
        assert_eq!(run_args(&args).cgroup_max_mib, Some(2 << 20));
        wrong_mode(&["--kernel", "k"], "--cgroup-max", "64", "cgroup");
        let e = err(&[
            "--kernel",
            "k",
            "--mem-mode",
            "cgroup",
            "--cgroup-max",
            "64",
        ]);
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--cgroup-limit"), "{e}");
    }

    #[test]
    fn value_with_equals_keeps_rest() {
        let a = run_args(&["--kernel", "k", "--cmdline=root=/dev/vda rw"]);
        assert_eq!(a.cmdline, "root=/dev/vda rw");
    }

    #[test]
    fn cmdline_checks() {
        let a = run_args(&[
            "--kernel",
            "k",
            "--cmdline",
            "  console=ttyS0 -- init arg  ",
        ]);
        assert_eq!(a.cmdline, "console=ttyS0 -- init arg");
        // The value is taken as it is, even if it starts with a dash.
        let a = run_args(&["--kernel", "k", "--cmdline", "-- init arg"]);
        assert_eq!(a.cmdline, "-- init arg");
        assert_eq!(run_args(&["--kernel", "k", "--cmdline", ""]).cmdline, "");
        let max = "x".repeat(CMDLINE_CAPACITY - 1);
        assert_eq!(run_args(&["--kernel", "k", "--cmdline", &max]).cmdline, max);
        let long = "x".repeat(CMDLINE_CAPACITY);
        assert_eq!(
            invalid_option(&["--kernel", "k", "--cmdline", &long]),
            "--cmdline"
        );
        assert_eq!(
            invalid_option(&["--kernel", "k", "--cmdline", "a\0b"]),
            "--cmdline"
        );
    }

    #[test]
    fn help() {
        for args in [&["--help"][..], &["-h"], &["--kernel", "k", "-h"]] {
            let e = err(args);
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert!(!e.use_stderr());
        }
        let text = Cli::command().render_help().to_string();
        assert!(
            text.starts_with("Usage: apf-vmm --kernel IMAGE [options]\n"),
            "{text}"
        );
        // Every option, with its description on the same line.
        for opt in Cli::command().get_arguments() {
            let long = format!("--{}", opt.get_long().unwrap());
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&long) || l.contains(&format!(", {long}")))
                .unwrap_or_else(|| panic!("no {long} in\n{text}"));
            let described = line.split("  ").filter(|w| !w.trim().is_empty()).count() >= 2;
            assert!(described, "{long} has no description: {line:?}");
        }
        for words in [
            "--boot <dt|acpi>".to_string(),
            format!("1..{MAX_VCPUS} [default: {DEFAULT_VCPUS}]"),
            format!("{MIN_MEM_MIB}..{MAX_MEM_MIB} [default: {DEFAULT_MEM_MIB}]"),
            format!("0..{MAX_UFFD_LATENCY_US} [default: 0]"),
            format!("0 (off) or {MIN_UFFD_EVICT_MS}..{MAX_UFFD_EVICT_MS}"),
            format!("{MIN_CGROUP_LIMIT_MIB}..{MAX_CGROUP_LIMIT_MIB} (required)"),
            format!("up to {MAX_CGROUP_MAX_MIB} "),
            format!("[default: \"{DEFAULT_CMDLINE}\"]"),
            format!("[default: KVM's, {}]", crate::apf::KVM_ASYNC_PF_DEFAULT_IRQ),
            "snapshot".to_string(),
            "receive".to_string(),
            "Exit status".to_string(),
        ] {
            assert!(text.contains(&words), "help lacks {words:?}:\n{text}");
        }
    }

    #[test]
    fn missing_kernel() {
        for args in [&[][..], &["--vcpus", "2"]] {
            let e = err(args);
            assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
            assert!(e.to_string().contains("--kernel"), "{e}");
        }
        // `validate` does not trust clap on it.
        let mut cli = Cli::try_parse_from(["apf-vmm", "--kernel", "k"]).unwrap();
        cli.boot.kernel = None;
        assert_eq!(cli.boot.validate(), Err(ArgsError::MissingKernel));
    }

    #[test]
    fn unknown_and_positional() {
        let e = err(&["--kernel", "k", "--bogus", "1"]);
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        assert_eq!(rejected(&e), "--bogus");
        assert_eq!(err(&["Image"]).kind(), ErrorKind::InvalidSubcommand);
        let e = err(&["--kernel", "k", "Image"]);
        assert!(e.use_stderr() && e.to_string().contains("'Image'"), "{e}");
        assert_eq!(err(&["-k"]).kind(), ErrorKind::UnknownArgument);
        // No prefixes of long options.
        assert_eq!(err(&["--kern", "k"]).kind(), ErrorKind::UnknownArgument);
        // Neither --version nor a help command.
        assert_eq!(err(&["--version"]).kind(), ErrorKind::UnknownArgument);
        assert_eq!(err(&["help"]).kind(), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn missing_value() {
        assert_eq!(invalid_option(&["--kernel"]), "--kernel");
        assert_eq!(invalid_option(&["--kernel", "k", "--vcpus"]), "--vcpus");
    }

    #[test]
    fn duplicates() {
        for (args, option) in [
            (&["--kernel", "a", "--kernel", "b"][..], "--kernel"),
            (&["--kernel", "a", "--quiet", "--quiet"], "--quiet"),
            (&["--kernel", "a", "--mem", "64", "--mem=128"], "--mem"),
        ] {
            let e = err(args);
            assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{args:?}");
            assert_eq!(rejected(&e), option);
        }
    }

    #[test]
    fn quiet_takes_no_value() {
        let e = err(&["--kernel", "a", "--quiet=yes"]);
        assert!(e.to_string().contains("'--quiet'"), "{e}");
    }

    #[test]
    fn vcpus_range() {
        assert_eq!(run_args(&["--kernel", "k", "--vcpus", "1"]).vcpus, 1);
        assert_eq!(run_args(&["--kernel", "k", "--vcpus=8"]).vcpus, 8);
        // A value that starts with a dash is taken for an option.
        let e = err(&["--kernel", "k", "--vcpus", "-1"]);
        assert_eq!(
            (e.kind(), rejected(&e)),
            (ErrorKind::UnknownArgument, "-1".into())
        );
        let bad = ["0", "9", "two", "", "+2", "99999999999999999999999"];
        rejects(&["--kernel", "k"], "--vcpus", &bad);
    }

    #[test]
    fn mem_range() {
        assert_eq!(run_args(&["--kernel", "k", "--mem", "64"]).mem_mib, 64);
        let bad = ["63", "4097", "0", "1G", "512M", "+512"];
        rejects(&["--kernel", "k"], "--mem", &bad);
    }

    #[test]
    fn mem_mode_values() {
        for (text, mode) in [
            ("plain", MemMode::Plain),
            ("uffd", MemMode::Uffd),
            ("cgroup", MemMode::Cgroup),
        ] {
            let mut args = vec!["--kernel", "k", "--mem-mode", text];
            if mode == MemMode::Cgroup {
                args.extend(["--cgroup-limit", "64"]);
            }
            assert_eq!(run_args(&args).mem_mode, mode);
        }
        rejects(&["--kernel", "k"], "--mem-mode", &["swap", "UFFD", ""]);
    }

    #[test]
    fn uffd_latency_range() {
        rejects(&UFFD, "--uffd-latency-us", &["1000001"]);
        let a = run_args(&[&UFFD[..], &["--uffd-latency-us", "1000000"]].concat());
        assert_eq!(a.uffd.latency_us, 1_000_000);
    }

    #[test]
    fn uffd_queue_depth_range() {
        rejects(&UFFD, "--uffd-queue-depth", &["0", "1025", "x", ""]);
        assert_eq!(run_args(&UFFD).uffd.depth.get(), 1);
        for good in [1, 16, MAX_UFFD_QUEUE_DEPTH] {
            let a = run_args(&[&UFFD[..], &["--uffd-queue-depth", &good.to_string()]].concat());
            assert_eq!(a.uffd.depth.get(), good);
        }
        wrong_mode(&["--kernel", "k"], "--uffd-queue-depth", "4", "uffd");
    }

    #[test]
    fn uffd_evict_range() {
        let base = [&UFFD[..], &["--uffd-evict-ms"]].concat();
        assert!(err(&[&base[..], &["-5"]].concat()).use_stderr());
        let bad = ["1", "9", "600001", "1.5", "", "+10"];
        rejects(&UFFD, "--uffd-evict-ms", &bad);
        for (good, want) in [("0", 0), ("10", 10), ("1500", 1500), ("600000", 600_000)] {
            let mut v = base.to_vec();
            v.push(good);
            assert_eq!(run_args(&v).uffd.evict_ms, want);
        }
        assert_eq!(run_args(&UFFD).uffd.evict_ms, 0);
        wrong_mode(&["--kernel", "k"], "--uffd-evict-ms", "100", "uffd");
        let e = err(&[
            "--kernel",
            "k",
            "--mem-mode=uffd",
            "--uffd-evict-ms=100",
            "--uffd-evict-ms=200",
        ]);
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(rejected(&e), "--uffd-evict-ms");
    }

    #[test]
    fn options_of_other_modes_rejected() {
        wrong_mode(&["--kernel", "k"], "--uffd-latency-us", "10", "uffd");
        wrong_mode(&CGROUP_64, "--uffd-evict-ms", "100", "uffd");
        wrong_mode(&UFFD, "--cgroup-limit", "64", "cgroup");
        // As the user sees it.
        let text = err(&["--kernel", "k", "--uffd-latency-us", "10"]).to_string();
        assert!(
            text.contains("--uffd-latency-us only applies to --mem-mode uffd"),
            "{text}"
        );
    }

    #[test]
    fn cgroup_limit_required_and_ranged() {
        let e = err(&CGROUP);
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--cgroup-limit"), "{e}");
        // `validate` does not trust clap on it.
        let mut cli = Cli::try_parse_from([&["apf-vmm"][..], &CGROUP_64].concat()).unwrap();
        cli.boot.cgroup_limit_mib = None;
        assert_eq!(cli.boot.validate(), Err(ArgsError::MissingCgroupLimit));
        rejects(&CGROUP, "--cgroup-limit", &["15", "0", "1048577", "lots"]);
    }

    #[test]
    fn boot_values() {
        let a = run_args(&["--kernel", "k", "--boot", "dt"]);
        assert_eq!(a.boot, BootMode::Dt);
        assert_eq!(
            a.cmdline, DEFAULT_CMDLINE,
            "dt leaves the command line alone"
        );
        let a = run_args(&["--kernel", "k", "--boot=acpi"]);
        assert_eq!(a.boot, BootMode::Acpi);
        assert_eq!(a.cmdline, format!("{DEFAULT_CMDLINE} efi=noruntime"));
        let bad = ["ACPI", "uefi", "", "dt,acpi", "acpi "];
        rejects(&["--kernel", "k"], "--boot", &bad);
        let e = err(&["--kernel", "k", "--boot", "acpi", "--boot", "dt"]);
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(invalid_option(&["--kernel", "k", "--boot"]), "--boot");
    }

    #[test]
    fn acpi_cmdline_efi_runtime() {
        let acpi = |cmdline: &str| {
            run_args(&["--kernel", "k", "--boot", "acpi", "--cmdline", cmdline]).cmdline
        };
        assert_eq!(acpi("console=ttyS0"), "console=ttyS0 efi=noruntime");
        assert_eq!(acpi(""), "efi=noruntime");
        assert_eq!(acpi("efi=debug"), "efi=debug efi=noruntime");
        assert_eq!(acpi("noefi=noruntime x"), "noefi=noruntime x efi=noruntime");
        // The user's own choice stays.
        for given in [
            "efi=noruntime",
            "quiet efi=runtime",
            "efi=debug,noruntime console=ttyS0",
        ] {
            assert_eq!(acpi(given), given);
        }
        // Room for it is checked.
        let room = "x".repeat(CMDLINE_CAPACITY - 1 - " efi=noruntime".len());
        assert_eq!(acpi(&room), format!("{room} efi=noruntime"));
        let full = "x".repeat(CMDLINE_CAPACITY - " efi=noruntime".len());
        match refused(&["--kernel", "k", "--boot", "acpi", "--cmdline", &full]) {
            ArgsError::InvalidValue { option, reason, .. } => {
                assert_eq!(option, "--cmdline");
                assert!(reason.contains("--boot acpi adds"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Without --boot acpi the same command line is fine.
        assert_eq!(
            run_args(&["--kernel", "k", "--cmdline", &full]).cmdline,
            full
        );
    }

    #[test]
    fn apf_values() {
        assert_eq!(run_args(&["--kernel", "k", "--apf", "on"]).apf, ApfMode::On);
        assert_eq!(
            run_args(&["--kernel", "k", "--apf=hidden"]).apf,
            ApfMode::Hidden
        );
        assert_eq!(invalid_option(&["--kernel", "k", "--apf", "off"]), "--apf");
    }

    #[test]
    fn apf_irq_values() {
        for good in [16u32, 18, 22, 24, 31] {
            let a = run_args(&["--kernel", "k", "--apf-irq", &good.to_string()]);
            assert_eq!(a.apf_irq, Some(good));
        }
        let bad = [
            "15", "32", "23", "25", "26", "27", "28", "29", "30", "x", "+22",
        ];
        rejects(&["--kernel", "k"], "--apf-irq", &bad);
    }

    #[test]
    fn empty_path_rejected() {
        assert_eq!(invalid_option(&["--kernel", ""]), "--kernel");
        assert_eq!(invalid_option(&["--kernel", "k", "--initrd="]), "--initrd");
        assert_eq!(
            invalid_option(&["--kernel", "k", "--api-socket", ""]),
            "--api-socket"
        );
    }

    #[test]
    fn non_utf8_number_rejected() {
        use std::os::unix::ffi::OsStringExt;
        let args = vec![
            OsString::from("--kernel"),
            OsString::from("k"),
            OsString::from("--vcpus"),
            OsString::from_vec(vec![0xff, 0x32]),
        ];
        assert_eq!(parse(args).unwrap_err().kind(), ErrorKind::InvalidUtf8);
    }

    #[test]
    fn non_utf8_path_accepted() {
        use std::os::unix::ffi::OsStringExt;
        let raw = vec![b'k', 0xff];
        let args = vec![OsString::from("--kernel"), OsString::from_vec(raw.clone())];
        match parse(args) {
            Ok(Command::Run(a)) => assert_eq!(a.kernel, PathBuf::from(OsString::from_vec(raw))),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn move_commands() {
        match parse_strs(&["restore", "--from", "/snap", "--prefetch"]) {
            Ok(Command::Move(MoveCommand::Restore { from, prefetch, .. })) => {
                assert_eq!(from, PathBuf::from("/snap"));
                assert!(prefetch);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Boot options and a command do not mix, in either order.
        for args in [
            &["--kernel", "k", "restore", "--from", "/snap"][..],
            &["--quiet", "receive", "--listen", "/l"],
            &["restore", "--from", "/snap", "--kernel", "k"],
        ] {
            assert!(err(args).use_stderr(), "{args:?}");
        }
        // A command's help is help.
        assert_eq!(err(&["restore", "--help"]).kind(), ErrorKind::DisplayHelp);
    }
}
