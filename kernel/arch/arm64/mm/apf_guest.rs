// SPDX-License-Identifier: GPL-2.0

//! KVM/arm64 asynchronous page faults: the guest side.
//!
//! When a user task touches memory the host has to fetch first, KVM may
//! answer with PAGE_NOT_PRESENT instead of stalling the vCPU: it writes a
//! token into this CPU's control block and injects a synchronous external
//! abort at the faulting instruction. [`kvm_apf_guest_user_abort`], called
//! first by the arm64 abort handler, parks the task on the token and lets
//! the CPU run other work. When the page is in, KVM writes PAGE_READY with
//! the same token and raises a PPI; [`ReadyIrq`] wakes the task, which
//! returns to user space and repeats the access.
//!
//! Parked tasks live in one table shared by all CPUs, locked only with local
//! interrupts masked because the PPI handler uses it too. A task registers
//! in the table *before* it frees the block, and the host sends nothing into
//! a block that is not free, so a PAGE_READY can never overtake its waiter
//! on this CPU. A PAGE_READY for a token nobody waits on is kept as a "ready"
//! entry, which the task consumes when it gets to park.
//!
//! Protocol: [`Documentation/virt/kvm/arm/apf.rst`](srctree/Documentation/virt/kvm/arm/apf.rst),
//! ABI: [`arch/arm64/include/uapi/asm/kvm_para.h`](srctree/arch/arm64/include/uapi/asm/kvm_para.h).

use core::{
    ffi::{c_char, c_int},
    fmt::Write,
    ptr,
    sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering},
};
use kernel::{
    arm_smccc, bindings, c_str, cpuhp,
    irq::{self, IrqReturn, LocalIrqDisabled, PercpuHandler, PercpuIrq},
    macros::export,
    new_spinlock,
    notifier::{Chain, Notifier, NotifierHandler},
    prelude::*,
    proc_fs::{SeqFile, ShowSingle, SingleFile},
    sync::{Arc, Completion, SpinLock},
};

module! {
    type: ApfGuest,
    name: "apf_guest",
    description: "KVM/arm64 asynchronous page faults, guest side",
    license: "GPL",
}

const FUNC_ID: u64 = bindings::ARM_SMCCC_VENDOR_HYP_KVM_ASYNC_PF_FUNC_ID as u64;
const NOT_PRESENT: u32 = bindings::KVM_PV_REASON_PAGE_NOT_PRESENT;
const READY: u32 = bindings::KVM_PV_REASON_PAGE_READY;
const WAKE_ALL: u32 = bindings::KVM_ASYNC_PF_WAKE_ALL_TOKEN;
/// `ESR_ELx_FSC_EXTABT`: the only fault status KVM uses for PAGE_NOT_PRESENT.
const FSC_SEA: u64 = bindings::ESR_ELx_FSC_EXTABT as u64;
const FSC_MASK: u64 = bindings::ESR_ELx_FSC as u64;
/// Table entries per CPU beyond the host's SLOTS, for early ready marks.
const SPARE_ENTRIES: usize = 8;

/// Set by the `no-kvmapf` boot parameter.
static NO_KVMAPF: AtomicBool = AtomicBool::new(false);
/// The state, published once it is complete; never freed (built in).
static APF: AtomicPtr<Apf> = AtomicPtr::new(ptr::null_mut());

/// One CPU's control block (`struct kvm_vcpu_pv_apf_data`), which the host
/// writes while this CPU is out of the guest.
#[repr(C, align(64))]
struct Block {
    reason: AtomicU32,
    token: AtomicU32,
    _pad: [u8; 56],
}

const _: () = assert!(
    core::mem::size_of::<Block>() == core::mem::size_of::<bindings::kvm_vcpu_pv_apf_data>()
);
const _: () =
    assert!(core::mem::align_of::<Block>() == bindings::KVM_ASYNC_PF_BLOCK_ALIGN as usize);

/// A task parked on a token.
#[pin_data]
struct Sleeper {
    #[pin]
    done: Completion,
}

/// An entry of the table of tokens.
enum Entry {
    /// A task waits for `token`, which CPU `cpu` received.
    Waiter {
        token: u32,
        cpu: u32,
        sleeper: Arc<Sleeper>,
    },
    /// `token` became ready, on CPU `cpu`, before its task parked.
    Ready { token: u32, cpu: u32 },
}

