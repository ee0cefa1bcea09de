// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VM's life around `Vm::run`: how its RAM is backed ([`Backing`]), what
//! happens when it stops for a snapshot or a migration ([`Session`]), and
//! how a VM starts again from a snapshot (`apf-vmm restore`) or from a
//! migration stream (`apf-vmm receive`).
//!
//! The checks that decide whether a snapshot may be restored
//! ([`check_restore`]) run before anything is created, on any host.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::args::ApfMode;
use crate::snapshot::{SnapshotError, VmState};

/// Errors of the snapshot, restore and migration paths.
#[derive(Debug, Error)]
pub enum LifecycleError {
    /// The snapshot cannot be used.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Restoring would strand the guest's parked tasks.
    #[error(
        "the saved guest has APF enabled on vCPU(s) {vcpus:?}: with --apf hidden the tasks it \
         had parked on APF would never be woken; restore with --apf on, or pass \
         --allow-apf-loss to restore anyway"
    )]
    ApfLoss {
        /// vCPUs with a registered block.
        vcpus: Vec<usize>,
    },
    /// The host's page size is not the one the state was saved with.
    #[error("the source's page size is {theirs}, this host's is {ours}")]
    PageSize {
        /// The source's.
        theirs: usize,
        /// Ours.
        ours: usize,
    },
    /// A file or socket operation failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A socket could not be used.
    #[error("{what} {path}: {source}")]
    Socket {
        /// What was done.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The migration failed.
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    /// The saved UART state was refused by vm-superio.
    #[error("restoring the UART: {0}")]
    Uart(String),
}

/// Decides whether `state` may be restored with APF `apf`: refuses to hide
/// APF from a guest that has it enabled, unless `allow_loss`. Returns a
/// warning to log when it goes ahead anyway.
pub fn check_restore(
    state: &VmState,
    apf: ApfMode,
    allow_loss: bool,
) -> Result<Option<String>, LifecycleError> {
    let vcpus = state.apf_enabled_vcpus();
    if apf == ApfMode::On || vcpus.is_empty() {
        return Ok(None);
    }
    if !allow_loss {
        return Err(LifecycleError::ApfLoss { vcpus });
    }
    Ok(Some(format!(
        "APF hidden from a guest that had it enabled on vCPU(s) {vcpus:?} \
         (--allow-apf-loss): tasks it had parked on APF stay asleep until killed"
    )))
}

/// Reads and checks a snapshot directory for `apf-vmm restore`.
pub fn load_for_restore(
    dir: &Path,
    apf: ApfMode,
    allow_loss: bool,
) -> Result<(VmState, File, Option<String>), LifecycleError> {
    let (state, mem) = VmState::load(dir)?;
    let warning = check_restore(&state, apf, allow_loss)?;
    Ok((state, mem, warning))
}

#[cfg(target_arch = "aarch64")]
pub use kvm::*;

#[cfg(target_arch = "aarch64")]
mod kvm {
    use super::*;

    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc::{Receiver, Sender};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::thread::{self, JoinHandle};

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use crate::bus::MmioBus;
    use crate::cli::Target;
    use crate::control::{ControlServer, Request};
    use crate::error::Error;
    use crate::evict::EvictStats;
    use crate::layout::Region;
    use crate::lines;
    use crate::memory::{self, GuestMem};
    use crate::migrate::{self, Requester};
    use crate::pagestore::PageStore;
    use crate::serial::{self, Console, SerialDevice};
    use crate::snapshot::{self, MEMORY_FILE};
    use crate::stats;
    use crate::uffd::{self, Fetch, Filler, PageSource, UffdError, UffdHandler, Userfault};
    use crate::vm::{Capture, EvictSetup, RestoreConfig, RunEnd, Vm, VmEvent};

    /// Guest RAM and what serves it.
    pub struct Backing {
        mem: GuestMem,
        ram: Region,
        /// userfaultfd mode: the page states and the handler.
        uffd: Option<(Arc<Mutex<PageStore>>, UffdHandler)>,
        /// The file unserved pages come from, for reading them.
        source: Option<File>,
        page_size: usize,
    }

    impl Backing {
        /// RAM that is simply there.
        pub fn plain(mem: GuestMem, ram: Region) -> Backing {
            Backing {
                mem,
                ram,
                uffd: None,
                source: None,
                page_size: uffd::host_page_size() as usize,
            }
        }

