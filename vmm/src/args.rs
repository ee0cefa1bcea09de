// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Command line parsing.
//!
//! The parser is hand-written to keep the dependency tree small. It accepts
//! `--option value` and `--option=value`, rejects unknown options, repeated
//! options and options that do not apply to the chosen memory mode, and never
//! panics on user input.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use linux_loader::cmdline::Cmdline;
use thiserror::Error;

use crate::apf::KVM_ASYNC_PF_DEFAULT_IRQ;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// A full device tree (the default).
    Dt,
    /// ACPI tables, found through an EFI system table and memory map that
    /// a stub device tree (only `/chosen`) points at.
    Acpi,
}

/// Whether the guest is offered asynchronous page faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApfMode {
    /// Leave the APF service as KVM offers it (the default).
    On,
    /// Clear the APF bit in KVM_REG_ARM_VENDOR_HYP_BMAP_2 before the first run.
    Hidden,
}

/// Options of the userfaultfd memory mode.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UffdOptions {
    /// Delay, in microseconds, before each missing page is served.
    pub latency_us: u64,
    /// Interval, in milliseconds, of the evictor that drops every
    /// populated page again; 0 turns it off.
    pub evict_ms: u64,
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
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Boot a guest.
    Run(Box<Args>),
    /// Print the usage text and exit successfully.
    Help,
}

