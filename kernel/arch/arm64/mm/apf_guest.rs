// SPDX-License-Identifier: GPL-2.0

//! KVM/arm64 asynchronous page faults: the guest side.
//!
//! When a user task touches memory the host has to fetch first, KVM may
//! answer with PAGE_NOT_PRESENT instead of stalling the vCPU: it writes a
//! token into this CPU's control block and injects a synchronous external
//! abort at the faulting instruction. The arm64 entry code asks
//! [`kvm_apf_guest_take`] about every abort from user space before it
//! unmasks interrupts, so the block read is the one of the CPU that took the
//! abort and nothing can run in between. If it was PAGE_NOT_PRESENT, the
//! task is registered as the waiter for the token, the block is freed, and
//! after unmasking [`kvm_apf_guest_wait`] sleeps until the page is ready.
//! When it is, KVM writes PAGE_READY with the same token and raises a PPI;
//! [`ReadyIrq`] wakes the task, which returns to user space and repeats the
//! access.
//!
//! Waiters are found by token in one [`Table`] shared by all CPUs, so a task
//! may be preempted or migrated while it waits, and the PAGE_READY may be
//! handled on any CPU. The table uses raw spinlocks and allocates nothing
//! after boot, so the interrupt handler is valid under `PREEMPT_RT` too.
//!
//! Protocol: [`Documentation/virt/kvm/arm/apf.rst`](srctree/Documentation/virt/kvm/arm/apf.rst),
//! ABI: [`arch/arm64/include/uapi/asm/kvm_para.h`](srctree/arch/arm64/include/uapi/asm/kvm_para.h).

use core::{
    ffi::{c_char, c_int},
    fmt::Write,
    ptr,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering},
};
use kernel::{
    arm_smccc, bindings, c_str, cpuhp,
    irq::{self, IrqReturn, LocalIrqDisabled, PercpuHandler, PercpuIrq},
    macros::export,
    new_raw_spinlock_irq,
    notifier::{Chain, Notifier, NotifierHandler, Syscore, SyscoreHandler},
    prelude::*,
    proc_fs::{SeqFile, ShowSingle, SingleFile},
    sync::{Completion, Published, RawSpinLockIrq},
    types::Opaque,
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
/// The most SLOTS accepted from the host. KVM offers 64; a larger value is
/// taken as a broken host rather than sized for.
const MAX_SLOTS: u64 = 1024;
/// Table entries per CPU beyond the host's SLOTS: room for a PAGE_READY
/// handled before its task registered, which the protocol allows.
const SPARE_ENTRIES: usize = 8;
/// The table has `1 << HASH_BITS` chains.
const HASH_BITS: u32 = 6;
/// The end of a chain, or of the free list.
const NIL: u32 = u32::MAX;

/// A ticket [`kvm_apf_guest_take`] returns: the abort was not an APF.
const TICKET_NONE: u32 = 0;
/// A ticket: the abort was an APF, but the task need not wait (its token was
/// ready already, or there was no room to wait: the retry then makes the
/// host resolve the fault synchronously).
const TICKET_RETRY: u32 = u32::MAX;

/// Set by the `no-kvmapf` boot parameter.
static NO_KVMAPF: AtomicBool = AtomicBool::new(false);
/// The state, published before the interrupt that delivers into it is
/// requested; never freed (built in). Read it through [`guest`].
static APF: Published<Apf> = Published::new();
/// APF in use, published once it is complete: what the entry hooks read;
/// every other path is handed it.
static GUEST: Published<Guest> = Published::new();

/// One CPU's control block (`struct kvm_vcpu_pv_apf_data`), which the host
/// writes while this CPU is out of the guest.
#[repr(C, align(64))]
struct Block {
    reason: AtomicU32,
    token: AtomicU32,
    /// Reserved: the host may write it, the guest never touches it.
    _pad: Opaque<[u8; 56]>,
}

// SAFETY: The guest only accesses `reason` and `token`, atomically; the
// padding, which the host may write, it never reads nor writes.
unsafe impl Sync for Block {}

const _: () = assert!(
    core::mem::size_of::<Block>() == core::mem::size_of::<bindings::kvm_vcpu_pv_apf_data>()
);
const _: () =
    assert!(core::mem::align_of::<Block>() == bindings::KVM_ASYNC_PF_BLOCK_ALIGN as usize);

/// What a [`Slot`] of the table holds.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    /// On the free list.
    Free,
    /// A task waits for the token.
    Waiting,
    /// The token is ready and the waiter was woken; the waiter frees it.
    Woken,
    /// The waiter was killed before its token was ready; the PAGE_READY
    /// (or the wake-all) for the token frees it.
    Abandoned,
    /// The token became ready before its task registered; the task frees it.
    Ready,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Waiting,
            2 => Self::Woken,
            3 => Self::Abandoned,
            4 => Self::Ready,
            _ => Self::Free,
        }
    }
}