        /// Guest memory.
        pub fn mem(&self) -> &GuestMem {
            &self.mem
        }

        /// Puts RAM behind userfaultfd, served from `source` as `fetch`
        /// says; `file` is the same source file (if any), for
        /// reading pages that were never served. Handler failures are
        /// sent to the VM as fatal events.
        pub fn register_uffd(
            &mut self,
            fetch: Fetch,
            source: PageSource,
            file: Option<File>,
            events: &Sender<VmEvent>,
        ) -> Result<(Arc<Mutex<PageStore>>, Filler), Error> {
            let base = memory::host_address(&self.mem, self.ram.base)?;
            // SAFETY: guest RAM stays mapped until after the handler and
            // the evictor are stopped (`mem` is dropped, or leaked, last:
            // see `Session::run`).
            let store = unsafe { PageStore::new(base, self.ram.size, self.page_size as u64) }?;
            let store = Arc::new(Mutex::new(store));
            let fault = Userfault::register(base, self.ram.size)?;
            let filler = fault.filler();
            let fatal_tx = events.clone();
            let handler = fault.spawn_handler(fetch, source, store.clone(), move |e| {
                let _ = fatal_tx.send(VmEvent::Fatal(e.to_string()));
            })?;
            self.uffd = Some((store.clone(), handler));
            self.source = file;
            Ok((store, filler))
        }

        fn pages(&self) -> usize {
            (self.ram.size / self.page_size as u64) as usize
        }

        /// Page `i` as the stopped guest would read it, without faulting.
        fn read_page(&self, i: usize, buf: &mut [u8]) -> io::Result<()> {
            let offset = i as u64 * self.page_size as u64;
            match &self.uffd {
                Some((store, _)) => {
                    let store = store.lock().unwrap_or_else(PoisonError::into_inner);
                    store.read_page(i, buf, |b| {
                        uffd::read_file_page(self.source.as_ref(), offset, b)
                            .map(drop)
                            .map_err(io::Error::other)
                    })
                }
                None => self
                    .mem
                    .read_slice(buf, GuestAddress(self.ram.base + offset))
                    .map_err(io::Error::other),
            }
        }
    }

    /// A created VM, run to its end, and whatever its end requires.
    pub struct Session {
        /// The VM.
        pub vm: Vm,
        /// Its devices.
        pub bus: Arc<MmioBus<Console>>,
        /// Its event channel.
        pub tx: Sender<VmEvent>,
        /// See `tx`.
        pub rx: Receiver<VmEvent>,
        /// The evictor, if any.
        pub evict: Option<EvictSetup>,
        /// Its RAM.
        pub backing: Backing,
        /// Suppress informational messages and statistics.
        pub quiet: bool,
        /// Control socket to listen on.
        pub api_socket: Option<PathBuf>,
        /// Pages still arriving by post-copy, if the VM is migrating in.
        pub migration_in: Option<JoinHandle<Result<migrate::DestStats, String>>>,
        /// The memory cgroup to report on.
        pub cgroup: Option<PathBuf>,
        /// Run once the VM has stopped, while its RAM is still mapped:
        /// ends helpers that fill it (the prefetcher).
        pub on_stop: Option<Box<dyn FnOnce()>>,
    }

