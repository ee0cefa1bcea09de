// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! apf-vmm: a small arm64 KVM VMM for exercising KVM/arm64 asynchronous
//! page faults. It boots an arm64 Linux Image with a GICv3, PSCI and a
//! 16550 UART, can hide APF from the guest, can make guest page fetches
//! slow (userfaultfd or a memory cgroup), and prints each vCPU's `apf_*`
//! statistics at exit.
//!
//! Everything up to the KVM calls (arguments, input files, layout, device
//! tree, memory modes) builds and is tested on any Linux host; the VM itself
//! only exists on aarch64.

#![deny(clippy::undocumented_unsafe_blocks)]
// On other architectures the VM path is compiled out, which leaves parts of
// the shared code without a caller there; the aarch64 build has them all.
#![cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]

mod apf;
mod args;
mod bus;
mod cgroup;
mod evict;
mod fdt;
mod image;
mod layout;
mod memory;
mod pagestore;
mod pause;
mod regs;
mod serial;
mod stats;
#[cfg(test)]
mod testutil;
mod uffd;

#[cfg(target_arch = "aarch64")]
mod gic;
#[cfg(target_arch = "aarch64")]
mod vcpu;
#[cfg(target_arch = "aarch64")]
mod vm;

use std::fs::File;
use std::process::ExitCode;

use thiserror::Error;

use args::{ArgsError, Command};
use cgroup::CgroupError;
use fdt::FdtError;
use image::{ImageError, KernelInfo};
use layout::{Layout, LayoutError, MIB};
use memory::MemoryError;
use pagestore::PageStoreError;
use uffd::UffdError;

/// Exit status for bad arguments or unusable input files.
const EXIT_USAGE: u8 = 2;
/// Exit status for failures while setting up or running the VM.
const EXIT_FAILURE: u8 = 1;