impl Entry {
    fn cpu(&self) -> u32 {
        match self {
            Entry::Waiter { cpu, .. } | Entry::Ready { cpu, .. } => *cpu,
        }
    }

    /// Wakes the waiter, if any; consumes the entry. Returns whether a
    /// task was woken.
    fn wake(self) -> bool {
        match self {
            Entry::Waiter { sleeper, .. } => {
                sleeper.done.complete();
                true
            }
            Entry::Ready { .. } => false,
        }
    }
}

/// What one pass over the table found.
enum Scan {
    /// The index of the first entry that matched.
    Found(usize),
    /// No match; the index of the first free slot.
    Free(usize),
    /// No match and no free slot.
    Full,
}

/// Looks for an entry `is_match` accepts, noting the first free slot on the
/// way, so that a miss costs no second pass (interrupts are masked).
fn scan(table: &[Option<Entry>], is_match: impl Fn(&Entry) -> bool) -> Scan {
    let mut free = None;
    for (i, slot) in table.iter().enumerate() {
        match slot {
            Some(e) if is_match(e) => return Scan::Found(i),
            None if free.is_none() => free = Some(i),
            _ => {}
        }
    }
    free.map_or(Scan::Full, Scan::Free)
}

/// Events handled, shown in `/proc/kvm_apf`.
#[derive(Default)]
struct Stats {
    not_present: AtomicU64,
    ready: AtomicU64,
    wake_all: AtomicU64,
    interrupted: AtomicU64,
    early_ready: AtomicU64,
    table_full: AtomicU64,
}

#[pin_data]
struct Apf {
    /// Control blocks, indexed by CPU number.
    blocks: KVec<Block>,
    /// Tokens parked or marked ready. Only locked with local interrupts
    /// masked, as [`ReadyIrq`] locks it too. Fixed size: no allocation
    /// happens under the lock.
    #[pin]
    table: SpinLock<KVec<Option<Entry>>>,
    irq: PercpuIrq<ReadyIrq>,
    /// Whether the host has this CPU's block, indexed by CPU number.
    enabled: KVec<AtomicBool>,
    stats: Stats,
}

fn apf() -> Option<&'static Apf> {
    // SAFETY: `APF` is NULL or points to a fully initialised `Apf` that is
    // never freed; the acquire pairs with the release that published it.
    unsafe { APF.load(Ordering::Acquire).as_ref() }
}

/// Calls APF subcall `call` with arguments `a2`, `a3`; returns x0, x1.
fn apf_call(call: u32, a2: u64, a3: u64) -> (i64, u64) {
    // SAFETY: An APF subcall. The only one that hands memory to the host is
    // ENABLE, whose callers pass a block that is never freed.
    let r = unsafe { arm_smccc::hvc([FUNC_ID, call.into(), a2, a3]) };
    (r[0] as i64, r[1])
}

fn apf_query(call: u32) -> Result<u64> {
    match apf_call(call, 0, 0) {
        (0, v) => Ok(v),
        _ => Err(ENODEV),
    }
}

impl Apf {
    fn enabled_cpus(&self) -> u64 {
        let on = self.enabled.iter().filter(|e| e.load(Ordering::Relaxed));
        on.count() as u64
    }

    fn counters(&self) -> [(&'static str, u64); 7] {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("enabled_cpus", self.enabled_cpus()),
            ("not_present", get(&s.not_present)),
            ("ready", get(&s.ready)),
            ("wake_all", get(&s.wake_all)),
            ("interrupted", get(&s.interrupted)),
            ("early_ready", get(&s.early_ready)),
            ("table_full", get(&s.table_full)),
        ]
    }