/// An entry of the [`Table`].
///
/// A slot linked into a chain belongs to that chain's lock; a free slot to
/// the free list's lock; a slot in state [`State::Woken`], which is on no
/// list, to the task that waited in it. The fields are atomics only so that
/// this sharing can be written in safe code: the locks order the accesses,
/// and every access is relaxed.
#[pin_data]
struct Slot {
    token: AtomicU32,
    /// The CPU whose block carried the token.
    cpu: AtomicU32,
    state: AtomicU8,
    /// The next slot of the chain or of the free list, or [`NIL`].
    next: AtomicU32,
    #[pin]
    done: Completion,
}

impl Slot {
    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    fn next(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }
}

/// What [`Table::ready`] did.
#[derive(PartialEq, Eq)]
enum Woke {
    /// Woke the waiting task.
    Task,
    /// Freed the entry of a task that had been killed.
    Abandoned,
    /// Remembered the token for a task yet to register.
    Early,
    /// Nothing: a token already ready, or no room to remember it.
    Nothing,
}

/// Tokens and the tasks that wait for them, shared by all CPUs.
///
/// A hash table of chains of [`Slot`]s, each chain under its own raw
/// spinlock, taken with interrupts masked, as the PAGE_READY handler takes
/// it too. Every slot is allocated at boot: nothing is allocated or freed
/// when a task waits or is woken. The host has at most SLOTS tokens pending
/// per vCPU, and a slot is in use only for a pending token or for a token
/// that became ready before its task registered, so `nr_cpus * (SLOTS +
/// SPARE_ENTRIES)` slots do not run out with a host that keeps to the
/// protocol; if they do, the task retries instead of waiting and the host
/// resolves the fault synchronously, which is counted.
///
/// Lock order: a chain's lock, then the free list's.
struct Table {
    chains: KVec<Pin<KBox<RawSpinLockIrq<u32>>>>,
    slots: KVec<Pin<KBox<Slot>>>,
    free: Pin<KBox<RawSpinLockIrq<u32>>>,
}

impl Table {
    fn new(entries: usize) -> Result<Self> {
        let nr = u32::try_from(entries)
            .ok()
            .filter(|n| *n < NIL)
            .ok_or(EINVAL)?;
        let mut slots = KVec::with_capacity(entries, GFP_KERNEL)?;
        for i in 0..nr {
            let next = if i + 1 < nr { i + 1 } else { NIL };
            let slot = pin_init!(Slot {
                token: AtomicU32::new(0),
                cpu: AtomicU32::new(0),
                state: AtomicU8::new(State::Free as u8),
                next: AtomicU32::new(next),
                done <- Completion::new(),
            });
            slots.push(KBox::pin_init(slot, GFP_KERNEL)?, GFP_KERNEL)?;
        }
        let mut chains = KVec::with_capacity(1 << HASH_BITS, GFP_KERNEL)?;
        for _ in 0..1 << HASH_BITS {
            let chain = KBox::pin_init(new_raw_spinlock_irq!(NIL, "apf_guest::chain"), GFP_KERNEL)?;
            chains.push(chain, GFP_KERNEL)?;
        }
        let head = if nr > 0 { 0 } else { NIL };
        let free = KBox::pin_init(new_raw_spinlock_irq!(head, "apf_guest::free"), GFP_KERNEL)?;
        Ok(Self {
            chains,
            slots,
            free,
        })
    }

    fn chain(&self, token: u32) -> &RawSpinLockIrq<u32> {
        // `hash_32()`: the host builds tokens from a vCPU index and a
        // sequence number, which the multiplication spreads.
        let hash = token.wrapping_mul(bindings::GOLDEN_RATIO_32) >> (32 - HASH_BITS);
        &self.chains[hash as usize]
    }

    fn slot(&self, i: u32) -> &Slot {
        &self.slots[i as usize]
    }