/// Top-level errors.
#[derive(Debug, Error)]
enum Error {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Fdt(#[from] FdtError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Uffd(#[from] UffdError),
    #[error(transparent)]
    PageStore(#[from] PageStoreError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("creating the UART interrupt eventfd: {0}")]
    EventFd(std::io::Error),
    #[cfg(target_arch = "aarch64")]
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[cfg(not(target_arch = "aarch64"))]
    #[error(
        "apf-vmm runs guests only on an arm64 KVM host; this build is for {0} \
         (the arguments and input files were checked)"
    )]
    UnsupportedArch(&'static str),
}

impl Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Args(_) | Error::Image(_) | Error::Layout(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// Everything derived from the command line before any resource is taken.
struct Prepared {
    args: args::Args,
    layout: Layout,
    dtb: Vec<u8>,
    uffd_source: Option<File>,
}

/// Checks the input files, places them in guest RAM and writes the DTB.
fn prepare(args: args::Args) -> Result<Prepared, Error> {
    let kernel: KernelInfo = image::inspect_kernel(&args.kernel)?;
    let initrd_size = args
        .initrd
        .as_deref()
        .map(image::inspect_initrd)
        .transpose()?;
    let uffd_source = args
        .uffd
        .source
        .as_deref()
        .map(image::open_uffd_source)
        .transpose()?;
    let layout = layout::compute(args.mem_mib * MIB, &kernel, initrd_size)?;
    let dtb = fdt::create_fdt(&fdt::FdtConfig {
        vcpus: args.vcpus,
        ram: layout.ram,
        bootargs: &args.cmdline,
        initrd: layout.initrd,
    })?;
    Ok(Prepared {
        args,
        layout,
        dtb,
        uffd_source,
    })
}

/// Creates the cgroup for `--mem-mode cgroup` (memory.high = `limit_mib`,
/// memory.max = `max_mib`) and moves the process in. Must happen before
/// guest RAM is touched so that it is charged there.
fn enter_cgroup(limit_mib: u64, max_mib: u64, quiet: bool) -> Result<cgroup::Cgroup, Error> {
    let root = std::path::Path::new(cgroup::CGROUP_ROOT);
    cgroup::check_cgroup2(root)?;
    let name = apf_vmm::memcg::cgroup_name(std::process::id());
    let mut cg = cgroup::Cgroup::create(root, &name, limit_mib * MIB, max_mib * MIB)?;
    cg.join()?;
    if !cg.swap_max_set() {
        eprintln!(
            "apf-vmm: warning: could not set memory.swap.max=max in {} (no swap accounting?)",
            cg.path().display()
        );
    }
    if !quiet {
        eprintln!(
            "apf-vmm: running in cgroup {} with memory.high = {limit_mib} MiB, \
             memory.max = {max_mib} MiB",
            cg.path().display()
        );
    }
    Ok(cg)
}

#[cfg(target_arch = "aarch64")]
fn run(p: Prepared) -> Result<u8, Error> {
    use std::sync::{mpsc, Arc, Mutex, OnceLock};
    use std::time::Duration;

    use vmm_sys_util::eventfd::EventFd;

    use args::MemMode;
    use vm::{EvictSetup, RunEnd, Vm, VmConfig, VmEvent};

    let Prepared {
        args,
        layout,
        dtb,
        uffd_source,
    } = p;
    let quiet = args.quiet;

    // Dropped last: the process leaves the cgroup only after guest RAM is gone.
    let cgroup = match (args.mem_mode, args.cgroup_limit_mib, args.cgroup_max_mib) {
        (MemMode::Cgroup, Some(limit), Some(max)) => Some(enter_cgroup(limit, max, quiet)?),
        _ => None,
    };

    let mem = memory::create(&layout)?;
    if args.mem_mode == MemMode::Cgroup {
        memory::no_huge_pages(&mem, &layout)?;
    }
    memory::load_kernel(&mem, &args.kernel, &layout)?;
    if let (Some(path), Some(region)) = (args.initrd.as_deref(), layout.initrd) {
        memory::load_initrd(&mem, path, region)?;
    }
    memory::load_dtb(&mem, &dtb, layout.dtb)?;

    let (tx, rx) = mpsc::channel::<VmEvent>();
    // The guest may ask for an eviction pass on its console; the evictor
    // answers on the UART's input (`serial::EVICT_REQUEST`).
    let evict_channel = evict::EvictChannel::new();
    let evict_requests = (args.mem_mode == MemMode::Uffd && args.uffd.evict_ms > 0)
        .then(|| evict_channel.requester());
    // The bus, once made, for the evictor's answers.
    let answer_bus = Arc::new(OnceLock::<Arc<bus::MmioBus<serial::Console>>>::new());

    // Registered after loading, so the images are already present and only
    // the pages the guest touches later go through the handler (until an
    // eviction drops them too).
    let mut evict = None;
    let uffd = if args.mem_mode == MemMode::Uffd {
        let base = memory::host_base(&mem, &layout)?;
        // SAFETY: guest RAM stays mapped until after the handler and the
        // evictor are stopped (`mem` is dropped, or leaked, last).
        let store =
            unsafe { pagestore::PageStore::new(base, layout.ram.size, uffd::host_page_size()) }?;
        let store = Arc::new(Mutex::new(store));
        let fault = uffd::Userfault::register(base, layout.ram.size)?;
        let fatal_tx = tx.clone();
        let handler = fault.spawn_handler(
            Duration::from_micros(args.uffd.latency_us),
            uffd_source,
            store.clone(),
            move |e| {
                let _ = fatal_tx.send(VmEvent::Fatal(e.to_string()));
            },
        )?;
        if args.uffd.evict_ms > 0 {
            evict = Some(EvictSetup {
                interval: Duration::from_millis(args.uffd.evict_ms),
                store,
                channel: evict_channel,
                on_done: {
                    let answer_bus = answer_bus.clone();
                    Box::new(move || {
                        // The bus exists before any vCPU runs.
                        if let Some(bus) = answer_bus.get() {
                            let _ = bus.serial().enqueue_input(&[serial::EVICT_DONE]);
                        }
                    })
                },
            });
        }
        Some(handler)
    } else {
        None
    };

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let hook: Box<dyn FnMut(&[u8]) + Send> = Box::new(move |line: &[u8]| {
        if let Some(req) = &evict_requests {
            if line.ends_with(serial::EVICT_REQUEST) {
                req.request();
            }
        }
    });
    let serial = serial::SerialDevice::new(
        serial_irq.try_clone().map_err(Error::EventFd)?,
        serial::LineTap::new(std::io::stdout(), hook),
    );
    let bus = Arc::new(bus::MmioBus::new(serial));
    let _ = answer_bus.set(bus.clone());

    let vm = Vm::create(
        &VmConfig {
            vcpus: args.vcpus,
            layout: &layout,
            apf: args.apf,
            apf_irq: args.apf_irq,
            quiet,
        },
        &mem,
        serial_irq,
    )?;
    let report = vm.run(bus, tx, rx, evict)?;

    let uffd_stats = uffd.map(|h| h.stop());
    // Read while the cgroup still holds guest RAM; it goes with `cgroup`.
    let memcg = cgroup
        .as_ref()
        .map(|cg| apf_vmm::memcg::MemcgReport::read(cg.path()));

    if !quiet {
        for (index, stats) in report.stats.iter().enumerate() {
            match stats {
                Ok(s) => {
                    println!("{}", stats::apf_line(index, s));
                    println!("{}", stats::kvm_line(index, s));
                }
                Err(e) => println!("apf: vcpu{index} statistics unavailable: {e}"),
            }
        }
        if let Some(Ok(s)) = &uffd_stats {
            let e = match &report.evict {
                Some(Ok(e)) => *e,
                _ => evict::EvictStats::default(),
            };
            println!(
                "uffd: faults={} pages_copied={} from_source={} already_present={} restored={} \
                 evictions={} pages_evicted={} evict_skipped={}",
                s.faults,
                s.pages_copied,
                s.from_source,
                s.already_present,
                s.restored,
                e.evictions,
                e.pages_evicted,
                e.pause_timeouts
            );
        }
        if let Some(Ok(r)) = &memcg {
            println!("{}", r.line());
        }
    }
    if let Some(Err(e)) = &memcg {
        eprintln!("apf-vmm: warning: cgroup report: {e}");
    }
    if let Some(Err(e)) = &uffd_stats {
        eprintln!("apf-vmm: userfaultfd handler: {e}");
    }
    if let Some(Err(e)) = &report.evict {
        eprintln!("apf-vmm: {e}");
    }
    if report.all_stopped {
        drop(mem);
    } else {
        // A vCPU thread may still be inside KVM_RUN; keep its memory mapped.
        std::mem::forget(mem);
    }

    let (code, msg) = match report.end {
        RunEnd::Shutdown => (0, "guest powered off".to_string()),
        RunEnd::Reset => (0, "guest requested a reset; VM stopped".to_string()),
        RunEnd::Crash(i) => (EXIT_FAILURE, format!("guest reported a crash on vcpu{i}")),
        RunEnd::VcpuFailed(i, why) => (EXIT_FAILURE, format!("vcpu{i}: {why}")),
        RunEnd::Fatal(why) => (EXIT_FAILURE, why),
        RunEnd::Terminated => (EXIT_FAILURE, "terminated by signal".to_string()),
    };
    if code != 0 {
        eprintln!("apf-vmm: error: {msg}");
    } else if !quiet {
        eprintln!("apf-vmm: {msg}");
    }
    Ok(code)
}

#[cfg(not(target_arch = "aarch64"))]
fn run(_p: Prepared) -> Result<u8, Error> {
    Err(Error::UnsupportedArch(std::env::consts::ARCH))
}

fn main() -> ExitCode {
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apf-vmm: error: {e}\nTry 'apf-vmm --help' for the options.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let args = match command {
        Command::Help => {
            print!("{}", args::usage());
            return ExitCode::SUCCESS;
        }
        Command::Run(a) => *a,
    };
    match prepare(args).and_then(run) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("apf-vmm: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
