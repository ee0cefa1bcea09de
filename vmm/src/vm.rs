// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The KVM virtual machine: memory slot, vCPUs, vGIC, UART interrupt, APF
//! configuration, and the threads that run it.

use crate::serial::Console;
use std::fs::File;
use std::os::unix::thread::{JoinHandleExt, RawPthread};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{DeviceFd, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::apf::{self, ApfError, HostApf};
use crate::args::ApfMode;
use crate::bus::MmioBus;
use crate::evict::{self, EvictChannel, EvictError, EvictStats, VcpuPause};
use crate::gic::{self, GicError};
use crate::layout::{Layout, SERIAL_SPI};
use crate::memory::{self, GuestMem, MemoryError};
use crate::pagestore::PageStore;
use crate::pause::{PauseError, PauseGate};
use crate::stats::{self, Stat, StatsError};
use crate::vcpu::{self, Runner, VcpuEnd, VcpuError};

/// How long to keep kicking vCPU threads before giving up on joining them.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the evictor waits for every vCPU to leave KVM_RUN before it
/// skips a pass. A vCPU blocked in a userfaultfd fault leaves once the
/// handler serves the page.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Set by SIGINT/SIGTERM; polled by the main thread.
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERMINATE.store(true, Ordering::Relaxed);
}

/// Makes the vCPU on this thread leave KVM_RUN (EINTR), now or at its next
/// entry.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    vcpu::kick_current_thread();
}

/// The signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// VM errors.
#[derive(Debug, Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    /// Guest memory problem.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    MemorySlot(kvm_ioctls::Error),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// vGIC setup failed.
    #[error(transparent)]
    Gic(#[from] GicError),
    /// APF setup failed.
    #[error(transparent)]
    Apf(#[from] ApfError),
    /// KVM_IRQFD for the UART failed.
    #[error("KVM_IRQFD for the UART: {0}")]
    Irqfd(kvm_ioctls::Error),
    /// Installing a signal handler failed.
    #[error("installing signal handlers: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// A vCPU thread could not be started.
    #[error("starting vCPU thread {index}: {source}")]
    Spawn {
        /// vCPU index.
        index: u8,
        /// Cause.
        source: std::io::Error,
    },
    /// The userfaultfd evictor could not be started.
    #[error(transparent)]
    Evict(#[from] EvictError),
}

/// The userfaultfd evictor to run alongside the vCPUs.
pub struct EvictSetup {
    /// Time between two passes.
    pub interval: Duration,
    /// The state shared with the fault handler.
    pub store: Arc<Mutex<PageStore>>,
    /// Where passes are requested (by the console, see `serial`).
    pub channel: EvictChannel,
    /// Called after each requested pass.
    pub on_done: Box<dyn Fn() + Send>,
}

/// Pauses the VM's vCPU threads through the gate they check, kicking them
/// with the kick signal.
struct VcpuPauser {
    gate: Arc<PauseGate>,
    /// The vCPU threads; they are joined only after the evictor is stopped,
    /// so these ids stay valid while it runs.
    threads: Vec<RawPthread>,
}

impl VcpuPause for VcpuPauser {
    fn pause(&self) -> Result<(), PauseError> {
        self.gate.pause(
            || {
                for t in &self.threads {
                    // SAFETY: `t` is a thread of this process that has not
                    // been joined (see `threads`); an exited one gives ESRCH,
                    // which is fine: it left the gate.
                    // (musl's pthread_t is a pointer, std's an integer.)
                    unsafe { libc::pthread_kill(*t as libc::pthread_t, kick_signal()) };
                }
            },
            PAUSE_TIMEOUT,
        )
    }

    fn resume(&self) {
        self.gate.resume();
    }
}

/// What the VM needs besides guest memory.
pub struct VmConfig<'a> {
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Memory layout (entry point and DTB address).
    pub layout: &'a Layout,
    /// APF offered or hidden.
    pub apf: ApfMode,
    /// PAGE_READY PPI, if given.
    pub apf_irq: Option<u32>,
    /// Suppress informational messages.
    pub quiet: bool,
}

/// Events the main thread waits for.
#[derive(Debug)]
pub enum VmEvent {
    /// A vCPU thread ended.
    Vcpu {
        /// vCPU index.
        index: u8,
        /// Why.
        end: VcpuEnd,
    },
    /// A helper (the userfaultfd handler) failed for good.
    Fatal(String),
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest powered off.
    Shutdown,
    /// The guest asked for a reset, which ends the VM.
    Reset,
    /// The guest reported a crash.
    Crash(u8),
    /// A vCPU failed.
    VcpuFailed(u8, String),
    /// A helper thread failed.
    Fatal(String),
    /// SIGINT or SIGTERM.
    Terminated,
}

/// The result of `Vm::run`.
pub struct RunReport {
    /// How it ended.
    pub end: RunEnd,
    /// Per-vCPU statistics, read after every vCPU stopped.
    pub stats: Vec<Result<Vec<Stat>, StatsError>>,
    /// False if a vCPU thread could not be stopped; it may still use guest
    /// memory, which must then stay mapped until the process exits.
    pub all_stopped: bool,
    /// The evictor's counters, if it ran.
    pub evict: Option<Result<EvictStats, EvictError>>,
}

/// A configured VM that has not run yet.
pub struct Vm {
    // Field order is drop order: vCPUs and devices before the VM and /dev/kvm.
    vcpus: Vec<VcpuFd>,
    stats: Vec<Result<File, StatsError>>,
    _serial_irq: EventFd,
    _gic: DeviceFd,
    _fd: VmFd,
    _kvm: Kvm,
}

fn info(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("apf-vmm: {msg}");
    }
}