    /// Finds `token` in the chain that starts at `head`; returns its slot
    /// and the one before it, or [`NIL`]. The chain's lock must be held.
    fn find(&self, head: u32, token: u32) -> Option<(u32, u32)> {
        let (mut prev, mut i) = (NIL, head);
        while i != NIL {
            if self.slot(i).token.load(Ordering::Relaxed) == token {
                return Some((prev, i));
            }
            prev = i;
            i = self.slot(i).next();
        }
        None
    }

    /// Takes slot `i`, after `prev`, out of the chain whose head is `head`.
    fn unlink(&self, head: &mut u32, prev: u32, i: u32) {
        let next = self.slot(i).next();
        match prev {
            NIL => *head = next,
            p => self.slot(p).next.store(next, Ordering::Relaxed),
        }
    }

    /// Takes a free slot for `token`, received on `cpu`, and links it into
    /// the chain whose head is `head`, the token's.
    fn insert(&self, head: &mut u32, token: u32, cpu: u32, state: State) -> Option<u32> {
        let i = {
            let mut free = self.free.lock();
            let i = *free;
            if i == NIL {
                return None;
            }
            *free = self.slot(i).next();
            i
        };
        let slot = self.slot(i);
        slot.token.store(token, Ordering::Relaxed);
        slot.cpu.store(cpu, Ordering::Relaxed);
        slot.set_state(state);
        slot.next.store(*head, Ordering::Relaxed);
        *head = i;
        Some(i)
    }

    /// Puts slot `i`, which is on no chain, back on the free list.
    fn release(&self, i: u32) {
        let slot = self.slot(i);
        slot.set_state(State::Free);
        let mut free = self.free.lock();
        slot.next.store(*free, Ordering::Relaxed);
        *free = i;
    }

    /// Registers the current task as the waiter for `token`, received on
    /// `cpu`. Returns the slot to wait in, or why the task must not wait.
    fn register(&self, token: u32, cpu: u32) -> core::result::Result<u32, Refused> {
        let mut head = self.chain(token).lock();
        match self.find(*head, token) {
            Some((prev, i)) if self.slot(i).state() == State::Ready => {
                self.unlink(&mut head, prev, i);
                self.release(i);
                Err(Refused::Ready)
            }
            Some(_) => Err(Refused::Duplicate),
            None => self
                .insert(&mut head, token, cpu, State::Waiting)
                .ok_or(Refused::Full),
        }
    }

    /// Handles PAGE_READY for `token`, received on `cpu`.
    fn ready(&self, token: u32, cpu: u32) -> Woke {
        let mut head = self.chain(token).lock();
        let Some((prev, i)) = self.find(*head, token) else {
            return match self.insert(&mut head, token, cpu, State::Ready) {
                Some(_) => Woke::Early,
                None => Woke::Nothing,
            };
        };
        let slot = self.slot(i);
        match slot.state() {
            State::Waiting => {
                self.unlink(&mut head, prev, i);
                slot.set_state(State::Woken);
                // Under the chain's lock, so that a waiter being killed sees
                // either `Waiting` or a completion it can consume.
                slot.done.complete();
                Woke::Task
            }
            State::Abandoned => {
                self.unlink(&mut head, prev, i);
                self.release(i);
                Woke::Abandoned
            }
            State::Free | State::Woken | State::Ready => Woke::Nothing,
        }
    }

    /// Waits in slot `i` until its token is ready or the task is killed.
    /// Returns `false` if it was killed.
    fn wait(&self, i: u32) -> bool {
        let slot = self.slot(i);
        if slot.done.wait_killable().is_ok() {
            self.release(i);
            return true;
        }
        let head = self.chain(slot.token.load(Ordering::Relaxed)).lock();
        if slot.state() == State::Waiting {
            // The PAGE_READY for the token still comes, and frees the slot.
            slot.set_state(State::Abandoned);
            return false;
        }
        drop(head);
        // Woken meanwhile: consume the completion, so that the slot's next
        // waiter does not return at once.
        slot.done.try_wait();
        self.release(i);
        false
    }