    impl Session {
        /// Runs the VM; on a snapshot or migration request saves or sends
        /// it. Prints the statistics and returns the exit status.
        pub fn run(self) -> Result<u8, Error> {
            let Session {
                vm,
                bus,
                tx,
                rx,
                evict,
                mut backing,
                quiet,
                api_socket,
                migration_in,
                cgroup,
                on_stop,
            } = self;
            let control = match &api_socket {
                Some(path) => {
                    let tx = tx.clone();
                    Some(ControlServer::start(path, move |p| {
                        let _ = tx.send(VmEvent::Control(p));
                    })?)
                }
                None => None,
            };
            let hold = backing.uffd.as_ref().map(|(_, h)| h.hold());
            let report = vm.run(bus.clone(), tx, rx, evict, hold)?;
            drop(control);
            if let Some(f) = on_stop {
                f();
            }

            let mut failure = None;
            let mut moved = None;
            let end = match report.end {
                RunEnd::Captured(c) => {
                    match finish_capture(*c, &bus, &backing, quiet) {
                        Ok(()) => moved = Some("VM saved or migrated; stopped".to_string()),
                        Err(e) => failure = Some(e.to_string()),
                    }
                    RunEnd::Terminated
                }
                other => other,
            };

            if let Some(t) = migration_in {
                match t.join() {
                    Ok(Ok(s)) if !quiet => {
                        let r = lines::Received {
                            pages: s.received,
                            zero: s.zero,
                        };
                        println!("{r}")
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => log::error!("post-copy: {e}"),
                    Err(_) => log::error!("post-copy receiver panicked"),
                }
            }
            let uffd_stats = backing.uffd.take().map(|(_, h)| h.stop());
            if !quiet {
                for (index, s) in report.stats.iter().enumerate() {
                    match s {
                        Ok(s) => {
                            println!("{}", stats::apf_line(index, s));
                            println!("{}", stats::kvm_line(index, s));
                        }
                        Err(e) => {
                            let line = lines::ApfLine {
                                vcpu: index,
                                stats: lines::ApfStats::Unavailable(e.to_string()),
                            };
                            println!("{line}")
                        }
                    }
                }
                if let Some(Ok(s)) = &uffd_stats {
                    let e = match &report.evict {
                        Some(Ok(e)) => *e,
                        _ => EvictStats::default(),
                    };
                    let line = lines::UffdLine {
                        faults: s.faults,
                        pages_copied: s.pages_copied,
                        from_source: s.from_source,
                        already_present: s.already_present,
                        restored: s.restored,
                        fetch_peak: s.fetch_peak,
                        evictions: e.evictions,
                        pages_evicted: e.pages_evicted,
                        evict_skipped: e.pause_timeouts,
                    };
                    println!("{line}");
                }
            }
            if let Some(path) = &cgroup {
                // Read while the cgroup still holds guest RAM.
                match crate::memcg::MemcgReport::read(path) {
                    Ok(r) if !quiet => println!("{}", r.line()),
                    Ok(_) => {}
                    Err(e) => log::warn!("cgroup report: {e}"),
                }
            }
            if let Some(Err(e)) = &uffd_stats {
                log::error!("userfaultfd handler: {e}");
            }
            if let Some(Err(e)) = &report.evict {
                log::error!("{e}");
            }
            if report.all_stopped {
                drop(backing);
            } else {
                // A vCPU thread may still be inside KVM_RUN; keep its
                // memory mapped.
                std::mem::forget(backing);
            }

            let (code, msg) = match (end, failure, moved) {
                (_, Some(why), _) => (crate::error::EXIT_FAILURE, why),
                (_, None, Some(msg)) => (0, msg),
                (RunEnd::Shutdown, ..) => (0, "guest powered off".to_string()),
                (RunEnd::Reset, ..) => (0, "guest requested a reset; VM stopped".to_string()),
                (RunEnd::Crash(i), ..) => (
                    crate::error::EXIT_FAILURE,
                    format!("guest reported a crash on vcpu{i}"),
                ),
                (RunEnd::VcpuFailed(i, why), ..) => {
                    (crate::error::EXIT_FAILURE, format!("vcpu{i}: {why}"))
                }
                (RunEnd::Fatal(why), ..) => (crate::error::EXIT_FAILURE, why),
                (RunEnd::Terminated, ..) => (
                    crate::error::EXIT_FAILURE,
                    "terminated by signal".to_string(),
                ),
                (RunEnd::Captured(_), ..) => {
                    (crate::error::EXIT_FAILURE, "capture lost".to_string())
                }
            };
            if code != 0 {
                log::error!("{msg}");
            } else {
                log::info!("{msg}");
            }
            Ok(code)
        }
    }

    /// Reads the control block's `reason` of each vCPU with APF enabled,
    /// from guest RAM: 2 means a PAGE_READY the guest has not ACKed yet.
    fn block_reasons(state: &snapshot::VmState, backing: &Backing) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        let mut page = vec![0u8; backing.page_size];
        for i in state.apf_enabled_vcpus() {
            let Some(a) = state.vcpus[i].apf else {
                continue;
            };
            let ipa = a.block & !63;
            let Some(off) = ipa
                .checked_sub(backing.ram.base)
                .filter(|o| *o < backing.ram.size)
            else {
                continue;
            };
            let ps = backing.page_size as u64;
            if backing.read_page((off / ps) as usize, &mut page).is_ok() {
                let at = (off % ps) as usize;
                let reason =
                    u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
                out.push((i, reason));
            }
        }
        out
    }