impl Vm {
    /// Creates the VM around `mem`, which must outlive it, loads nothing
    /// (the caller has filled guest memory), and configures everything up
    /// to the first KVM_RUN. `serial_irq` is registered as the UART's irqfd.
    pub fn create(cfg: &VmConfig<'_>, mem: &GuestMem, serial_irq: EventFd) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let vm = kvm.create_vm().map_err(VmError::CreateVm)?;

        let host = memory::host_base(mem, cfg.layout)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: cfg.layout.ram.base,
            memory_size: cfg.layout.ram.size,
            userspace_addr: host as u64,
        };
        // SAFETY: the range is the guest RAM mapping owned by `mem`, which
        // the caller keeps alive until after this VM is dropped (`Vm::run`
        // consumes the VM; main drops guest memory only after that).
        unsafe { vm.set_user_memory_region(region) }.map_err(VmError::MemorySlot)?;

        let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
        for index in 0..cfg.vcpus {
            vcpus.push(vcpu::create(&vm, index)?);
        }
        let gic = gic::create(&vm)?;
        let Some(boot) = vcpus.first() else {
            return Err(VmError::Vcpu(VcpuError::Create {
                index: 0,
                source: kvm_ioctls::Error::new(libc::EINVAL),
            }));
        };
        vcpu::set_boot_regs(boot, cfg.layout.kernel.base, cfg.layout.dtb.base)?;

        configure_apf(cfg, &vcpus)?;

        vm.register_irqfd(&serial_irq, SERIAL_SPI)
            .map_err(VmError::Irqfd)?;

        let stats = vcpus.iter().map(stats::open_stats_fd).collect();