    /// Wakes every task waiting for a token `cpu` received, and frees that
    /// CPU's other entries: after a wake-all or DISABLE no PAGE_READY comes
    /// for them. Takes one chain's lock at a time. Returns how many tasks
    /// were woken.
    fn wake_cpu(&self, cpu: u32) -> u64 {
        let mut woke = 0;
        for chain in &self.chains {
            let mut head = chain.lock();
            let (mut prev, mut i) = (NIL, *head);
            while i != NIL {
                let slot = self.slot(i);
                let next = slot.next();
                if slot.cpu.load(Ordering::Relaxed) != cpu {
                    prev = i;
                } else {
                    self.unlink(&mut head, prev, i);
                    if slot.state() == State::Waiting {
                        slot.set_state(State::Woken);
                        slot.done.complete();
                        woke += 1;
                    } else {
                        self.release(i);
                    }
                }
                i = next;
            }
        }
        woke
    }
}

/// Why a task received a token but does not wait for it.
enum Refused {
    /// The token is ready already.
    Ready,
    /// The token is pending already, which the host never does.
    Duplicate,
    /// No free slot, which a host that keeps to SLOTS never causes.
    Full,
}

/// Events handled, shown in `/proc/kvm_apf`.
#[derive(Default)]
struct Stats {
    not_present: AtomicU64,
    ready: AtomicU64,
    wake_all: AtomicU64,
    /// Waiters a wake-all woke: after a restore, the tasks that were
    /// parked when the VM was saved.
    wake_all_woken: AtomicU64,
    /// Waiters killed before their token was ready.
    killed: AtomicU64,
    /// Waiters that resumed on a CPU other than the one that took the event.
    migrated: AtomicU64,
    early_ready: AtomicU64,
    /// Tokens not waited for: no room, or received twice.
    refused: AtomicU64,
    /// PAGE_READYs for a token that was neither waited for nor rememberable.
    unmatched: AtomicU64,
}

struct Apf {
    /// Control blocks, indexed by CPU number.
    blocks: KVec<Block>,
    table: Table,
    /// Whether the host has this CPU's block, indexed by CPU number.
    enabled: KVec<AtomicBool>,
    stats: Stats,
}

/// APF in use: the state, and the PAGE_READY line whose handler holds it.
struct Guest {
    apf: &'static Apf,
    irq: PercpuIrq<ReadyIrq>,
}

/// The state, for the entry hooks, which have nowhere else to find it.
fn apf() -> Option<&'static Apf> {
    GUEST.get().map(|g| g.apf)
}

/// The APF subcalls that hand the host no memory.
#[derive(Clone, Copy)]
enum Call {
    Version,
    Slots,
    Irq,
    Disable,
    Ack,
}

/// Makes APF subcall `call` with arguments `a2`, `a3`; returns x0, x1.
///
/// # Safety
///
/// For ENABLE, `a2` must be the physical address of a [`Block`] that is
/// never freed: the host writes it until DISABLE, or for ever.
unsafe fn hvc(call: u32, a2: u64, a3: u64) -> (i64, u64) {
    // SAFETY: An APF subcall; the caller vouches for the memory ENABLE
    // hands over, the others hand over none.
    let r = unsafe { arm_smccc::hvc([FUNC_ID, call.into(), a2, a3]) };
    (r[0] as i64, r[1])
}

/// Makes APF subcall `call`; returns x0, x1.
fn apf_call(call: Call) -> (i64, u64) {
    let id = match call {
        Call::Version => bindings::KVM_ASYNC_PF_CALL_VERSION,
        Call::Slots => bindings::KVM_ASYNC_PF_CALL_SLOTS,
        Call::Irq => bindings::KVM_ASYNC_PF_CALL_IRQ,
        Call::Disable => bindings::KVM_ASYNC_PF_CALL_DISABLE,
        Call::Ack => bindings::KVM_ASYNC_PF_CALL_ACK,
    };
    // SAFETY: Not ENABLE: no memory is handed over.
    unsafe { hvc(id, 0, 0) }
}

/// Hands `block` to the host for the calling CPU; returns x0.
fn apf_enable(block: &'static Block) -> i64 {
    // SAFETY: `block` is a live kernel address in the linear map.
    let ipa = unsafe { bindings::virt_to_phys(ptr::from_ref(block).cast_mut().cast()) };
    let flags = bindings::KVM_ASYNC_PF_ENABLED.into();
    // SAFETY: ENABLE with a block that lives for ever (`'static`).
    unsafe { hvc(bindings::KVM_ASYNC_PF_CALL_ENABLE, ipa, flags) }.0
}