    /// Saves or sends a stopped VM, then answers the request.
    fn finish_capture(
        c: Capture,
        bus: &MmioBus<Console>,
        backing: &Backing,
        quiet: bool,
    ) -> Result<(), Error> {
        let Capture {
            pending,
            vcpus,
            gic,
            in_flight,
        } = c;
        let state = snapshot::VmState {
            ram_base: backing.ram.base,
            ram_size: backing.ram.size,
            vcpus,
            gic,
            uart: bus.serial().state(),
        };
        let block_reasons = block_reasons(&state, backing);
        let ready_unacked = block_reasons.iter().filter(|(_, r)| *r == 2).count() as u64;
        let vcpus = state.vcpus.len();
        let to = match &pending.request {
            Request::Snapshot { dir, .. } => {
                save(&state, dir, backing).map(|pages| lines::CaptureTo::Saved {
                    dir: dir.clone(),
                    pages,
                })
            }
            Request::Migrate { to, .. } => {
                send(&state, to, backing).map(|s| lines::CaptureTo::Migrated {
                    to: to.clone(),
                    demanded: s.demanded,
                    pushed: s.pushed,
                    zero: s.zero,
                })
            }
        };
        let result = to.map(|to| lines::Capture {
            to,
            vcpus,
            in_flight,
            ready_unacked,
            block_reasons,
        });
        match &result {
            Ok(capture) => {
                if !quiet {
                    println!("{}", capture.line());
                }
                pending.answer(Ok(capture.to_string()));
            }
            Err(e) => {
                pending.answer(Err(e.to_string()));
            }
        }
        result.map(drop)
    }

    fn save(state: &snapshot::VmState, dir: &Path, backing: &Backing) -> Result<u64, Error> {
        state.save(dir).map_err(LifecycleError::from)?;
        let pages = snapshot::write_memory(
            &dir.join(MEMORY_FILE),
            backing.ram.size,
            backing.page_size,
            |i, buf| backing.read_page(i, buf),
        )
        .map_err(LifecycleError::from)?;
        Ok(pages)
    }

    fn send(
        state: &snapshot::VmState,
        to: &Path,
        backing: &Backing,
    ) -> Result<migrate::SourceStats, Error> {
        let stream = UnixStream::connect(to).map_err(|source| LifecycleError::Socket {
            what: "connecting to",
            path: to.to_path_buf(),
            source,
        })?;
        let bytes = state.encode().map_err(LifecycleError::from)?;
        let stats = migrate::send(
            stream,
            &bytes,
            backing.page_size,
            backing.pages(),
            |i, b| backing.read_page(i, b),
        )
        .map_err(LifecycleError::from)?;
        Ok(stats)
    }