    /// Consumes PAGE_NOT_PRESENT if this CPU's block holds one, and parks
    /// the current task until its token is ready. Returns whether the abort
    /// was an APF.
    fn not_present(&self) -> bool {
        // Allocated before we know, so that nothing allocates under the
        // lock; an external abort from user space is rare otherwise.
        let sleeper = Arc::pin_init(pin_init!(Sleeper { done <- Completion::new() }), GFP_KERNEL);
        let parked = {
            let irqs_off = LocalIrqDisabled::new();
            let cpu = irqs_off.cpu();
            let block = &self.blocks[cpu as usize];
            if block.reason.load(Ordering::Acquire) != NOT_PRESENT {
                return false;
            }
            let token = block.token.load(Ordering::Relaxed);
            let parked = self.park(token, cpu, sleeper.as_ref().ok());
            // Only now may the host deliver the next event into the block.
            block.reason.store(0, Ordering::Release);
            self.stats.not_present.fetch_add(1, Ordering::Relaxed);
            parked
        };
        // A signal ends the wait early: the entry stays in the table, so the
        // PAGE_READY still consumes the token, and the access is retried.
        if let (true, Ok(sleeper)) = (parked, sleeper) {
            if sleeper.done.wait_interruptible().is_err() {
                self.stats.interrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Records that `sleeper` waits for `token`, received on `cpu`. Returns
    /// `false` if the task must not sleep: the token is ready already, or
    /// there is no room (then retrying the access is still correct: the
    /// host faults the page in synchronously). Interrupts must be masked.
    fn park(&self, token: u32, cpu: u32, sleeper: Option<&Arc<Sleeper>>) -> bool {
        let mut table = self.table.lock();
        let is_mark = |e: &Entry| matches!(e, Entry::Ready { token: t, .. } if *t == token);
        match (scan(&table, is_mark), sleeper) {
            (Scan::Found(i), _) => {
                table[i] = None;
                false
            }
            (Scan::Free(i), Some(sleeper)) => {
                table[i] = Some(Entry::Waiter {
                    token,
                    cpu,
                    sleeper: sleeper.clone(),
                });
                true
            }
            _ => {
                self.stats.table_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Handles PAGE_READY for `token`, received on `cpu`; returns whether a
    /// task was woken. Interrupts must be masked (the caller holds a
    /// [`LocalIrqDisabled`] or is a handler).
    fn ready(&self, token: u32, cpu: u32) -> bool {
        self.stats.ready.fetch_add(1, Ordering::Relaxed);
        if token == WAKE_ALL {
            self.stats.wake_all.fetch_add(1, Ordering::Relaxed);
            return self.wake_cpu(cpu);
        }
        let mut table = self.table.lock();
        let is_waiter = |e: &Entry| matches!(e, Entry::Waiter { token: t, .. } if *t == token);
        match scan(&table, is_waiter) {
            Scan::Found(i) => table[i].take().is_some_and(Entry::wake),
            Scan::Free(i) => {
                self.stats.early_ready.fetch_add(1, Ordering::Relaxed);
                table[i] = Some(Entry::Ready { token, cpu });
                false
            }
            Scan::Full => {
                self.stats.table_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Wakes every task parked on a token `cpu` received, and forgets that
    /// CPU's ready marks; returns whether a task was woken. Interrupts must
    /// be masked.
    fn wake_cpu(&self, cpu: u32) -> bool {
        let mut table = self.table.lock();
        let mut woke = false;
        for slot in table.iter_mut() {
            if slot.as_ref().is_some_and(|e| e.cpu() == cpu) {
                if let Some(e) = slot.take() {
                    woke |= e.wake();
                }
            }
        }
        woke
    }

    /// Consumes a PAGE_READY waiting in `cpu`'s block, if there is one;
    /// returns whether it woke a task. Interrupts must be masked.
    fn consume_ready(&self, cpu: u32) -> bool {
        let block = &self.blocks[cpu as usize];
        if block.reason.load(Ordering::Acquire) != READY {
            return false;
        }
        let token = block.token.load(Ordering::Relaxed);
        block.reason.store(0, Ordering::Release);
        self.ready(token, cpu)
    }

    /// Registers this CPU's block with the host.
    fn enable_cpu(&self, cpu: u32) {
        let block = &self.blocks[cpu as usize];
        block.reason.store(0, Ordering::Relaxed);
        block.token.store(0, Ordering::Relaxed);
        self.irq.enable_local();
        // SAFETY: `block` is a live kernel address in the linear map.
        let ipa = unsafe { bindings::virt_to_phys(ptr::from_ref(block).cast_mut().cast()) };
        let flags = bindings::KVM_ASYNC_PF_ENABLED.into();
        match apf_call(bindings::KVM_ASYNC_PF_CALL_ENABLE, ipa, flags) {
            (0, _) => self.enabled[cpu as usize].store(true, Ordering::Relaxed),
            (err, _) => {
                self.irq.disable_local();
                pr_warn!("CPU{cpu}: ENABLE failed ({err}), APF stays off there\n");
            }
        }
    }

    /// Unregisters this CPU's block: afterwards the host no longer writes
    /// it, and no PAGE_READY comes for the tokens it received, so their
    /// tasks are woken here.
    fn disable_cpu(&self, cpu: u32) {
        if !self.enabled[cpu as usize].swap(false, Ordering::Relaxed) {
            return;
        }
        {
            let _irqs_off = LocalIrqDisabled::new();
            apf_call(bindings::KVM_ASYNC_PF_CALL_DISABLE, 0, 0);
            // An event delivered before DISABLE counts as delivered.
            self.consume_ready(cpu);
            self.wake_cpu(cpu);
        }
        self.irq.disable_local();
    }
}

/// The PAGE_READY interrupt.
struct ReadyIrq;

impl PercpuHandler for ReadyIrq {
    fn handle(cpu: u32) -> IrqReturn {
        let Some(apf) = apf() else {
            return IrqReturn::None;
        };
        let woke = apf.consume_ready(cpu);
        // Lets the host lower the line and send the next event.
        apf_call(bindings::KVM_ASYNC_PF_CALL_ACK, 0, 0);
        // A task just woken has waited for I/O: let it compete for this
        // CPU now rather than at the next tick, which costs more than the
        // fetch itself when swap-ins are fast.
        if woke {
            irq::resched_current();
        }
        IrqReturn::Handled
    }
}

/// Enables APF on each CPU that comes online, disables it on each that
/// goes offline.
struct Hotplug;

impl cpuhp::CpuHotplug for Hotplug {
    fn online(cpu: u32) -> Result {
        match apf() {
            Some(apf) => apf.enable_cpu(cpu),
            // APF is offered but off here (`no-kvmapf`, or a kexec'd or
            // crash kernel): make sure a previous kernel's block is gone.
            None => drop(apf_call(bindings::KVM_ASYNC_PF_CALL_DISABLE, 0, 0)),
        }
        Ok(())
    }

    fn offline(cpu: u32) -> Result {
        if let Some(apf) = apf() {
            apf.disable_cpu(cpu);
        }
        Ok(())
    }
}

/// Takes the blocks back before reboot, power-off, kexec and panic, so
/// that the host never writes into memory a next kernel owns.
struct Shutdown;

fn disable_on_this_cpu(cpu: u32) {
    if let Some(apf) = apf() {
        apf.disable_cpu(cpu);
    }
}

impl NotifierHandler for Shutdown {
    fn notify(chain: Chain, _action: u64) {
        let Some(apf) = apf() else {
            return;
        };
        match chain {
            Chain::Reboot => {
                cpuhp::on_each_online_cpu(disable_on_this_cpu);
                let s = &apf.stats;
                let (np, rd, wa) = (&s.not_present, &s.ready, &s.wake_all);
                pr_info!(
                    "shutdown: not_present={} ready={} wake_all={}\n",
                    np.load(Ordering::Relaxed),
                    rd.load(Ordering::Relaxed),
                    wa.load(Ordering::Relaxed)
                );
            }
            // Other CPUs are stopped: no locks, only the hypercall.
            Chain::Panic => drop(apf_call(bindings::KVM_ASYNC_PF_CALL_DISABLE, 0, 0)),
        }
    }
}

/// `/proc/kvm_apf`: one "name value" line per counter.
struct ProcFile;

impl ShowSingle for ProcFile {
    fn show(m: &mut SeqFile) -> Result {
        if let Some(apf) = apf() {
            for (name, value) in apf.counters() {
                writeln!(m, "{name} {value}").map_err(|_| EINVAL)?;
            }
        }
        Ok(())
    }
}

/// What boot found.
enum Probe {
    /// No APF service: nothing to do, and no hypercall may be made.
    Absent,
    /// Offered, but not used: each CPU disables it.
    Off,
    /// In use.
    On,
}

/// Finds the service and, if it is to be used, publishes the state.
fn probe() -> Result<Probe> {
    if !arm_smccc::kvm_service_available(bindings::ARM_SMCCC_KVM_FUNC_ASYNC_PF) {
        pr_info!("not offered by the hypervisor\n");
        return Ok(Probe::Absent);
    }
    if NO_KVMAPF.load(Ordering::Relaxed) {
        pr_info!("disabled by no-kvmapf\n");
        return Ok(Probe::Off);
    }
    let version = apf_query(bindings::KVM_ASYNC_PF_CALL_VERSION)?;
    if version >> 16 != (bindings::KVM_ASYNC_PF_VERSION_1_0 >> 16).into() {
        pr_info!("unsupported version {version:#x}\n");
        return Ok(Probe::Off);
    }
    let slots = apf_query(bindings::KVM_ASYNC_PF_CALL_SLOTS)?;
    let intid = apf_query(bindings::KVM_ASYNC_PF_CALL_IRQ)?;
    let virq = irq::gic_ppi(u32::try_from(intid).map_err(|_| EINVAL)?)?;

    let cpus = irq::nr_cpu_ids() as usize;
    let mut blocks = KVec::with_capacity(cpus, GFP_KERNEL)?;
    let mut enabled = KVec::with_capacity(cpus, GFP_KERNEL)?;
    for _ in 0..cpus {
        let block = Block {
            reason: AtomicU32::new(0),
            token: AtomicU32::new(0),
            _pad: [0; 56],
        };
        blocks.push(block, GFP_KERNEL)?;
        enabled.push(AtomicBool::new(false), GFP_KERNEL)?;
    }
    let entries = cpus * (usize::try_from(slots).map_err(|_| EINVAL)? + SPARE_ENTRIES);
    let mut table = KVec::with_capacity(entries, GFP_KERNEL)?;
    for _ in 0..entries {
        table.push(None, GFP_KERNEL)?;
    }
    let irq = PercpuIrq::request(virq, c_str!("kvm-apf"))?;
    let apf = KBox::pin_init(
        pin_init!(Apf {
            blocks,
            table <- new_spinlock!(table, "apf_guest::table"),
            irq,
            enabled,
            stats: Stats::default(),
        }),
        GFP_KERNEL,
    )?;
    // SAFETY: The state is never moved out of its allocation, which is
    // leaked here to live as long as the kernel.
    let apf = KBox::into_raw(unsafe { Pin::into_inner_unchecked(apf) });
    APF.store(apf, Ordering::Release);
    pr_info!("version {version:#x}, {slots} slots, PPI {intid}\n");
    Ok(Probe::On)
}

struct ApfGuest {
    _hotplug: Option<cpuhp::Registration<Hotplug>>,
    _reboot: Option<Notifier<Shutdown>>,
    _panic: Option<Notifier<Shutdown>>,
    _proc: Option<SingleFile<ProcFile>>,
}

impl kernel::Module for ApfGuest {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let probe = probe().unwrap_or_else(|e| {
            pr_warn!("cannot use the service ({e:?}), disabling it\n");
            Probe::Off
        });
        let mut this = Self {
            _hotplug: None,
            _reboot: None,
            _panic: None,
            _proc: None,
        };
        if matches!(probe, Probe::Absent) {
            return Ok(this);
        }
        this._hotplug = Some(cpuhp::Registration::new(c_str!("arm64/kvm_apf:online"))?);
        if matches!(probe, Probe::On) {
            this._reboot = Some(Notifier::register(Chain::Reboot)?);
            this._panic = Some(Notifier::register(Chain::Panic)?);
            this._proc = Some(SingleFile::create(c_str!("kvm_apf"))?);
        }
        Ok(this)
    }
}

/// Called by the arm64 abort handler, first, for every external abort taken
/// from user space. Returns `true` if it was PAGE_NOT_PRESENT, which has then
/// been handled: the task was parked until its page was ready, and the
/// faulting instruction is to be retried.
#[export]
pub extern "C" fn kvm_apf_guest_user_abort(esr: u64) -> bool {
    match apf() {
        Some(apf) if esr & FSC_MASK == FSC_SEA => apf.not_present(),
        _ => false,
    }
}

/// The `no-kvmapf` boot parameter.
unsafe extern "C" fn parse_no_kvmapf(_arg: *mut c_char) -> c_int {
    NO_KVMAPF.store(true, Ordering::Relaxed);
    0
}

/// An entry of the kernel's table of boot parameters: `struct
/// obs_kernel_param` of `include/linux/init.h`, as `early_param()` makes it
/// (bindgen does not see it, the header hides it from modules).
#[repr(C)]
struct SetupParam {
    name: *const c_char,
    setup: unsafe extern "C" fn(*mut c_char) -> c_int,
    early: c_int,
}

// SAFETY: Read only, by the boot CPU, during early boot; the pointers it
// holds are to a static string and a function.
unsafe impl Sync for SetupParam {}

#[link_section = ".init.setup"]
#[used]
static NO_KVMAPF_PARAM: SetupParam = SetupParam {
    name: c"no-kvmapf".as_ptr(),
    setup: parse_no_kvmapf,
    early: 1,
};
