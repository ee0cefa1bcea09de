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
use crate::control::{Pending, StopAt, MAX_PARK_TRIES};
use crate::evict::{self, EvictChannel, EvictError, EvictStats, VcpuPause};
use crate::gic::{self, GicError};
use crate::layout::{Layout, SERIAL_SPI};
use crate::memory::{self, GuestMem, MemoryError};
use crate::pagestore::PageStore;
use crate::pause::{PauseError, PauseGate};
use crate::snapshot::{GicReg, VcpuState, VmState, APF_BLOCK_ENABLED};
use crate::stats::{self, Stat, StatsError};
use crate::uffd::FetchHold;
use crate::vcpu::{self, Runner, Shared, VcpuEnd, VcpuError};

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
    /// A vCPU fd could not be duplicated.
    #[error("duplicating a vCPU fd: {0}")]
    DupFd(std::io::Error),
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
}

/// What a restored VM needs besides guest memory and its state.
pub struct RestoreConfig {
    /// Memory layout: only RAM is used.
    pub ram: crate::layout::Region,
    /// APF offered (as saved) or hidden (the caller has made sure no vCPU
    /// has a block registered, or was told to go ahead anyway).
    pub apf: ApfMode,
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
    /// A request from the control socket.
    Control(Pending),
}

/// How the run ended.
#[derive(Debug)]
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
    /// Stopped for a snapshot or a migration, the KVM state captured.
    Captured(Box<Capture>),
}

/// What a stopped VM's KVM objects held, taken for a snapshot or a
/// migration; the caller adds the devices and memory.
pub struct Capture {
    /// The request that stopped the VM; its answer is still owed.
    pub pending: Pending,
    /// The vCPUs.
    pub vcpus: Vec<VcpuState>,
    /// The vGIC.
    pub gic: Vec<GicReg>,
    /// Faults in flight on the host when the vCPUs stopped (see
    /// [`in_flight`]).
    pub in_flight: u64,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Capture({:?}, in_flight {})",
            self.pending.request, self.in_flight
        )
    }
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
    /// Duplicates of the vCPU fds, to read their APF block while their
    /// threads hold the originals.
    attr_fds: Vec<std::os::fd::OwnedFd>,
    /// Guest RAM, to read the control blocks.
    mem: GuestMem,
    stats: Vec<Result<File, StatsError>>,
    _serial_irq: EventFd,
    _gic: DeviceFd,
    _fd: VmFd,
    _kvm: Kvm,
}

/// The KVM objects every VM starts with: /dev/kvm, the VM with its RAM
/// slot, and `vcpus` initialised vCPUs.
fn kvm_vm(
    ram: crate::layout::Region,
    mem: &GuestMem,
    vcpus: u8,
) -> Result<(Kvm, VmFd, Vec<VcpuFd>), VmError> {
    let kvm = Kvm::new().map_err(VmError::Kvm)?;
    let vm = kvm.create_vm().map_err(VmError::CreateVm)?;
    let host = memory::host_address(mem, ram.base)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: ram.base,
        memory_size: ram.size,
        userspace_addr: host as u64,
    };
    // SAFETY: the range is the guest RAM mapping owned by `mem`, which
    // the caller keeps alive until after this VM is dropped (`Vm::run`
    // consumes the VM; main drops guest memory only after that).
    unsafe { vm.set_user_memory_region(region) }.map_err(VmError::MemorySlot)?;
    let mut fds = Vec::with_capacity(usize::from(vcpus));
    for index in 0..vcpus {
        fds.push(vcpu::create(&vm, index)?);
    }
    Ok((kvm, vm, fds))
}

