// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vCPU initialisation and the per-vCPU run loop.
//!
//! A vCPU thread is kicked out of KVM_RUN with a signal whose handler calls
//! `kick_current_thread`, which sets `kvm_run.immediate_exit`: a signal that
//! lands between the loop's checks and the KVM_RUN ioctl still makes that
//! KVM_RUN return at once with EINTR.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_mp_state, kvm_run, kvm_vcpu_init, RegList, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{reg_size, VcpuExit, VcpuFd, VmFd};
use thiserror::Error;

use crate::bus::MmioBus;
use crate::pause::PauseGate;
use crate::regs;
use crate::snapshot::Reg;

thread_local! {
    /// The `kvm_run` page of the vCPU this thread runs, while it runs one.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Makes the current (or next) KVM_RUN of the vCPU on this thread return
/// with EINTR. Async-signal-safe: it only touches a constant-initialised
/// thread-local and the `kvm_run` page; called from the kick signal handler.
pub fn kick_current_thread() {
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: a non-null pointer is the live `kvm_run` mapping of
            // the vCPU this thread is running (`RunGuard` clears it before
            // the vCPU fd is dropped); only this thread uses it, and a
            // volatile byte store cannot tear.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// While a vCPU thread runs its loop: publishes its `kvm_run` for
/// `kick_current_thread`; on drop withdraws it and leaves the pause gate.
struct RunGuard<'a> {
    gate: &'a PauseGate,
}

impl<'a> RunGuard<'a> {
    fn new(gate: &'a PauseGate, run: *mut kvm_run) -> Self {
        KVM_RUN.with(|p| p.set(run));
        RunGuard { gate }
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        self.gate.leave();
    }
}

/// Unhandled MMIO accesses reported before going quiet.
const MAX_MMIO_WARNINGS: u32 = 10;

/// vCPU setup errors.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("creating vCPU {index}: {source}")]
    Create {
        /// vCPU index.
        index: u8,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_ARM_PREFERRED_TARGET failed.
    #[error("KVM_ARM_PREFERRED_TARGET: {0}")]
    PreferredTarget(kvm_ioctls::Error),
    /// KVM_ARM_VCPU_INIT failed.
    #[error("KVM_ARM_VCPU_INIT of vCPU {index}: {source}")]
    Init {
        /// vCPU index.
        index: u8,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Reading a vCPU's state failed.
    #[error("vCPU {index}: {what}: {source}")]
    Save {
        /// vCPU index.
        index: u8,
        /// The call.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_ONE_REG failed.
    #[error("vCPU {index}: reading register {id:#x}: {source}")]
    SaveReg {
        /// vCPU index.
        index: u8,
        /// Register id.
        id: u64,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_ONE_REG of a saved register failed.
    #[error("vCPU {index}: restoring register {id:#x}: {source}")]
    RestoreReg {
        /// vCPU index.
        index: u8,
        /// Register id.
        id: u64,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_ONE_REG of a core register failed.
    #[error("setting register {name} of the boot vCPU: {source}")]
    SetReg {
        /// Register name.
        name: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
}

/// The registers of a stopped vCPU, as a snapshot keeps them.
pub struct SavedRegs {
    /// `MPIDR_EL1`.
    pub mpidr: u64,
    /// `KVM_GET_MP_STATE`.
    pub mp_state: u32,
    /// Every register `KVM_GET_REG_LIST` names.
    pub regs: Vec<Reg>,
}

/// The vCPU's `MPIDR_EL1`, which names it to the vGIC.
pub fn mpidr(vcpu: &VcpuFd, index: u8) -> Result<u64, VcpuError> {
    let mut buf = [0u8; 8];
    vcpu.get_one_reg(regs::MPIDR_EL1, &mut buf)
        .map_err(|source| VcpuError::SaveReg {
            index,
            id: regs::MPIDR_EL1,
            source,
        })?;
    Ok(u64::from_le_bytes(buf))
}

/// Reads every register of a vCPU that is out of KVM_RUN.
pub fn save(vcpu: &VcpuFd, index: u8) -> Result<SavedRegs, VcpuError> {
    let fail = |what: &'static str| {
        move |source| VcpuError::Save {
            index,
            what,
            source,
        }
    };
    // KVM/arm64 lists a few hundred; the wrapper holds at most 500.
    let mut list = RegList::new(500).map_err(|_| VcpuError::Save {
        index,
        what: "KVM_GET_REG_LIST",
        source: kvm_ioctls::Error::new(libc::ENOMEM),
    })?;
    vcpu.get_reg_list(&mut list)
        .map_err(fail("KVM_GET_REG_LIST"))?;
    let mut regs = Vec::with_capacity(list.as_slice().len());
    let mut mpidr = None;
    for &id in list.as_slice() {
        let mut value = vec![0u8; reg_size(id)];
        vcpu.get_one_reg(id, &mut value)
            .map_err(|source| VcpuError::SaveReg { index, id, source })?;
        if id == regs::MPIDR_EL1 {
            mpidr = value.as_slice().try_into().ok().map(u64::from_le_bytes);
        }
        regs.push(Reg { id, value });
    }
    let mpidr = match mpidr {
        Some(m) => m,
        None => self::mpidr(vcpu, index)?,
    };
    let mp_state = vcpu
        .get_mp_state()
        .map_err(fail("KVM_GET_MP_STATE"))?
        .mp_state;
    Ok(SavedRegs {
        mpidr,
        mp_state,
        regs,
    })
}

/// Writes saved registers into a vCPU made by [`create`] that has not run:
/// the firmware pseudo-registers first (they are the VM's and only
/// writable before its first run), then the rest in the saved order, then
/// the PSCI power state.
pub fn restore(vcpu: &VcpuFd, index: u8, regs: &[Reg], mp_state: u32) -> Result<(), VcpuError> {
    let (fw, rest): (Vec<&Reg>, Vec<&Reg>) = regs.iter().partition(|r| regs::is_firmware_reg(r.id));
    for r in fw.into_iter().chain(rest) {
        vcpu.set_one_reg(r.id, &r.value)
            .map_err(|source| VcpuError::RestoreReg {
                index,
                id: r.id,
                source,
            })?;
    }
    vcpu.set_mp_state(kvm_mp_state { mp_state })
        .map_err(|source| VcpuError::Save {
            index,
            what: "KVM_SET_MP_STATE",
            source,
        })
}

/// Creates vCPU `index` and runs KVM_ARM_VCPU_INIT with the host's
/// preferred target and PSCI 0.2+; every vCPU but the first starts powered
/// off and waits for PSCI CPU_ON.
pub fn create(vm: &VmFd, index: u8) -> Result<VcpuFd, VcpuError> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(|source| VcpuError::Create { index, source })?;
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(VcpuError::PreferredTarget)?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if index > 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&kvi)
        .map_err(|source| VcpuError::Init { index, source })?;
    Ok(vcpu)
}

/// Sets the boot vCPU's entry state per the arm64 boot protocol: PC at the
/// kernel, x0 = DTB address, EL1h with DAIF masked (x1..x3 are zero after
/// KVM_ARM_VCPU_INIT).
pub fn set_boot_regs(vcpu: &VcpuFd, pc: u64, dtb: u64) -> Result<(), VcpuError> {
    for (name, id, value) in [
        ("pstate", regs::PSTATE, regs::PSTATE_EL1H_DAIF_MASKED),
        ("pc", regs::PC, pc),
        ("x0", regs::X0, dtb),
    ] {
        vcpu.set_one_reg(id, &value.to_le_bytes())
            .map_err(|source| VcpuError::SetReg { name, source })?;
    }
    Ok(())
}

/// Why a vCPU thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// PSCI SYSTEM_OFF.
    Shutdown,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// PSCI SYSTEM_CRASH or a crash event.
    Crash,
    /// Asked to stop by the VMM.
    Stopped,
    /// KVM_RUN failed or returned an exit this VMM cannot handle.
    Failed(String),
}

/// What the vCPUs of one VM share.
pub struct Shared<W: Write> {
    /// The devices.
    pub bus: Arc<MmioBus<W>>,
    /// Set to end every vCPU's loop.
    pub stop: Arc<AtomicBool>,
    /// Pauses the vCPUs; it must count every runner among its active
    /// threads.
    pub gate: Arc<PauseGate>,
    /// How many unhandled MMIO accesses were reported.
    pub mmio_warnings: Arc<AtomicU32>,
}

impl<W: Write> Clone for Shared<W> {
    fn clone(&self) -> Self {
        Shared {
            bus: self.bus.clone(),
            stop: self.stop.clone(),
            gate: self.gate.clone(),
            mmio_warnings: self.mmio_warnings.clone(),
        }
    }
}

/// Runs one vCPU until it ends.
pub struct Runner<W: Write> {
    index: u8,
    fd: VcpuFd,
    shared: Shared<W>,
}

impl<W: Write> Runner<W> {
    /// Prepares the loop; `shared.stop` and `shared.gate` are checked
    /// before every KVM_RUN.
    pub fn new(index: u8, fd: VcpuFd, shared: Shared<W>) -> Self {
        Runner { index, fd, shared }
    }

    fn warn_unhandled(&self, kind: &str, addr: u64, len: usize) {
        let n = self.shared.mmio_warnings.fetch_add(1, Ordering::Relaxed);
        if n < MAX_MMIO_WARNINGS {
            log::warn!(
                "vcpu{}: unhandled MMIO {kind} of {len} bytes at {addr:#x}{}",
                self.index,
                if n + 1 == MAX_MMIO_WARNINGS {
                    " (further ones not reported)"
                } else {
                    ""
                }
            );
        }
    }

    /// The run loop. Gives the vCPU back when it ends, so that a stopped
    /// VM can still be saved.
    pub fn run(mut self) -> (VcpuEnd, VcpuFd) {
        let end = {
            let run: *mut kvm_run = self.fd.get_kvm_run();
            let gate = self.shared.gate.clone();
            // Dropped before the vCPU fd leaves, and so before its mapping
            // can go.
            let _guard = RunGuard::new(&gate, run);
            self.run_loop(run)
        };
        (end, self.fd)
    }

    fn run_loop(&mut self, run: *mut kvm_run) -> VcpuEnd {
        let gate = self.shared.gate.clone();
        let mut serial_error_reported = false;
        loop {
            // Cleared before the checks: a kick after this point either
            // finds its request in them or makes the KVM_RUN below return.
            // SAFETY: `run` is this vCPU's live `kvm_run` mapping (owned by
            // `self.fd`); volatile because the signal handler writes it.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
            if self.shared.stop.load(Ordering::Acquire) {
                return VcpuEnd::Stopped;
            }
            if gate.requested() {
                gate.park(&self.shared.stop);
                continue;
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked by the VMM (or any other signal): re-check
                    // `stop` and the pause gate.
                    continue;
                }
                Err(e) => return VcpuEnd::Failed(format!("KVM_RUN: {e}")),
            };
            match exit {
                VcpuExit::MmioRead(addr, data) => {
                    let len = data.len();
                    if !self.shared.bus.read(addr, data) {
                        self.warn_unhandled("read", addr, len);
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    let len = data.len();
                    match self.shared.bus.write(addr, data) {
                        Ok(true) => {}
                        Ok(false) => self.warn_unhandled("write", addr, len),
                        Err(e) => {
                            if !serial_error_reported {
                                log::error!("vcpu{}: {e}", self.index);
                                serial_error_reported = true;
                            }
                        }
                    }
                }
                VcpuExit::SystemEvent(kind, _) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => return VcpuEnd::Shutdown,
                    KVM_SYSTEM_EVENT_RESET => return VcpuEnd::Reset,
                    KVM_SYSTEM_EVENT_CRASH => return VcpuEnd::Crash,
                    other => {
                        return VcpuEnd::Failed(format!("unexpected system event {other}"));
                    }
                },
                VcpuExit::Intr => {}
                other => return VcpuEnd::Failed(format!("unexpected exit {other:?}")),
            }
        }
    }
}