    /// The UART of a restored VM, and its interrupt.
    fn restored_serial(
        state: &snapshot::VmState,
    ) -> Result<(EventFd, Arc<MmioBus<Console>>), Error> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        let hook: serial::LineHook = Box::new(|_: &[u8]| {});
        let serial = SerialDevice::from_state(
            irq.try_clone().map_err(Error::EventFd)?,
            serial::LineTap::new(io::stdout(), hook),
            &state.uart,
        )
        .map_err(|e| LifecycleError::Uart(e.to_string()))?;
        Ok((irq, Arc::new(MmioBus::new(serial))))
    }

    /// Creates the VM of `state` around `backing` and runs it.
    fn run_restored(
        state: &snapshot::VmState,
        backing: Backing,
        (tx, rx): (Sender<VmEvent>, Receiver<VmEvent>),
        target: &Target,
        announce: &str,
        migration_in: Option<JoinHandle<Result<migrate::DestStats, String>>>,
        on_stop: Option<Box<dyn FnOnce()>>,
    ) -> Result<u8, Error> {
        let (irq, bus) = restored_serial(state)?;
        let vm = Vm::restore(
            &RestoreConfig {
                ram: backing.ram,
                apf: target.apf_mode(),
            },
            state,
            backing.mem(),
            irq,
        )?;
        if !target.quiet {
            println!("restore: {announce}");
        }
        Session {
            vm,
            bus,
            tx,
            rx,
            evict: None,
            backing,
            quiet: target.quiet,
            api_socket: target.api_socket.clone(),
            migration_in,
            cgroup: None,
            on_stop,
        }
        .run()
    }

    /// Copies every page not yet served from `file`, in order, beside the
    /// fault handler (which serves demanded pages first); stops early when
    /// `stop` is set. Returns the pages it copied.
    fn spawn_prefetch(
        filler: Filler,
        store: Arc<Mutex<PageStore>>,
        file: File,
        stop: Arc<AtomicBool>,
        copied: Arc<AtomicU64>,
    ) -> io::Result<JoinHandle<Result<(), UffdError>>> {
        thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                let ps = filler.page_size();
                let mut page = vec![0u8; ps];
                let pages = store.lock().unwrap_or_else(PoisonError::into_inner).pages();
                for i in 0..pages {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut st = store.lock().unwrap_or_else(PoisonError::into_inner);
                    if st.is_populated(i) {
                        continue;
                    }
                    uffd::read_file_page(Some(&file), (i * ps) as u64, &mut page)?;
                    filler.fill(i, &page)?;
                    st.mark_populated(i);
                    drop(st);
                    copied.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
    }

    /// `apf-vmm restore`.
    pub fn restore(from: &Path, prefetch: bool, target: &Target) -> Result<u8, Error> {
        let (state, file, warning) =
            load_for_restore(from, target.apf_mode(), target.allow_apf_loss)?;
        if let Some(w) = warning {
            log::warn!("{w}");
        }
        let ram = Region {
            base: state.ram_base,
            size: state.ram_size,
        };
        let (tx, rx) = std::sync::mpsc::channel::<VmEvent>();
        let mut backing = Backing::plain(memory::create_ram(ram)?, ram);
        let (store, filler) = backing.register_uffd(
            target.fetch(),
            PageSource::File(Some(file.try_clone().map_err(LifecycleError::Io)?)),
            Some(file.try_clone().map_err(LifecycleError::Io)?),
            &tx,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let copied = Arc::new(AtomicU64::new(0));
        let prefetcher = if prefetch {
            Some(
                spawn_prefetch(filler, store, file, stop.clone(), copied.clone())
                    .map_err(LifecycleError::Io)?,
            )
        } else {
            None
        };
        let announce = format!(
            "from {} lazily{}",
            from.display(),
            if prefetch { ", with prefetch" } else { "" }
        );
        let quiet = target.quiet;
        let on_stop = prefetcher.map(|p| {
            Box::new(move || {
                stop.store(true, Ordering::Relaxed);
                if let Ok(Err(e)) = p.join() {
                    log::error!("prefetch: {e}");
                }
                if !quiet {
                    let p = lines::Prefetched {
                        pages: copied.load(Ordering::Relaxed),
                    };
                    println!("{p}");
                }
            }) as Box<dyn FnOnce()>
        });
        run_restored(&state, backing, (tx, rx), target, &announce, None, on_stop)
    }

    /// `apf-vmm receive`.
    pub fn receive(listen: &Path, target: &Target) -> Result<u8, Error> {
        let sock_err = |what| {
            move |source| LifecycleError::Socket {
                what,
                path: listen.to_path_buf(),
                source,
            }
        };
        let listener = UnixListener::bind(listen).map_err(sock_err("listening on"))?;
        log::info!("waiting for a migration on {}", listen.display());
        let accepted = listener.accept().map_err(sock_err("accepting on"));
        let _ = std::fs::remove_file(listen);
        let (mut stream, _) = accepted?;
        let (ps, bytes) = migrate::receive_state(&mut stream).map_err(LifecycleError::from)?;
        let state = snapshot::VmState::decode(&bytes, Path::new("the migration stream"))
            .map_err(LifecycleError::from)?;
        let ours = uffd::host_page_size() as usize;
        if ps != ours {
            return Err(LifecycleError::PageSize { theirs: ps, ours }.into());
        }
        if let Some(w) = check_restore(&state, target.apf_mode(), target.allow_apf_loss)? {
            log::warn!("{w}");
        }
        let ram = Region {
            base: state.ram_base,
            size: state.ram_size,
        };
        let pages = (ram.size / ps as u64) as usize;
        let (tx, rx) = std::sync::mpsc::channel::<VmEvent>();
        let mut backing = Backing::plain(memory::create_ram(ram)?, ram);
        let requester = Requester::new(stream.try_clone().map_err(LifecycleError::Io)?, pages);
        let asker = requester.clone();
        let (store, filler) = backing.register_uffd(
            target.fetch(),
            PageSource::Remote(Box::new(move |i| {
                asker.request(i).map(drop).map_err(UffdError::Read)
            })),
            None,
            &tx,
        )?;
        let fatal = tx.clone();
        let receiver = thread::Builder::new()
            .name("postcopy".into())
            .spawn(move || {
                let r = migrate::receive_pages(stream, &requester, ps, pages, |i, page| {
                    let mut st = store.lock().unwrap_or_else(PoisonError::into_inner);
                    filler.fill(i, page).map_err(|e| e.to_string())?;
                    st.mark_populated(i);
                    Ok(())
                })
                .map_err(|e| e.to_string());
                if let Err(e) = &r {
                    // Without the rest of its RAM the guest cannot go on.
                    let _ = fatal.send(VmEvent::Fatal(format!("post-copy: {e}")));
                }
                r
            })
            .map_err(LifecycleError::Io)?;
        run_restored(
            &state,
            backing,
            (tx, rx),
            target,
            "from the migration stream; pages arrive by post-copy",
            Some(receiver),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ApfAttrs, Reg, VcpuState, APF_BLOCK_ENABLED};

    fn state(blocks: &[u64]) -> VmState {
        VmState {
            ram_base: crate::layout::RAM_START,
            ram_size: 64 << 20,
            vcpus: blocks
                .iter()
                .map(|b| VcpuState {
                    mpidr: 0,
                    mp_state: 0,
                    regs: vec![Reg {
                        id: 0x6030_0000_0010_0000,
                        value: vec![0; 8],
                    }],
                    apf: Some(ApfAttrs { irq: 18, block: *b }),
                })
                .collect(),
            gic: vec![],
            uart: Default::default(),
        }
    }

    #[test]
    fn hiding_apf_from_a_guest_that_uses_it_is_refused() {
        let on = state(&[0x4000_1000 | APF_BLOCK_ENABLED, 0]);
        let e = check_restore(&on, ApfMode::Hidden, false).unwrap_err();
        assert!(
            matches!(&e, LifecycleError::ApfLoss { vcpus } if vcpus == &[0]),
            "{e}"
        );
        assert!(e.to_string().contains("--allow-apf-loss"));
        let w = check_restore(&on, ApfMode::Hidden, true).unwrap().unwrap();
        assert!(w.contains("stay asleep"), "{w}");
        assert_eq!(check_restore(&on, ApfMode::On, false).unwrap(), None);
        // No block registered anywhere: nothing to lose.
        let off = state(&[0, 0x4000_1000]);
        assert_eq!(check_restore(&off, ApfMode::Hidden, false).unwrap(), None);
    }

    #[test]
    fn restore_checks_the_directory_before_anything_else() {
        let dir = std::env::temp_dir().join(format!("apf-vmm-lc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = state(&[0x4000_1000 | APF_BLOCK_ENABLED]);
        s.gic.push(crate::snapshot::GicReg {
            group: 1,
            attr: 0,
            value: 0,
        });
        s.save(&dir).unwrap();
        let f = File::create(dir.join(crate::snapshot::MEMORY_FILE)).unwrap();
        f.set_len(s.ram_size).unwrap();
        assert!(load_for_restore(&dir, ApfMode::On, false).is_ok());
        assert!(matches!(
            load_for_restore(&dir, ApfMode::Hidden, false),
            Err(LifecycleError::ApfLoss { .. })
        ));
        // A state of another version.
        let mut bytes = std::fs::read(dir.join(crate::snapshot::STATE_FILE)).unwrap();
        bytes[8] = 7;
        std::fs::write(dir.join(crate::snapshot::STATE_FILE), &bytes).unwrap();
        let e = load_for_restore(&dir, ApfMode::On, false).unwrap_err();
        assert!(e.to_string().contains("version 7"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