impl Vm {
    /// Creates a VM from a snapshot's state around `mem`, which holds (or
    /// will serve on demand) the saved RAM, in the order KVM requires:
    /// vCPUs and KVM_ARM_VCPU_INIT, the vGIC, the registers (firmware
    /// ones first), the vGIC state, then the APF IRQ and BLOCK, which
    /// queues the wake-all for the tasks parked at save time.
    pub fn restore(
        cfg: &RestoreConfig,
        state: &VmState,
        mem: &GuestMem,
        serial_irq: EventFd,
    ) -> Result<Vm, VmError> {
        let n = u8::try_from(state.vcpus.len()).unwrap_or(u8::MAX);
        let (kvm, vm, vcpus) = kvm_vm(cfg.ram, mem, n)?;
        let gic = gic::create(&vm)?;
        let hide = cfg.apf == ApfMode::Hidden;
        for ((index, fd), saved) in (0u8..).zip(&vcpus).zip(&state.vcpus) {
            let regs: Vec<crate::snapshot::Reg> = saved
                .regs
                .iter()
                .map(|r| match r.id {
                    crate::regs::KVM_REG_ARM_VENDOR_HYP_BMAP_2 if hide => {
                        let v = u64::from_le_bytes(r.value.as_slice().try_into().unwrap_or([0; 8]));
                        crate::snapshot::Reg {
                            id: r.id,
                            value: apf::hidden(v).to_le_bytes().to_vec(),
                        }
                    }
                    _ => r.clone(),
                })
                .collect();
            vcpu::restore(fd, index, &regs, saved.mp_state)?;
        }
        gic::restore(&gic, &state.gic)?;
        let mut blocks = 0;
        for ((index, fd), saved) in (0u8..).zip(&vcpus).zip(&state.vcpus) {
            let Some(a) = saved.apf else { continue };
            if !apf::set_irq(fd, index, a.irq)? {
                continue;
            }
            if a.block & APF_BLOCK_ENABLED != 0 && !hide {
                apf::restore_block(fd, index, a.block)?;
                blocks += 1;
            }
        }
        log::info!(
            "restored {} vCPUs, {} vGIC registers; APF blocks re-registered on {blocks} vCPUs{}",
            vcpus.len(),
            state.gic.len(),
            if hide { " (APF hidden)" } else { "" }
        );
        Vm::assemble(kvm, vm, vcpus, gic, serial_irq, mem)
    }