        Ok(Vm {
            vcpus,
            stats,
            _serial_irq: serial_irq,
            _gic: gic,
            _fd: vm,
            _kvm: kvm,
        })
    }

    /// Runs the VM until the guest powers off, resets or fails, or the VMM
    /// is told to stop, then stops every vCPU and reads their statistics.
    /// With `evict`, the userfaultfd evictor runs meanwhile.
    pub fn run(
        self,
        bus: Arc<MmioBus<Console>>,
        events: Sender<VmEvent>,
        rx: Receiver<VmEvent>,
        evict: Option<EvictSetup>,
    ) -> Result<RunReport, VmError> {
        register_signal_handler(kick_signal(), on_kick).map_err(VmError::Signal)?;
        register_signal_handler(libc::SIGINT, on_terminate).map_err(VmError::Signal)?;
        register_signal_handler(libc::SIGTERM, on_terminate).map_err(VmError::Signal)?;

        let Vm {
            vcpus,
            stats,
            _serial_irq,
            _gic,
            _fd,
            _kvm,
        } = self;

        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(PauseGate::new(vcpus.len()));
        let warnings = Arc::new(AtomicU32::new(0));
        let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(vcpus.len());
        for (index, fd) in (0u8..).zip(vcpus) {
            let runner = Runner::new(
                index,
                fd,
                bus.clone(),
                stop.clone(),
                gate.clone(),
                warnings.clone(),
            );
            let tx = events.clone();
            let spawned = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let end = runner.run();
                    // The receiver only goes away when the VMM is exiting.
                    let _ = tx.send(VmEvent::Vcpu { index, end });
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(source) => {
                    if !stop_threads(&stop, &threads) {
                        // Threads that are still running keep their VcpuFd and thus
                        // the VM alive; exit rather than unmap memory under them.
                        eprintln!("apf-vmm: error: starting vCPU thread {index}: {source}");
                        std::process::exit(1);
                    }
                    return Err(VmError::Spawn { index, source });
                }
            }
        }

        let evictor = match evict {
            Some(setup) => {
                let pauser = VcpuPauser {
                    gate: gate.clone(),
                    threads: threads.iter().map(|t| t.as_pthread_t()).collect(),
                };
                let fatal_tx = events.clone();
                let spawned = evict::spawn(
                    setup.interval,
                    setup.store,
                    pauser,
                    setup.channel,
                    setup.on_done,
                    move |e| {
                        let _ = fatal_tx.send(VmEvent::Fatal(e.to_string()));
                    },
                );
                match spawned {
                    Ok(ev) => Some(ev),
                    Err(e) => {
                        if !stop_threads(&stop, &threads) {
                            eprintln!("apf-vmm: error: {e}");
                            std::process::exit(1);
                        }
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        drop(events);

        let end = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(VmEvent::Vcpu { index, end }) => match end {
                    VcpuEnd::Shutdown => break RunEnd::Shutdown,
                    VcpuEnd::Reset => break RunEnd::Reset,
                    VcpuEnd::Crash => break RunEnd::Crash(index),
                    VcpuEnd::Failed(why) => break RunEnd::VcpuFailed(index, why),
                    // Nobody asked it to stop yet; cannot happen, but harmless.
                    VcpuEnd::Stopped => continue,
                },
                Ok(VmEvent::Fatal(why)) => break RunEnd::Fatal(why),
                Err(RecvTimeoutError::Timeout) => {
                    if TERMINATE.load(Ordering::Relaxed) {
                        break RunEnd::Terminated;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break RunEnd::Fatal("all vCPU threads vanished".into());
                }
            }
        };

        // Before the vCPU threads go: the evictor signals them by thread id.
        let evict = evictor.map(|ev| ev.stop());
        let all_stopped = stop_threads(&stop, &threads);
        for (index, t) in threads.into_iter().enumerate() {
            if t.is_finished() && t.join().is_err() {
                eprintln!("apf-vmm: vcpu{index} thread panicked");
            }
        }
        // Other vCPUs may have failed at the same time; report them too.
        for event in rx.try_iter() {
            if let VmEvent::Vcpu {
                index,
                end: VcpuEnd::Failed(why),
            } = event
            {
                eprintln!("apf-vmm: vcpu{index}: {why}");
            }
        }

        let stats = stats
            .into_iter()
            .map(|f| f.and_then(|f| stats::read_stats(&f)))
            .collect();
        Ok(RunReport {
            end,
            stats,
            all_stopped,
            evict,
        })
    }
}

/// Sets `stop` and signals every thread until all have left KVM_RUN.
/// Returns false if some thread did not finish in time.
fn stop_threads(stop: &AtomicBool, threads: &[JoinHandle<()>]) -> bool {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut all = true;
    for (index, t) in threads.iter().enumerate() {
        while !t.is_finished() {
            if Instant::now() > deadline {
                eprintln!("apf-vmm: warning: vcpu{index} did not stop");
                all = false;
                break;
            }
            // A thread that is not in KVM_RUN yet sees `stop` before
            // entering it; one inside is interrupted. Repeat to close the
            // window between the check and the ioctl.
            if let Err(e) = t.kill(kick_signal()) {
                eprintln!("apf-vmm: warning: signalling vcpu{index}: {e}");
                all = false;
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
    all
}

fn configure_apf(cfg: &VmConfig<'_>, vcpus: &[VcpuFd]) -> Result<(), VmError> {
    let Some(boot) = vcpus.first() else {
        return Ok(());
    };
    match cfg.apf {
        ApfMode::Hidden => match apf::hide(boot)? {
            HostApf::Absent => info(
                cfg.quiet,
                "host has no KVM_REG_ARM_VENDOR_HYP_BMAP_2: APF is not offered anyway",
            ),
            HostApf::Bmap(old) => info(
                cfg.quiet,
                &format!(
                    "APF hidden from the guest (KVM_REG_ARM_VENDOR_HYP_BMAP_2 {old:#x} -> {:#x})",
                    apf::hidden(old)
                ),
            ),
        },
        ApfMode::On => match apf::offer(boot) {
            Ok(HostApf::Bmap(old)) => info(
                cfg.quiet,
                &format!(
                    "APF offered to the guest (KVM_REG_ARM_VENDOR_HYP_BMAP_2 {old:#x} -> {:#x})",
                    apf::with_apf(old)
                ),
            ),
            Ok(HostApf::Absent) => eprintln!(
                "apf-vmm: warning: host kernel has no APF (no KVM_REG_ARM_VENDOR_HYP_BMAP_2)"
            ),
            Err(ApfError::Refused(e)) => {
                eprintln!("apf-vmm: warning: host does not offer APF ({e})")
            }
            Err(e) => return Err(e.into()),
        },
    }

    if let Some(intid) = cfg.apf_irq {
        for (index, fd) in (0u8..).zip(vcpus) {
            if !apf::set_irq(fd, index, intid)? {
                eprintln!(
                    "apf-vmm: warning: host kernel has no KVM_ARM_VCPU_ASYNC_PF_CTRL (ENXIO); --apf-irq ignored"
                );
                break;
            }
        }
    }
    Ok(())
}