fn apf_query(call: Call) -> Result<u64> {
    match apf_call(call) {
        (0, v) => Ok(v),
        _ => Err(ENODEV),
    }
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Apf {
    fn enabled_cpus(&self) -> u64 {
        let on = self.enabled.iter().filter(|e| e.load(Ordering::Relaxed));
        on.count() as u64
    }

    fn counters(&self) -> [(&'static str, u64); 10] {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("enabled_cpus", self.enabled_cpus()),
            ("not_present", get(&s.not_present)),
            ("ready", get(&s.ready)),
            ("wake_all", get(&s.wake_all)),
            ("wake_all_woken", get(&s.wake_all_woken)),
            ("killed", get(&s.killed)),
            ("migrated", get(&s.migrated)),
            ("early_ready", get(&s.early_ready)),
            ("refused", get(&s.refused)),
            ("unmatched", get(&s.unmatched)),
        ]
    }

    /// Takes PAGE_NOT_PRESENT from this CPU's block, if it holds one, and
    /// registers the current task as its waiter. Interrupts are masked since
    /// the exception entry, so this is the CPU that took the abort.
    fn take(&self) -> u32 {
        LocalIrqDisabled::with(|irqs_off| self.take_on(irqs_off.cpu()))
    }

    /// [`Apf::take`] on `cpu`, which is the current CPU, with interrupts
    /// masked.
    fn take_on(&self, cpu: u32) -> u32 {
        let block = &self.blocks[cpu as usize];
        if block.reason.load(Ordering::Acquire) != NOT_PRESENT {
            return TICKET_NONE;
        }
        let token = block.token.load(Ordering::Relaxed);
        let ticket = match self.table.register(token, cpu) {
            Ok(i) => i + 1,
            Err(Refused::Ready) => TICKET_RETRY,
            Err(Refused::Duplicate | Refused::Full) => {
                count(&self.stats.refused);
                TICKET_RETRY
            }
        };
        // Only now may the host deliver the next event into the block: the
        // waiter is registered, so its PAGE_READY cannot overtake it.
        block.reason.store(0, Ordering::Release);
        count(&self.stats.not_present);
        ticket
    }

    /// Sleeps until the token of `ticket` is ready. Called with interrupts
    /// unmasked; the task may be preempted and migrated meanwhile.
    fn wait(&self, ticket: u32) {
        if ticket == TICKET_NONE || ticket == TICKET_RETRY {
            return;
        }
        let slot = ticket - 1;
        let took = self.table.slot(slot).cpu.load(Ordering::Relaxed);
        if !self.table.wait(slot) {
            count(&self.stats.killed);
        }
        if cpu_now() != took {
            count(&self.stats.migrated);
        }
    }

    /// Handles PAGE_READY for `token`, received on `cpu`; returns whether a
    /// task was woken.
    fn ready(&self, token: u32, cpu: u32) -> bool {
        count(&self.stats.ready);
        if token == WAKE_ALL {
            count(&self.stats.wake_all);
            let woken = self.table.wake_cpu(cpu);
            self.stats
                .wake_all_woken
                .fetch_add(woken, Ordering::Relaxed);
            return woken > 0;
        }
        match self.table.ready(token, cpu) {
            Woke::Task => true,
            Woke::Abandoned => false,
            Woke::Early => {
                count(&self.stats.early_ready);
                false
            }
            Woke::Nothing => {
                count(&self.stats.unmatched);
                false
            }
        }
    }

    /// Consumes the event waiting in `cpu`'s block, if there is one;
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
}

impl Guest {
    /// Registers this CPU's block with the host.
    fn enable_cpu(&self, cpu: u32) {
        let block = &self.apf.blocks[cpu as usize];
        block.reason.store(0, Ordering::Relaxed);
        block.token.store(0, Ordering::Relaxed);
        self.irq.enable_local();
        match apf_enable(block) {
            0 => self.apf.enabled[cpu as usize].store(true, Ordering::Relaxed),
            err => {
                self.irq.disable_local();
                pr_warn!("CPU{cpu}: ENABLE failed ({err}), APF stays off there\n");
            }
        }
    }

    /// Unregisters this CPU's block: afterwards the host no longer writes
    /// it, and no PAGE_READY comes for the tokens it received, so their
    /// tasks are woken here. Runs on `cpu`.
    fn disable_cpu(&self, cpu: u32) {
        if !self.apf.enabled[cpu as usize].swap(false, Ordering::Relaxed) {
            return;
        }
        // No abort can be taken on this CPU meanwhile, so the block cannot
        // change under us once DISABLE returned.
        LocalIrqDisabled::with(|_| {
            apf_call(Call::Disable);
            // A PAGE_READY delivered before DISABLE counts as delivered.
            self.apf.consume_ready(cpu);
            // A PAGE_NOT_PRESENT cannot be in the block: its abort is taken
            // before the guest runs on, and taken with interrupts masked.
            // Should one be, its token died with DISABLE: free the block so
            // that nobody waits for it.
            self.apf.blocks[cpu as usize]
                .reason
                .store(0, Ordering::Release);
            self.apf.table.wake_cpu(cpu);
        });
        self.irq.disable_local();
    }
}

/// The number of the CPU the caller runs on, which may be stale at once.
fn cpu_now() -> u32 {
    LocalIrqDisabled::with(|irqs_off| irqs_off.cpu())
}

/// The PAGE_READY interrupt, delivering into the state it holds.
struct ReadyIrq(&'static Apf);

impl PercpuHandler for ReadyIrq {
    fn handle(&self, cpu: u32) -> IrqReturn {
        let woke = self.0.consume_ready(cpu);
        // Lets the host lower the line and send the next event.
        apf_call(Call::Ack);
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
/// goes offline; with APF offered but off, only makes sure it is off.
struct Hotplug(Option<&'static Guest>);

impl cpuhp::CpuHotplug for Hotplug {
    fn online(&self, cpu: u32) -> Result {
        match self.0 {
            Some(guest) => guest.enable_cpu(cpu),
            // APF is offered but off here (`no-kvmapf`, a crash kernel):
            // make sure a previous kernel's block is gone. A crash kernel
            // gets here before user space runs, and so before any fault
            // could be reported into the old kernel's block.
            None => drop(apf_call(Call::Disable)),
        }
        Ok(())
    }

    fn offline(&self, cpu: u32) -> Result {
        if let Some(guest) = self.0 {
            guest.disable_cpu(cpu);
        }
        Ok(())
    }
}

/// Takes the blocks back before reboot, power-off, kexec and panic, so
/// that the host never writes into memory a next kernel owns.
struct Shutdown(&'static Guest);

impl NotifierHandler for Shutdown {
    fn notify(&self, chain: Chain, _action: u64) {
        let guest = self.0;
        match chain {
            Chain::Reboot => {
                cpuhp::on_each_online_cpu(|cpu| guest.disable_cpu(cpu));
                let s = &guest.apf.stats;
                let (np, rd, wa) = (&s.not_present, &s.ready, &s.wake_all);
                pr_info!(
                    "shutdown: not_present={} ready={} wake_all={}\n",
                    np.load(Ordering::Relaxed),
                    rd.load(Ordering::Relaxed),
                    wa.load(Ordering::Relaxed)
                );
            }
            // Other CPUs are stopped: no locks, only the hypercall. A crash
            // kernel started by panic() runs before this: it disables the
            // blocks itself (`Hotplug::online`).
            Chain::Panic => drop(apf_call(Call::Disable)),
        }
    }
}

/// Takes the block back before a system sleep and hibernation, whose image
/// may be restored by another kernel, and before `KEXEC_JUMP`; registers it
/// again on resume. Runs on the one CPU left online, with interrupts
/// masked; the other CPUs went through [`Hotplug`].
struct Sleep(&'static Guest);

impl SyscoreHandler for Sleep {
    fn suspend(&self) -> Result {
        self.0.disable_cpu(cpu_now());
        Ok(())
    }

    fn resume(&self) {
        self.0.enable_cpu(cpu_now());
    }
}

/// `/proc/kvm_apf`: one "name value" line per counter.
struct ProcFile(&'static Apf);

impl ShowSingle for ProcFile {
    fn show(&self, m: &mut SeqFile) -> Result {
        for (name, value) in self.0.counters() {
            writeln!(m, "{name} {value}").map_err(|_| EINVAL)?;
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
    On(&'static Guest),
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
    if kernel::notifier::is_kdump_kernel() {
        pr_info!("not used in a crash kernel\n");
        return Ok(Probe::Off);
    }
    let version = apf_query(Call::Version)?;
    if version >> 16 != (bindings::KVM_ASYNC_PF_VERSION_1_0 >> 16).into() {
        pr_info!("unsupported version {version:#x}\n");
        return Ok(Probe::Off);
    }
    let slots = apf_query(Call::Slots)?;
    if !(1..=MAX_SLOTS).contains(&slots) {
        pr_warn!("the host offers {slots} slots, expected 1 to {MAX_SLOTS}\n");
        return Ok(Probe::Off);
    }
    let intid = apf_query(Call::Irq)?;
    let virq = irq::gic_ppi(u32::try_from(intid).map_err(|_| EINVAL)?)?;

    let cpus = irq::nr_cpu_ids() as usize;
    let mut blocks = KVec::with_capacity(cpus, GFP_KERNEL)?;
    let mut enabled = KVec::with_capacity(cpus, GFP_KERNEL)?;
    for _ in 0..cpus {
        let block = Block {
            reason: AtomicU32::new(0),
            token: AtomicU32::new(0),
            _pad: Opaque::new([0; 56]),
        };
        blocks.push(block, GFP_KERNEL)?;
        enabled.push(AtomicBool::new(false), GFP_KERNEL)?;
    }
    // `slots` is at most MAX_SLOTS, so this cannot overflow.
    let table = Table::new(cpus * (slots as usize + SPARE_ENTRIES))?;
    let state = KBox::new(
        Apf {
            blocks,
            table,
            enabled,
            stats: Stats::default(),
        },
        GFP_KERNEL,
    )?;
    // The state lives as long as the kernel: first for the handler of the
    // line, then for every hook, once the line is requested too.
    let apf = APF.publish(state).map_err(|_| EBUSY)?;
    let irq = PercpuIrq::request(virq, c_str!("kvm-apf"), ReadyIrq(apf))?;
    let guest = GUEST
        .publish(KBox::new(Guest { apf, irq }, GFP_KERNEL)?)
        .map_err(|_| EBUSY)?;
    // SAFETY: `kvm_apf_key` is a static key defined by the entry code; it
    // is enabled once, from process context, after the state is published.
    unsafe { bindings::static_key_false_enable(ptr::addr_of_mut!(bindings::kvm_apf_key)) };
    pr_info!("version {version:#x}, {slots} slots, PPI {intid}\n");
    Ok(Probe::On(guest))
}

struct ApfGuest {
    _hotplug: Option<cpuhp::Registration<Hotplug>>,
    _reboot: Option<Notifier<Shutdown>>,
    _panic: Option<Notifier<Shutdown>>,
    _sleep: Option<Syscore<Sleep>>,
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
            _sleep: None,
            _proc: None,
        };
        let guest = match probe {
            Probe::Absent => return Ok(this),
            Probe::Off => None,
            Probe::On(guest) => Some(guest),
        };
        let name = c_str!("arm64/kvm_apf:online");
        this._hotplug = Some(cpuhp::Registration::new(name, Hotplug(guest))?);
        if let Some(guest) = guest {
            this._reboot = Some(Notifier::register(Chain::Reboot, Shutdown(guest))?);
            this._panic = Some(Notifier::register(Chain::Panic, Shutdown(guest))?);
            this._sleep = Some(Syscore::register(Sleep(guest))?);
            this._proc = Some(SingleFile::create(c_str!("kvm_apf"), ProcFile(guest.apf))?);
        }
        Ok(this)
    }
}

/// Called by the arm64 entry code for every abort taken from user space,
/// before it unmasks interrupts. Returns 0 if the abort is not KVM's
/// PAGE_NOT_PRESENT; otherwise the event has been taken from this CPU's
/// block, and the returned ticket is to be passed to [`kvm_apf_guest_wait`]
/// once interrupts are unmasked, instead of handling the abort.
#[export]
pub extern "C" fn kvm_apf_guest_take(esr: u64) -> u32 {
    match apf() {
        Some(apf) if esr & FSC_MASK == FSC_SEA => apf.take(),
        _ => TICKET_NONE,
    }
}

/// Sleeps until the page of `ticket`, from [`kvm_apf_guest_take`], is
/// ready, or the task is killed. Process context, interrupts unmasked; the
/// faulting instruction is retried afterwards.
#[export]
pub extern "C" fn kvm_apf_guest_wait(ticket: u32) {
    if let Some(apf) = apf() {
        apf.wait(ticket);
    }
}

/// The `no-kvmapf` boot parameter (an `early_param()` of the entry code).
#[export]
pub extern "C" fn kvm_apf_guest_no_kvmapf(_arg: *mut c_char) -> c_int {
    NO_KVMAPF.store(true, Ordering::Relaxed);
    0
}