    /// The last steps of both ways to make a VM: the UART's irqfd, the
    /// vCPUs' statistics.
    fn assemble(
        kvm: Kvm,
        vm: VmFd,
        vcpus: Vec<VcpuFd>,
        gic: DeviceFd,
        serial_irq: EventFd,
        mem: &GuestMem,
    ) -> Result<Vm, VmError> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        vm.register_irqfd(&serial_irq, SERIAL_SPI)
            .map_err(VmError::Irqfd)?;
        let stats = vcpus.iter().map(stats::open_stats_fd).collect();
        let attr_fds = vcpus
            .iter()
            .map(|v| {
                // SAFETY: a VcpuFd is an open file descriptor for as long
                // as `v` lives, which covers this call.
                let fd = unsafe { BorrowedFd::borrow_raw(v.as_raw_fd()) };
                fd.try_clone_to_owned()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(VmError::DupFd)?;
        Ok(Vm {
            vcpus,
            attr_fds,
            mem: mem.clone(),
            stats,
            _serial_irq: serial_irq,
            _gic: gic,
            _fd: vm,
            _kvm: kvm,
        })
    }

    /// Creates the VM around `mem`, which must outlive it, loads nothing
    /// (the caller has filled guest memory), and configures everything up
    /// to the first KVM_RUN. `serial_irq` is registered as the UART's irqfd.
    pub fn create(cfg: &VmConfig<'_>, mem: &GuestMem, serial_irq: EventFd) -> Result<Vm, VmError> {
        let (kvm, vm, vcpus) = kvm_vm(cfg.layout.ram, mem, cfg.vcpus)?;
        let gic = gic::create(&vm)?;
        let Some(boot) = vcpus.first() else {
            return Err(VmError::Vcpu(VcpuError::Create {
                index: 0,
                source: kvm_ioctls::Error::new(libc::EINVAL),
            }));
        };
        vcpu::set_boot_regs(boot, cfg.layout.kernel.base, cfg.layout.dtb.base)?;

        configure_apf(cfg, &vcpus)?;
        Vm::assemble(kvm, vm, vcpus, gic, serial_irq, mem)
    }

    /// Runs the VM until the guest powers off, resets or fails, or the VMM
    /// is told to stop, then stops every vCPU and reads their statistics.
    /// With `evict`, the userfaultfd evictor runs meanwhile; `hold` is the
    /// userfaultfd handler's, for stopping mid-storm.
    pub fn run(
        self,
        bus: Arc<MmioBus<Console>>,
        events: Sender<VmEvent>,
        rx: Receiver<VmEvent>,
        evict: Option<EvictSetup>,
        hold: Option<FetchHold>,
    ) -> Result<RunReport, VmError> {
        register_signal_handler(kick_signal(), on_kick).map_err(VmError::Signal)?;
        register_signal_handler(libc::SIGINT, on_terminate).map_err(VmError::Signal)?;
        register_signal_handler(libc::SIGTERM, on_terminate).map_err(VmError::Signal)?;

        let Vm {
            vcpus,
            attr_fds,
            mem,
            stats,
            _serial_irq,
            _gic: gic,
            _fd,
            _kvm,
        } = self;
        let mpidrs = (0u8..)
            .zip(&vcpus)
            .map(|(index, fd)| vcpu::mpidr(fd, index))
            .collect::<Result<Vec<u64>, VcpuError>>()?;

        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(PauseGate::new(vcpus.len()));
        let warnings = Arc::new(AtomicU32::new(0));
        let shared = Shared {
            bus: bus.clone(),
            stop: stop.clone(),
            gate: gate.clone(),
            mmio_warnings: warnings.clone(),
        };
        let mut threads: Vec<JoinHandle<VcpuFd>> = Vec::with_capacity(vcpus.len());
        for (index, fd) in (0u8..).zip(vcpus) {
            let runner = Runner::new(index, fd, shared.clone());
            let tx = events.clone();
            let spawned = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let (end, fd) = runner.run();
                    // The receiver only goes away when the VMM is exiting.
                    let _ = tx.send(VmEvent::Vcpu { index, end });
                    fd
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(source) => {
                    if !stop_threads(&stop, &threads) {
                        // Threads that are still running keep their VcpuFd and thus
                        // the VM alive; exit rather than unmap memory under them.
                        log::error!("starting vCPU thread {index}: {source}");
                        std::process::exit(1);
                    }
                    return Err(VmError::Spawn { index, source });
                }
            }
        }

        let mut evictor = match evict {
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
                            log::error!("{e}");
                            std::process::exit(1);
                        }
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        drop(events);

        let mut evicted = None;
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
                Ok(VmEvent::Control(pending)) => {
                    // The evictor pauses the vCPUs through the same gate,
                    // and a stopped VM has nothing left to evict.
                    if let Some(ev) = evictor.take() {
                        evicted = Some(ev.stop());
                    }
                    let stopper = Stopper {
                        pauser: VcpuPauser {
                            gate: gate.clone(),
                            threads: threads.iter().map(|t| t.as_pthread_t()).collect(),
                        },
                        stats: &stats,
                        fds: &attr_fds,
                        mem: &mem,
                        gic: &gic,
                        mpidrs: &mpidrs,
                        hold: hold.as_ref(),
                    };
                    match stopper.stop(pending.request.stop_at()) {
                        Ok(in_flight) => {
                            // The vCPUs are parked; `stop` below ends them
                            // where they are.
                            stop.store(true, Ordering::Release);
                            break RunEnd::Captured(Box::new(Capture {
                                pending,
                                vcpus: Vec::new(),
                                gic: Vec::new(),
                                in_flight,
                            }));
                        }
                        Err(why) => {
                            pending.answer(Err(why));
                        }
                    }
                }
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
        let evict = evicted.or_else(|| evictor.map(|ev| ev.stop()));
        let all_stopped = stop_threads(&stop, &threads);
        gate.resume();
        let mut fds = Vec::with_capacity(threads.len());
        for (index, t) in threads.into_iter().enumerate() {
            if t.is_finished() {
                match t.join() {
                    Ok(fd) => fds.push(fd),
                    Err(_) => log::error!("vcpu{index} thread panicked"),
                }
            }
        }
        let end = match end {
            RunEnd::Captured(mut c) if fds.len() == stats.len() => match capture(&fds, &gic) {
                Ok((vcpus, gic)) => {
                    c.vcpus = vcpus;
                    c.gic = gic;
                    RunEnd::Captured(c)
                }
                Err(why) => {
                    c.pending.answer(Err(why.clone()));
                    RunEnd::Fatal(why)
                }
            },
            RunEnd::Captured(c) => {
                let why = "a vCPU thread did not stop; nothing saved".to_string();
                c.pending.answer(Err(why.clone()));
                RunEnd::Fatal(why)
            }
            other => other,
        };
        // Other vCPUs may have failed at the same time; report them too.
        for event in rx.try_iter() {
            if let VmEvent::Vcpu {
                index,
                end: VcpuEnd::Failed(why),
            } = event
            {
                log::error!("vcpu{index}: {why}");
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

/// Faults in flight on the host, from the vCPUs' statistics: PAGE_NOT_PRESENT
/// events whose PAGE_READY has not been delivered. `apf_ready` also counts
/// the one wake-all each vCPU gets when its block is registered (the
/// guest's ENABLE, or a restore), which is added back for every vCPU that
/// has had any event.
pub fn in_flight(stats: &[Result<File, StatsError>]) -> u64 {
    stats
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .filter_map(|f| stats::read_stats(f).ok())
        .map(|s| {
            let get = |n: &str| s.iter().find(|x| x.name == n).map_or(0, |x| x.value);
            let (np, rd) = (get("apf_not_present"), get("apf_ready"));
            if np == 0 && rd == 0 {
                0
            } else {
                (np + 1).saturating_sub(rd)
            }
        })
        .sum()
}

/// How long a stop request waits for the moment it asks for, when the
/// VMM holds the fetches (see [`Stopper::stop`]).
const STOP_WAIT: Duration = Duration::from_secs(30);

/// What it takes to stop the vCPUs at a chosen moment.
struct Stopper<'a> {
    pauser: VcpuPauser,
    stats: &'a [Result<File, StatsError>],
    /// Duplicates of the vCPU fds, to find their control blocks.
    fds: &'a [std::os::fd::OwnedFd],
    mem: &'a GuestMem,
    gic: &'a DeviceFd,
    mpidrs: &'a [u64],
    /// The userfaultfd handler's hold, if RAM is behind one.
    hold: Option<&'a FetchHold>,
}

impl Stopper<'_> {
    /// The guest addresses of the vCPUs' control blocks. Only while the
    /// vCPUs are out of KVM_RUN: a vCPU ioctl waits for KVM_RUN to return.
    fn blocks(&self) -> Vec<u64> {
        (0u8..)
            .zip(self.fds)
            .filter_map(|(i, fd)| apf::block_ipa(fd, i))
            .collect()
    }

    /// Of `blocks`, those holding a PAGE_READY the guest has not ACKed
    /// (`reason` = 2); racy while the vCPUs run, exact while they are out
    /// of KVM_RUN.
    fn unacked(&self, blocks: &[u64]) -> usize {
        use vm_memory::Bytes;
        blocks
            .iter()
            .filter_map(|&ipa| self.mem.read_obj::<u32>(vm_memory::GuestAddress(ipa)).ok())
            .filter(|reason| u32::from_le(*reason) == 2)
            .count()
    }

    fn pause(&self) -> Result<(), String> {
        self.pauser.pause().map_err(|e| e.to_string())
    }

    /// Polls `cond` every millisecond until it holds (true) or `deadline`
    /// passes (false).
    fn wait_for(&self, deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
        while !cond() {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Pauses the vCPUs outside KVM_RUN at a moment `at` asks for (tasks
    /// parked, an un-ACKed PAGE_READY) and returns, with the vCPUs paused,
    /// the faults in flight on the host. On error the vCPUs run on.
    ///
    /// With RAM behind userfaultfd the moment is made rather than waited
    /// for. The handler holds KVM's asynchronous fetches, so the faults in
    /// flight only grow until there are enough, and stay so while the
    /// vCPUs stop. For `unacked`, one held fetch is let go while the vCPUs
    /// run with every interrupt masked at their vGIC CPU interface: KVM
    /// writes its PAGE_READY into the control block and raises the line,
    /// but the guest cannot take it yet, so the block still holds it when
    /// the vCPUs stop; their masks are then put back, and the saved state
    /// is the guest's own. A task whose PAGE_READY the guest has not
    /// consumed is still parked, so it counts towards `min_parked`. A
    /// fetch may still end under the hold, when a synchronous fault brings
    /// in the same page; then the vCPUs run on and it tries again, for at
    /// most [`STOP_WAIT`]. Held fetches are served on return.
    fn stop(&self, at: StopAt) -> Result<u64, String> {
        let Some(hold) = self.hold else {
            return self.stop_by_chance(at);
        };
        let _held = hold.hold();
        let deadline = Instant::now() + STOP_WAIT;
        let want = u64::from(at.min_parked.max(u32::from(at.unacked)));
        let (mut in_flight_now, mut unacked_now) = (0, 0);
        while Instant::now() <= deadline {
            if !self.wait_for(deadline, || in_flight(self.stats) >= want) {
                break;
            }
            self.pause()?;
            let blocks = self.blocks();
            if at.unacked {
                let masks = match gic::mask_cpus(self.gic, self.mpidrs) {
                    Ok(m) => m,
                    Err(e) => {
                        self.pauser.resume();
                        return Err(e.to_string());
                    }
                };
                hold.release_one();
                self.pauser.resume();
                self.wait_for(deadline, || self.unacked(&blocks) > 0);
                // The masks can only be put back with every vCPU out of
                // KVM_RUN; a vCPU in a synchronous fault is being served.
                while let Err(e) = self.pause() {
                    log::warn!("pausing to unmask interrupts: {e}; retrying");
                }
                if let Err(e) = gic::restore(self.gic, &masks) {
                    self.pauser.resume();
                    return Err(format!("putting interrupt masks back: {e}"));
                }
            }
            in_flight_now = in_flight(self.stats);
            unacked_now = self.unacked(&blocks) as u64;
            if in_flight_now + unacked_now >= u64::from(at.min_parked)
                && (!at.unacked || unacked_now > 0)
            {
                return Ok(in_flight_now);
            }
            self.pauser.resume();
        }
        Err(format!(
            "no stop with {} tasks parked{} within {STOP_WAIT:?} (last: {in_flight_now} faults \
             in flight, {unacked_now} un-ACKed PAGE_READY, {} fetches held); the VM runs on",
            at.min_parked,
            if at.unacked {
                " and an un-ACKed PAGE_READY"
            } else {
                ""
            },
            hold.waiting()
        ))
    }

    /// [`Stopper::stop`] without a hold: pauses the vCPUs every 2 ms, at
    /// most [`MAX_PARK_TRIES`] times, until the moment happens by itself.
    fn stop_by_chance(&self, at: StopAt) -> Result<u64, String> {
        for _ in 0..MAX_PARK_TRIES {
            self.pause()?;
            let n = in_flight(self.stats);
            if n >= u64::from(at.min_parked) && (!at.unacked || self.unacked(&self.blocks()) > 0) {
                return Ok(n);
            }
            self.pauser.resume();
            thread::sleep(Duration::from_millis(2));
        }
        Err(format!(
            "no moment with {} asynchronous page faults in flight{} at {MAX_PARK_TRIES} pauses; \
             the VM runs on",
            at.min_parked,
            if at.unacked {
                " and an un-ACKed PAGE_READY"
            } else {
                ""
            }
        ))
    }
}

/// Reads every vCPU's registers and APF attributes, and the vGIC.
fn capture(vcpus: &[VcpuFd], gic: &DeviceFd) -> Result<(Vec<VcpuState>, Vec<GicReg>), String> {
    let mut out = Vec::with_capacity(vcpus.len());
    for (index, fd) in (0u8..).zip(vcpus) {
        let r = vcpu::save(fd, index).map_err(|e| e.to_string())?;
        let a = apf::save(fd, index).map_err(|e| e.to_string())?;
        out.push(VcpuState {
            mpidr: r.mpidr,
            mp_state: r.mp_state,
            regs: r.regs,
            apf: a,
        });
    }
    let mpidrs: Vec<u64> = out.iter().map(|v| v.mpidr).collect();
    let gic = gic::save(gic, &mpidrs).map_err(|e| e.to_string())?;
    Ok((out, gic))
}

/// Sets `stop` and signals every thread until all have left KVM_RUN.
/// Returns false if some thread did not finish in time.
fn stop_threads<T>(stop: &AtomicBool, threads: &[JoinHandle<T>]) -> bool {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut all = true;
    for (index, t) in threads.iter().enumerate() {
        while !t.is_finished() {
            if Instant::now() > deadline {
                log::warn!("vcpu{index} did not stop");
                all = false;
                break;
            }
            // A thread that is not in KVM_RUN yet sees `stop` before
            // entering it; one inside is interrupted. Repeat to close the
            // window between the check and the ioctl.
            if let Err(e) = t.kill(kick_signal()) {
                log::warn!("signalling vcpu{index}: {e}");
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
            HostApf::Absent => {
                log::info!("host has no KVM_REG_ARM_VENDOR_HYP_BMAP_2: APF is not offered anyway")
            }
            HostApf::Bmap(old) => log::info!(
                "APF hidden from the guest (KVM_REG_ARM_VENDOR_HYP_BMAP_2 {old:#x} -> {:#x})",
                apf::hidden(old)
            ),
        },
        ApfMode::On => match apf::offer(boot) {
            Ok(HostApf::Bmap(old)) => log::info!(
                "APF offered to the guest (KVM_REG_ARM_VENDOR_HYP_BMAP_2 {old:#x} -> {:#x})",
                apf::with_apf(old)
            ),
            Ok(HostApf::Absent) => {
                log::warn!("host kernel has no APF (no KVM_REG_ARM_VENDOR_HYP_BMAP_2)")
            }
            Err(ApfError::Refused(e)) => log::warn!("host does not offer APF ({e})"),
            Err(e) => return Err(e.into()),
        },
    }

    if let Some(intid) = cfg.apf_irq {
        for (index, fd) in (0u8..).zip(vcpus) {
            if !apf::set_irq(fd, index, intid)? {
                log::warn!(
                    "host kernel has no KVM_ARM_VCPU_ASYNC_PF_CTRL (ENXIO); --apf-irq ignored"
                );
                break;
            }
        }
    }
    Ok(())
}