/// Errors found on the command line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    /// An option this program does not know.
    #[error("unknown option '{0}'")]
    UnknownOption(String),
    /// A bare word where an option was expected.
    #[error("unexpected argument '{0}' (options start with --)")]
    UnexpectedArgument(String),
    /// An option that needs a value came last.
    #[error("option {0} needs a value")]
    MissingValue(&'static str),
    /// A flag was given a value with `=`.
    #[error("option {0} does not take a value")]
    UnexpectedValue(&'static str),
    /// The same option twice.
    #[error("option {0} given more than once")]
    Duplicate(&'static str),
    /// A value that could not be used.
    #[error("invalid value '{value}' for {option}: {reason}")]
    InvalidValue {
        /// The option.
        option: &'static str,
        /// The value as given (lossily converted to UTF-8).
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// `--kernel` is mandatory.
    #[error("missing required option --kernel")]
    MissingKernel,
    /// `--mem-mode cgroup` without a limit.
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

/// memory.max without `--cgroup-max`: half the limit above it. The gap
/// holds what is charged while reclaim catches up (swap-outs waiting for
/// the disk, and fetches in flight on the kernel's async page fault
/// workers, which memory.high does not throttle).
pub fn default_cgroup_max_mib(limit_mib: u64) -> u64 {
    limit_mib + limit_mib / 2
}

/// Usage text printed for `--help` and after argument errors.
pub fn usage() -> String {
    format!(
        "Usage: apf-vmm --kernel IMAGE [options]

Boots an arm64 Linux Image in a KVM guest with a GICv3, PSCI and a 16550 UART.

Options:
  --kernel PATH           arm64 Image to boot (required)
  --initrd PATH           initial ramdisk
  --cmdline STR           kernel command line (default: \"{DEFAULT_CMDLINE}\")
  --boot dt|acpi          how the guest finds the machine: a device tree (default),
                          or ACPI tables behind an EFI system table and memory map
                          that a stub device tree points at; acpi adds
                          {EFI_NORUNTIME} to the command line unless it sets efi=[no]runtime
  --vcpus N               number of vCPUs, 1..{MAX_VCPUS} (default: {DEFAULT_VCPUS})
  --mem MIB               guest RAM in MiB, {MIN_MEM_MIB}..{MAX_MEM_MIB} (default: {DEFAULT_MEM_MIB})
  --mem-mode MODE         plain | uffd | cgroup (default: plain)
  --uffd-latency-us N     uffd: delay before each page is served, 0..{MAX_UFFD_LATENCY_US} (default: 0)
  --uffd-evict-ms N       uffd: every N ms pause the vCPUs and drop every populated
                          page (its content is kept and served again); 0 (default)
                          or {MIN_UFFD_EVICT_MS}..{MAX_UFFD_EVICT_MS}
  --cgroup-limit MIB      cgroup: memory.high of the VMM's cgroup, {MIN_CGROUP_LIMIT_MIB}..{MAX_CGROUP_LIMIT_MIB} (required):
                          above it the kernel reclaims (swaps) and throttles the
                          VMM instead of OOM-killing it
  --cgroup-max MIB        cgroup: memory.max, the hard limit: a backstop above
                          --cgroup-limit, up to {MAX_CGROUP_MAX_MIB} (default: 1.5 x --cgroup-limit);
                          a charge there that reclaim cannot satisfy ends in an
                          OOM kill
  --apf on|hidden         offer asynchronous page faults or hide them (default: on)
  --apf-irq INTID         PPI for APF PAGE_READY, 16..31 except 23 and 25..30
                          (default: KVM's, {KVM_ASYNC_PF_DEFAULT_IRQ})
  --api-socket PATH       take snapshot and migrate requests on this Unix socket
                          (apf-vmm snapshot, apf-vmm migrate)
  --quiet                 do not print statistics and informational messages
  -h, --help              print this help

Other forms (apf-vmm COMMAND --help for their options):
  apf-vmm snapshot        save a running VM (by its --api-socket) and stop it
  apf-vmm migrate         migrate a running VM by post-copy to apf-vmm receive
  apf-vmm restore         run a snapshot, its RAM served lazily by userfaultfd
  apf-vmm receive         run a VM that arrives by post-copy migration

Exit status: 0 after a clean guest shutdown, 1 on a runtime error,
2 on bad arguments or unusable input files.
"
    )
}

/// Options that take a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Kernel,
    Initrd,
    Cmdline,
    Boot,
    Vcpus,
    Mem,
    MemMode,
    UffdLatency,
    UffdEvict,
    CgroupLimit,
    CgroupMax,
    Apf,
    ApfIrq,
    ApiSocket,
}

impl Opt {
    fn name(self) -> &'static str {
        match self {
            Opt::Kernel => "--kernel",
            Opt::Initrd => "--initrd",
            Opt::Cmdline => "--cmdline",
            Opt::Boot => "--boot",
            Opt::Vcpus => "--vcpus",
            Opt::Mem => "--mem",
            Opt::MemMode => "--mem-mode",
            Opt::UffdLatency => "--uffd-latency-us",
            Opt::UffdEvict => "--uffd-evict-ms",
            Opt::CgroupLimit => "--cgroup-limit",
            Opt::CgroupMax => "--cgroup-max",
            Opt::Apf => "--apf",
            Opt::ApfIrq => "--apf-irq",
            Opt::ApiSocket => "--api-socket",
        }
    }

    fn from_name(name: &str) -> Option<Opt> {
        const ALL: [Opt; 14] = [
            Opt::Kernel,
            Opt::Initrd,
            Opt::Cmdline,
            Opt::Boot,
            Opt::Vcpus,
            Opt::Mem,
            Opt::MemMode,
            Opt::UffdLatency,
            Opt::UffdEvict,
            Opt::CgroupLimit,
            Opt::CgroupMax,
            Opt::Apf,
            Opt::ApfIrq,
            Opt::ApiSocket,
        ];
        ALL.into_iter().find(|o| o.name() == name)
    }
}

/// Values as collected, before cross-checks.
#[derive(Default)]
struct Raw {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    boot: Option<BootMode>,
    vcpus: Option<u8>,
    mem_mib: Option<u64>,
    mem_mode: Option<MemMode>,
    uffd_latency_us: Option<u64>,
    uffd_evict_ms: Option<u64>,
    cgroup_limit_mib: Option<u64>,
    cgroup_max_mib: Option<u64>,
    apf: Option<ApfMode>,
    apf_irq: Option<u32>,
    api_socket: Option<PathBuf>,
    quiet: bool,
}

fn invalid(option: Opt, value: &str, reason: impl Into<String>) -> ArgsError {
    ArgsError::InvalidValue {
        option: option.name(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn utf8(option: Opt, value: &OsStr) -> Result<String, ArgsError> {
    value
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(option, &value.to_string_lossy(), "not valid UTF-8"))
}

fn path(option: Opt, value: &OsStr) -> Result<PathBuf, ArgsError> {
    if value.is_empty() {
        return Err(invalid(option, "", "empty path"));
    }
    Ok(PathBuf::from(value))
}

/// Parses an unsigned decimal number within `min..=max`.
fn number(option: Opt, value: &OsStr, min: u64, max: u64) -> Result<u64, ArgsError> {
    let text = utf8(option, value)?;
    // `u64::from_str` accepts a leading '+'; a plain digit string is clearer.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(option, &text, "not a decimal number"));
    }
    let n: u64 = text
        .parse()
        .map_err(|_| invalid(option, &text, "number too large"))?;
    if n < min || n > max {
        return Err(invalid(option, &text, format!("must be {min}..{max}")));
    }
    Ok(n)
}

fn set_once<T>(slot: &mut Option<T>, opt: Opt, value: T) -> Result<(), ArgsError> {
    if slot.is_some() {
        return Err(ArgsError::Duplicate(opt.name()));
    }
    *slot = Some(value);
    Ok(())
}

fn apply(raw: &mut Raw, opt: Opt, value: &OsStr) -> Result<(), ArgsError> {
    match opt {
        Opt::Kernel => set_once(&mut raw.kernel, opt, path(opt, value)?),
        Opt::Initrd => set_once(&mut raw.initrd, opt, path(opt, value)?),
        Opt::ApiSocket => set_once(&mut raw.api_socket, opt, path(opt, value)?),
        Opt::Cmdline => set_once(&mut raw.cmdline, opt, utf8(opt, value)?),
        Opt::Vcpus => {
            let n = number(opt, value, 1, u64::from(MAX_VCPUS))?;
            let n =
                u8::try_from(n).map_err(|_| invalid(opt, &value.to_string_lossy(), "too large"))?;
            set_once(&mut raw.vcpus, opt, n)
        }
        Opt::Mem => {
            let n = number(opt, value, MIN_MEM_MIB, MAX_MEM_MIB)?;
            set_once(&mut raw.mem_mib, opt, n)
        }
        Opt::UffdLatency => {
            let n = number(opt, value, 0, MAX_UFFD_LATENCY_US)?;
            set_once(&mut raw.uffd_latency_us, opt, n)
        }
        Opt::UffdEvict => {
            let n = number(opt, value, 0, MAX_UFFD_EVICT_MS)?;
            if n != 0 && n < MIN_UFFD_EVICT_MS {
                return Err(invalid(
                    opt,
                    &n.to_string(),
                    format!("must be 0 (off) or {MIN_UFFD_EVICT_MS}..{MAX_UFFD_EVICT_MS}"),
                ));
            }
            set_once(&mut raw.uffd_evict_ms, opt, n)
        }
        Opt::CgroupLimit => {
            let n = number(opt, value, MIN_CGROUP_LIMIT_MIB, MAX_CGROUP_LIMIT_MIB)?;
            set_once(&mut raw.cgroup_limit_mib, opt, n)
        }
        Opt::CgroupMax => {
            let n = number(opt, value, MIN_CGROUP_LIMIT_MIB, MAX_CGROUP_MAX_MIB)?;
            set_once(&mut raw.cgroup_max_mib, opt, n)
        }
        Opt::MemMode => {
            let text = utf8(opt, value)?;
            let mode = match text.as_str() {
                "plain" => MemMode::Plain,
                "uffd" => MemMode::Uffd,
                "cgroup" => MemMode::Cgroup,
                _ => return Err(invalid(opt, &text, "expected plain, uffd or cgroup")),
            };
            set_once(&mut raw.mem_mode, opt, mode)
        }
        Opt::Boot => {
            let text = utf8(opt, value)?;
            let mode = match text.as_str() {
                "dt" => BootMode::Dt,
                "acpi" => BootMode::Acpi,
                _ => return Err(invalid(opt, &text, "expected dt or acpi")),
            };
            set_once(&mut raw.boot, opt, mode)
        }
        Opt::Apf => {
            let text = utf8(opt, value)?;
            let mode = match text.as_str() {
                "on" => ApfMode::On,
                "hidden" => ApfMode::Hidden,
                _ => return Err(invalid(opt, &text, "expected on or hidden")),
            };
            set_once(&mut raw.apf, opt, mode)
        }
        Opt::ApfIrq => {
            let n = number(
                opt,
                value,
                u64::from(PPI_BASE_INTID),
                u64::from(SPI_BASE_INTID - 1),
            )?;
            // In range 16..=31, so the conversion cannot fail.
            let intid = u32::try_from(n).unwrap_or(u32::MAX);
            if reserved_ppi_intids().contains(&intid) {
                return Err(invalid(
                    opt,
                    &n.to_string(),
                    "used by the PMU, the vGIC maintenance interrupt or a timer",
                ));
            }
            set_once(&mut raw.apf_irq, opt, intid)
        }
    }
}

/// Parses the arguments that follow the program name.
pub fn parse<I>(args: I) -> Result<Command, ArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut raw = Raw::default();
    let mut iter = args.into_iter();

    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else {
            return Err(ArgsError::UnexpectedArgument(
                arg.to_string_lossy().into_owned(),
            ));
        };
        if text == "-h" || text == "--help" {
            return Ok(Command::Help);
        }
        if !text.starts_with("--") {
            return Err(ArgsError::UnexpectedArgument(text.to_string()));
        }
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) => (n, Some(OsString::from(v))),
            None => (text, None),
        };
        if name == "--quiet" {
            if inline.is_some() {
                return Err(ArgsError::UnexpectedValue("--quiet"));
            }
            if raw.quiet {
                return Err(ArgsError::Duplicate("--quiet"));
            }
            raw.quiet = true;
            continue;
        }
        let opt = Opt::from_name(name).ok_or_else(|| ArgsError::UnknownOption(name.to_string()))?;
        let value = match inline {
            Some(v) => v,
            None => iter.next().ok_or(ArgsError::MissingValue(opt.name()))?,
        };
        apply(&mut raw, opt, &value)?;
    }

    finish(raw).map(|a| Command::Run(Box::new(a)))
}

/// Validates the command line with linux-loader and returns it as the
/// kernel will see it.
fn kernel_cmdline(text: &str) -> Result<String, ArgsError> {
    let bad = |reason: String| invalid(Opt::Cmdline, text, reason);
    // One byte is needed for the terminating NUL.
    if text.len() >= CMDLINE_CAPACITY {
        return Err(bad(format!(
            "{} bytes, the arm64 limit is {}",
            text.len(),
            CMDLINE_CAPACITY - 1
        )));
    }
    let cmdline = Cmdline::try_from(text, CMDLINE_CAPACITY).map_err(|e| bad(e.to_string()))?;
    let cstring = cmdline.as_cstring().map_err(|e| bad(e.to_string()))?;
    cstring
        .into_string()
        .map_err(|_| bad("not valid UTF-8".to_string()))
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
    if text.len() >= CMDLINE_CAPACITY {
        return Err(invalid(
            Opt::Cmdline,
            &cmdline,
            format!(
                "{} bytes with the '{EFI_NORUNTIME}' that --boot acpi adds, the arm64 limit is {}",
                text.len(),
                CMDLINE_CAPACITY - 1
            ),
        ));
    }
    kernel_cmdline(&text)
}

fn finish(raw: Raw) -> Result<Args, ArgsError> {
    let kernel = raw.kernel.ok_or(ArgsError::MissingKernel)?;
    let mem_mode = raw.mem_mode.unwrap_or(MemMode::Plain);

    if mem_mode != MemMode::Uffd {
        if raw.uffd_latency_us.is_some() {
            return Err(ArgsError::WrongMode {
                option: Opt::UffdLatency.name(),
                mode: "uffd",
            });
        }
        if raw.uffd_evict_ms.is_some() {
            return Err(ArgsError::WrongMode {
                option: Opt::UffdEvict.name(),
                mode: "uffd",
            });
        }
    }
    let cgroup_max_mib = match (mem_mode, raw.cgroup_limit_mib, raw.cgroup_max_mib) {
        (MemMode::Cgroup, None, _) => return Err(ArgsError::MissingCgroupLimit),
        (MemMode::Cgroup, Some(limit), Some(max)) if max < limit => {
            return Err(invalid(
                Opt::CgroupMax,
                &max.to_string(),
                format!("below --cgroup-limit ({limit})"),
            ));
        }
        (MemMode::Cgroup, Some(limit), max) => Some(max.unwrap_or(default_cgroup_max_mib(limit))),
        (MemMode::Plain | MemMode::Uffd, Some(_), _) => {
            return Err(ArgsError::WrongMode {
                option: Opt::CgroupLimit.name(),
                mode: "cgroup",
            });
        }
        (MemMode::Plain | MemMode::Uffd, None, Some(_)) => {
            return Err(ArgsError::WrongMode {
                option: Opt::CgroupMax.name(),
                mode: "cgroup",
            });
        }
        (MemMode::Plain | MemMode::Uffd, None, None) => None,
    };

    let boot = raw.boot.unwrap_or(BootMode::Dt);
    let mut cmdline = kernel_cmdline(raw.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE))?;
    if boot == BootMode::Acpi {
        cmdline = acpi_cmdline(cmdline)?;
    }

    Ok(Args {
        kernel,
        initrd: raw.initrd,
        cmdline,
        boot,
        vcpus: raw.vcpus.unwrap_or(DEFAULT_VCPUS),
        mem_mib: raw.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
        mem_mode,
        uffd: UffdOptions {
            latency_us: raw.uffd_latency_us.unwrap_or(0),
            evict_ms: raw.uffd_evict_ms.unwrap_or(0),
        },
        cgroup_limit_mib: raw.cgroup_limit_mib,
        cgroup_max_mib,
        apf: raw.apf.unwrap_or(ApfMode::On),
        apf_irq: raw.apf_irq,
        quiet: raw.quiet,
        api_socket: raw.api_socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, ArgsError> {
        parse(args.iter().map(OsString::from))
    }

    fn run_args(args: &[&str]) -> Args {
        match parse_strs(args) {
            Ok(Command::Run(a)) => *a,
            other => panic!("expected Run for {args:?}, got {other:?}"),
        }
    }

    fn err(args: &[&str]) -> ArgsError {
        match parse_strs(args) {
            Err(e) => e,
            Ok(c) => panic!("expected an error for {args:?}, got {c:?}"),
        }
    }

    fn invalid_option(e: ArgsError) -> &'static str {
        match e {
            ArgsError::InvalidValue { option, .. } => option,
            other => panic!("expected InvalidValue, got {other:?}"),
        }
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
            "--apf",
            "hidden",
            "--apf-irq",
            "31",
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
        assert_eq!(a.apf, ApfMode::Hidden);
        assert_eq!(a.apf_irq, Some(31));
        assert!(a.quiet);
    }

    #[test]
    fn cgroup_mode() {
        let a = run_args(&[
            "--kernel",
            "k",
            "--mem-mode",
            "cgroup",
            "--cgroup-limit",
            "128",
        ]);
        assert_eq!(a.mem_mode, MemMode::Cgroup);
        assert_eq!(a.cgroup_limit_mib, Some(128));
        assert_eq!(a.cgroup_max_mib, Some(192));

        let a = run_args(&[
            "--kernel",
            "k",
            "--mem-mode",
            "cgroup",
            "--cgroup-limit",
            "48",
            "--cgroup-max=48",
        ]);
        assert_eq!(a.cgroup_limit_mib, Some(48));
        assert_eq!(a.cgroup_max_mib, Some(48));
        assert_eq!(default_cgroup_max_mib(17), 25);
    }

    #[test]
    fn cgroup_max_checks() {
        let cg = [
            "--kernel",
            "k",
            "--mem-mode",
            "cgroup",
            "--cgroup-limit",
            "64",
        ];
        for bad in ["63", "15", "2097153", "x"] {
            let mut args = cg.to_vec();
            args.extend(["--cgroup-max", bad]);
            assert_eq!(invalid_option(err(&args)), "--cgroup-max", "value {bad:?}");
        }
        let mut args = cg.to_vec();
        args.extend(["--cgroup-max", "2097152"]);
        assert_eq!(run_args(&args).cgroup_max_mib, Some(2 << 20));
        assert_eq!(
            err(&["--kernel", "k", "--cgroup-max", "64"]),
            ArgsError::WrongMode {
                option: "--cgroup-max",
                mode: "cgroup"
            }
        );
        assert_eq!(
            err(&[
                "--kernel",
                "k",
                "--mem-mode",
                "cgroup",
                "--cgroup-max",
                "64"
            ]),
            ArgsError::MissingCgroupLimit
        );
        assert!(usage().contains("--cgroup-max"));
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
        let max = "x".repeat(CMDLINE_CAPACITY - 1);
        assert_eq!(run_args(&["--kernel", "k", "--cmdline", &max]).cmdline, max);
        let long = "x".repeat(CMDLINE_CAPACITY);
        assert_eq!(
            invalid_option(err(&["--kernel", "k", "--cmdline", &long])),
            "--cmdline"
        );
        assert_eq!(
            invalid_option(err(&["--kernel", "k", "--cmdline", "a\0b"])),
            "--cmdline"
        );
    }

    #[test]
    fn help() {
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["--kernel", "k", "-h"]), Ok(Command::Help));
        assert!(usage().contains("--uffd-latency-us"));
    }

    #[test]
    fn missing_kernel() {
        assert_eq!(err(&[]), ArgsError::MissingKernel);
        assert_eq!(err(&["--vcpus", "2"]), ArgsError::MissingKernel);
    }

    #[test]
    fn unknown_and_positional() {
        assert_eq!(
            err(&["--kernel", "k", "--bogus", "1"]),
            ArgsError::UnknownOption("--bogus".into())
        );
        assert_eq!(
            err(&["Image"]),
            ArgsError::UnexpectedArgument("Image".into())
        );
        assert_eq!(err(&["-k"]), ArgsError::UnexpectedArgument("-k".into()));
    }

    #[test]
    fn uffd_source_is_gone() {
        assert_eq!(
            err(&["--kernel", "k", "--mem-mode", "uffd", "--uffd-source", "x"]),
            ArgsError::UnknownOption("--uffd-source".into())
        );
        assert!(!usage().contains("--uffd-source"));
    }

    #[test]
    fn missing_value() {
        assert_eq!(err(&["--kernel"]), ArgsError::MissingValue("--kernel"));
        assert_eq!(
            err(&["--kernel", "k", "--vcpus"]),
            ArgsError::MissingValue("--vcpus")
        );
    }

    #[test]
    fn duplicates() {
        assert_eq!(
            err(&["--kernel", "a", "--kernel", "b"]),
            ArgsError::Duplicate("--kernel")
        );
        assert_eq!(
            err(&["--kernel", "a", "--quiet", "--quiet"]),
            ArgsError::Duplicate("--quiet")
        );
        assert_eq!(
            err(&["--kernel", "a", "--mem", "64", "--mem=128"]),
            ArgsError::Duplicate("--mem")
        );
    }

    #[test]
    fn quiet_takes_no_value() {
        assert_eq!(
            err(&["--kernel", "a", "--quiet=yes"]),
            ArgsError::UnexpectedValue("--quiet")
        );
    }

    #[test]
    fn vcpus_range() {
        assert_eq!(run_args(&["--kernel", "k", "--vcpus", "1"]).vcpus, 1);
        for bad in ["0", "9", "-1", "two", "", "+2", "99999999999999999999999"] {
            assert_eq!(
                invalid_option(err(&["--kernel", "k", "--vcpus", bad])),
                "--vcpus",
                "value {bad:?}"
            );
        }
    }

    #[test]
    fn mem_range() {
        assert_eq!(run_args(&["--kernel", "k", "--mem", "64"]).mem_mib, 64);
        for bad in ["63", "4097", "0", "1G", "512M"] {
            assert_eq!(
                invalid_option(err(&["--kernel", "k", "--mem", bad])),
                "--mem",
                "value {bad:?}"
            );
        }
    }

    #[test]
    fn mem_mode_values() {
        assert_eq!(
            invalid_option(err(&["--kernel", "k", "--mem-mode", "swap"])),
            "--mem-mode"
        );
        assert_eq!(
            invalid_option(err(&["--kernel", "k", "--mem-mode", "UFFD"])),
            "--mem-mode"
        );
    }

    #[test]
    fn uffd_latency_range() {
        assert_eq!(
            invalid_option(err(&[
                "--kernel",
                "k",
                "--mem-mode",
                "uffd",
                "--uffd-latency-us",
                "1000001"
            ])),
            "--uffd-latency-us"
        );
        let a = run_args(&[
            "--kernel",
            "k",
            "--mem-mode",
            "uffd",
            "--uffd-latency-us",
            "1000000",
        ]);
        assert_eq!(a.uffd.latency_us, 1_000_000);
    }

    #[test]
    fn uffd_evict_range() {
        let base = ["--kernel", "k", "--mem-mode", "uffd", "--uffd-evict-ms"];
        for bad in ["1", "9", "600001", "-5", "1.5", ""] {
            let mut v = base.to_vec();
            v.push(bad);
            assert_eq!(invalid_option(err(&v)), "--uffd-evict-ms", "{bad}");
        }
        for (good, want) in [("0", 0), ("10", 10), ("1500", 1500), ("600000", 600_000)] {
            let mut v = base.to_vec();
            v.push(good);
            assert_eq!(run_args(&v).uffd.evict_ms, want);
        }
        assert_eq!(
            run_args(&["--kernel", "k", "--mem-mode", "uffd"])
                .uffd
                .evict_ms,
            0
        );
        assert_eq!(
            err(&["--kernel", "k", "--uffd-evict-ms", "100"]),
            ArgsError::WrongMode {
                option: "--uffd-evict-ms",
                mode: "uffd"
            }
        );
        assert_eq!(
            err(&[
                "--kernel",
                "k",
                "--mem-mode=uffd",
                "--uffd-evict-ms=100",
                "--uffd-evict-ms=200"
            ]),
            ArgsError::Duplicate("--uffd-evict-ms")
        );
    }

    #[test]
    fn options_of_other_modes_rejected() {
        assert_eq!(
            err(&["--kernel", "k", "--uffd-latency-us", "10"]),
            ArgsError::WrongMode {
                option: "--uffd-latency-us",
                mode: "uffd"
            }
        );
        assert_eq!(
            err(&[
                "--kernel",
                "k",
                "--mem-mode",
                "cgroup",
                "--cgroup-limit",
                "64",
                "--uffd-evict-ms",
                "100"
            ]),
            ArgsError::WrongMode {
                option: "--uffd-evict-ms",
                mode: "uffd"
            }
        );
        assert_eq!(
            err(&[
                "--kernel",
                "k",
                "--mem-mode",
                "uffd",
                "--cgroup-limit",
                "64"
            ]),
            ArgsError::WrongMode {
                option: "--cgroup-limit",
                mode: "cgroup"
            }
        );
    }

    #[test]
    fn cgroup_limit_required_and_ranged() {
        assert_eq!(
            err(&["--kernel", "k", "--mem-mode", "cgroup"]),
            ArgsError::MissingCgroupLimit
        );
        for bad in ["15", "0", "1048577", "lots"] {
            assert_eq!(
                invalid_option(err(&[
                    "--kernel",
                    "k",
                    "--mem-mode",
                    "cgroup",
                    "--cgroup-limit",
                    bad
                ])),
                "--cgroup-limit",
                "value {bad:?}"
            );
        }
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
        for bad in ["ACPI", "uefi", "", "dt,acpi", "acpi "] {
            assert_eq!(
                err(&["--kernel", "k", "--boot", bad]),
                ArgsError::InvalidValue {
                    option: "--boot",
                    value: bad.to_string(),
                    reason: "expected dt or acpi".to_string(),
                },
                "value {bad:?}"
            );
        }
        assert_eq!(
            err(&["--kernel", "k", "--boot", "acpi", "--boot", "dt"]),
            ArgsError::Duplicate("--boot")
        );
        assert_eq!(
            err(&["--kernel", "k", "--boot"]),
            ArgsError::MissingValue("--boot")
        );
        assert!(usage().contains("--boot dt|acpi"));
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
        match err(&["--kernel", "k", "--boot", "acpi", "--cmdline", &full]) {
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
            invalid_option(err(&["--kernel", "k", "--apf", "off"])),
            "--apf"
        );
    }

    #[test]
    fn apf_irq_values() {
        for good in [16u32, 18, 22, 24, 31] {
            let a = run_args(&["--kernel", "k", "--apf-irq", &good.to_string()]);
            assert_eq!(a.apf_irq, Some(good));
        }
        for bad in ["15", "32", "23", "25", "26", "27", "28", "29", "30", "x"] {
            assert_eq!(
                invalid_option(err(&["--kernel", "k", "--apf-irq", bad])),
                "--apf-irq",
                "value {bad:?}"
            );
        }
    }

    #[test]
    fn empty_path_rejected() {
        assert_eq!(invalid_option(err(&["--kernel", ""])), "--kernel");
        assert_eq!(
            invalid_option(err(&["--kernel", "k", "--initrd="])),
            "--initrd"
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
        assert_eq!(invalid_option(parse(args).unwrap_err()), "--vcpus");
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
}
