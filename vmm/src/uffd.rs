// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! userfaultfd memory mode: guest RAM pages are served late, as in
//! post-copy migration or a lazy snapshot restore.
//!
//! Guest RAM is registered in MISSING mode. A handler thread reads fault
//! events and fetches each page, which takes the [`Fetch`] latency
//! (`--uffd-latency-us`), then fills it with UFFDIO_COPY: from its saved
//! copy if the evictor dropped it before (see `pagestore` and `evict`),
//! else from the source image (at the same offset as in guest RAM) or with
//! zeros. It records every page it fills as populated. Up to the
//! [`Fetch`] depth (`--uffd-queue-depth`) fetches are in progress at once,
//! as on a disk or a network page server with that many requests
//! outstanding; further faults wait for a slot. The default depth, 1,
//! serves one page at a time.
//!
//! A [`FetchHold`] makes the handler keep back the faults of threads that
//! are not the VMM's (KVM's asynchronous page fault workers) while it goes
//! on serving the VMM's own (a vCPU in a synchronous fault), so that the
//! control socket can stop the VM with faults reliably in flight.
//!
//! This uses the raw userfaultfd ABI through libc: the `userfaultfd` crate
//! builds its bindings with bindgen and a C compiler for the target, which
//! is not available for aarch64-unknown-linux-musl here. The ioctl numbers
//! use the generic Linux encoding, identical on arm64 and x86_64.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::pagestore::{PageStore, Saved};

/// `UFFD_API`.
const UFFD_API: u64 = 0xaa;
/// `UFFDIO_REGISTER_MODE_MISSING`.
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFD_FEATURE_THREAD_ID`: fault events name the faulting thread.
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// `UFFD_EVENT_PAGEFAULT`.
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `_UFFDIO_COPY`: bit in `uffdio_register.ioctls`.
const UFFDIO_COPY_NR: u64 = 0x03;

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// Linux's generic `_IOC(dir, 0xAA, nr, size)`.
const fn uffd_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (UFFD_API << 8) | nr
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` (32 bytes). For a page fault, `arg[0]` is the fault
/// flags, `arg[1]` the faulting address and the low half of `arg[2]` the
/// faulting thread's id.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg: [u64; 3],
}

const UFFDIO_API: u64 = uffd_ioc(IOC_READ | IOC_WRITE, 0x3f, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = uffd_ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<UffdioRegister>());
const UFFDIO_COPY: u64 = uffd_ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO_COPY_NR,
    size_of::<UffdioCopy>(),
);

/// userfaultfd errors.
#[derive(Debug, Error)]
pub enum UffdError {
    /// The userfaultfd syscall failed.
    #[error(
        "userfaultfd(): {0} (needs CONFIG_USERFAULTFD and, for non-root, vm.unprivileged_userfaultfd=1)"
    )]
    Create(io::Error),
    /// The API handshake failed.
    #[error("UFFDIO_API: {0}")]
    Api(io::Error),
    /// Registering guest RAM failed.
    #[error("UFFDIO_REGISTER of {len:#x} bytes at {start:#x}: {source}")]
    Register {
        /// Host address.
        start: u64,
        /// Length.
        len: u64,
        /// Cause.
        source: io::Error,
    },
    /// The kernel does not offer UFFDIO_COPY on the range.
    #[error("UFFDIO_COPY is not available on the registered range")]
    NoCopy,
    /// The range is not page aligned.
    #[error("range {start:#x}+{len:#x} is not aligned to the {page_size} byte page size")]
    Unaligned {
        /// Host address.
        start: u64,
        /// Length.
        len: u64,
        /// Host page size.
        page_size: u64,
    },
    /// Waiting for or reading fault events failed.
    #[error("reading userfaultfd events: {0}")]
    Read(io::Error),
    /// Reading the source image failed.
    #[error("reading the uffd source image at offset {offset:#x}: {source}")]
    Source {
        /// Offset in the image.
        offset: u64,
        /// Cause.
        source: io::Error,
    },
    /// Filling a page failed.
    #[error("UFFDIO_COPY to {addr:#x}: {source}")]
    Copy {
        /// Host address of the page.
        addr: u64,
        /// Cause.
        source: io::Error,
    },
    /// A fault outside the registered range (cannot happen with one range).
    #[error("fault at {0:#x} outside the registered range")]
    OutOfRange(u64),
    /// The handler thread could not be started.
    #[error("starting the userfaultfd handler thread: {0}")]
    Spawn(io::Error),
    /// The handler thread panicked.
    #[error("the userfaultfd handler thread panicked")]
    Panicked,
}

/// Counters kept by the handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdStats {
    /// Page fault events received.
    pub faults: u64,
    /// Pages filled with UFFDIO_COPY.
    pub pages_copied: u64,
    /// Of those, pages with at least one byte from the source image.
    pub from_source: u64,
    /// Faults for pages that were already filled (EEXIST).
    pub already_present: u64,
    /// Pages filled from the copy saved when they were evicted.
    pub restored: u64,
    /// Faults a [`FetchHold`] kept waiting.
    pub held: u64,
    /// The most fetches that were in progress at once.
    pub fetch_peak: u64,
}

/// How long a page takes to fetch, and how many fetches may be in
/// progress at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// From the fault to the page being filled.
    pub latency: Duration,
    /// Fetches in progress at once, at most.
    pub depth: NonZeroUsize,
}

impl Fetch {
    /// One fetch at a time, each taking `latency`.
    pub fn serial(latency: Duration) -> Fetch {
        Fetch {
            latency,
            depth: NonZeroUsize::MIN,
        }
    }
}

/// Host page size.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory safety requirements.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(ps).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// A userfaultfd with one registered range.
pub struct Userfault {
    fd: Arc<OwnedFd>,
    start: u64,
    len: u64,
    page_size: u64,
}

/// Where the handler gets the pages it serves.
pub enum PageSource {
    /// A file laid out like guest RAM (a snapshot's memory file); zeros
    /// past its end, or everywhere without one (a boot).
    File(Option<File>),
    /// Another process (post-copy): the handler only asks, with the page's
    /// index, after the latency; a [`Filler`] installs the page when it
    /// arrives, which wakes the faulting thread.
    Remote(Box<dyn FnMut(usize) -> Result<(), UffdError> + Send>),
}

/// Installs pages into the registered range from any thread (UFFDIO_COPY
/// wakes whoever waits on them).
#[derive(Clone)]
pub struct Filler {
    fd: Arc<OwnedFd>,
    start: u64,
    len: u64,
    page_size: u64,
}

impl Filler {
    /// Page size of the range.
    pub fn page_size(&self) -> usize {
        self.page_size as usize
    }

    /// Copies one page from `src` to page `index` of the range. Returns
    /// `Ok(false)` if the page was already there.
    pub fn fill(&self, index: usize, src: &[u8]) -> Result<bool, UffdError> {
        let ps = self.page_size;
        let offset = index as u64 * ps;
        if offset >= self.len || src.len() as u64 != ps {
            return Err(UffdError::OutOfRange(self.start + offset));
        }
        // SAFETY: `src` is valid for one page (checked above) during the
        // call; the destination is inside the registered range.
        unsafe { copy_page(&self.fd, self.start + offset, src.as_ptr(), ps) }
    }
}

/// UFFDIO_COPY of `len` bytes from `src` to `dst`; `Ok(false)` on EEXIST.
///
/// # Safety
///
/// `src` must be valid for reads of `len` bytes for the call.
unsafe fn copy_page(fd: &OwnedFd, dst: u64, src: *const u8, len: u64) -> Result<bool, UffdError> {
    let mut copied: u64 = 0;
    while copied < len {
        let mut copy = UffdioCopy {
            dst: dst + copied,
            src: src as u64 + copied,
            len: len - copied,
            mode: 0,
            copy: 0,
        };
        // SAFETY: `src` is readable for `len` bytes (the caller's
        // contract); the kernel checks that `dst` lies in the registered
        // range. The struct is valid and writable for the call.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_COPY as _, &mut copy) };
        if ret == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Another fault, or the other filler, was first.
            Some(libc::EEXIST) => return Ok(false),
            // The mapping changed under us: retry the rest.
            Some(libc::EAGAIN) if copy.copy > 0 => copied += copy.copy as u64,
            Some(libc::EAGAIN) => {}
            _ => {
                return Err(UffdError::Copy {
                    addr: dst,
                    source: err,
                })
            }
        }
    }
    Ok(true)
}

impl Userfault {
    /// Creates a userfaultfd and registers `[start, start + len)` of this
    /// process's address space in MISSING mode. The range must be mapped,
    /// anonymous and page aligned.
    pub fn register(start: *mut u8, len: u64) -> Result<Userfault, UffdError> {
        let start = start as u64;
        let page_size = host_page_size();
        if start % page_size != 0 || len % page_size != 0 || len == 0 {
            return Err(UffdError::Unaligned {
                start,
                len,
                page_size,
            });
        }

        // SAFETY: plain syscall with integer flags; the result is checked.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(UffdError::Create(io::Error::last_os_error()));
        }
        let raw =
            i32::try_from(raw).map_err(|_| UffdError::Create(io::ErrorKind::InvalidData.into()))?;
        // SAFETY: `raw` is a new descriptor owned by nobody else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });

        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_THREAD_ID,
            ..Default::default()
        };
        // SAFETY: `api` is a valid, writable uffdio_api for the duration of
        // the call, which is what UFFDIO_API reads and writes.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) };
        if ret < 0 {
            return Err(UffdError::Api(io::Error::last_os_error()));
        }

        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: `reg` is a valid, writable uffdio_register for the call.
        // Registering only changes how faults in the range are resolved.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg) };
        if ret < 0 {
            return Err(UffdError::Register {
                start,
                len,
                source: io::Error::last_os_error(),
            });
        }
        if reg.ioctls & (1 << UFFDIO_COPY_NR) == 0 {
            return Err(UffdError::NoCopy);
        }
        Ok(Userfault {
            fd,
            start,
            len,
            page_size,
        })
    }

    /// A [`Filler`] for the registered range.
    pub fn filler(&self) -> Filler {
        Filler {
            fd: self.fd.clone(),
            start: self.start,
            len: self.len,
            page_size: self.page_size,
        }
    }

    /// Starts the handler thread. `store` must cover the registered range
    /// with the same page size. `on_fatal` is called from that thread if it
    /// has to give up; the fd is then closed, which lets blocked faults
    /// complete with zero pages, so nothing stays stuck.
    pub fn spawn_handler<F>(
        self,
        fetch: Fetch,
        source: PageSource,
        store: Arc<Mutex<PageStore>>,
        on_fatal: F,
    ) -> Result<UffdHandler, UffdError>
    where
        F: FnOnce(&UffdError) + Send + 'static,
    {
        self.spawn_with(fetch, source, store, foreign_thread, on_fatal)
    }

    /// [`Userfault::spawn_handler`], with `foreign` telling which faulting
    /// threads a [`FetchHold`] keeps waiting.
    fn spawn_with<F>(
        self,
        fetch: Fetch,
        source: PageSource,
        store: Arc<Mutex<PageStore>>,
        foreign: fn(u32) -> bool,
        on_fatal: F,
    ) -> Result<UffdHandler, UffdError>
    where
        F: FnOnce(&UffdError) + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(UffdError::Spawn)?;
        let stop_thread = stop.try_clone().map_err(UffdError::Spawn)?;
        let hold = FetchHold::new().map_err(UffdError::Spawn)?;
        let server = Server {
            uffd: self,
            fetch,
            source,
            store,
            stats: UffdStats::default(),
            hold: hold.clone(),
            foreign,
            held: VecDeque::new(),
            fetching: VecDeque::new(),
            waiting: VecDeque::new(),
        };
        let thread = thread::Builder::new()
            .name("uffd".into())
            .spawn(move || {
                let result = server.run(&stop_thread);
                if let Err(e) = &result {
                    on_fatal(e);
                }
                result
            })
            .map_err(UffdError::Spawn)?;
        Ok(UffdHandler { stop, thread, hold })
    }
}

/// Whether thread `tid` is not one of this process's: then it is a kernel
/// worker fetching a page for KVM's asynchronous page fault (or another
/// process reading ours).
fn foreign_thread(tid: u32) -> bool {
    let Ok(tid) = libc::pid_t::try_from(tid) else {
        return true;
    };
    // SAFETY: signal 0 only checks that `tid` is a thread of our group.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) != 0 }
}

/// The running handler thread.
pub struct UffdHandler {
    stop: EventFd,
    thread: JoinHandle<Result<UffdStats, UffdError>>,
    hold: FetchHold,
}

impl UffdHandler {
    /// Stops the thread and returns its counters. Held faults are served
    /// first.
    pub fn stop(self) -> Result<UffdStats, UffdError> {
        self.hold.set(|c| c.held = false);
        // If the write fails the thread has already ended; join tells why.
        let _ = self.stop.write(1);
        self.thread.join().map_err(|_| UffdError::Panicked)?
    }

    /// The handler's hold.
    pub fn hold(&self) -> FetchHold {
        self.hold.clone()
    }
}

/// What a [`FetchHold`] asks of the handler.
#[derive(Debug, Default)]
struct HoldCtl {
    /// Keep foreign faults waiting.
    held: bool,
    /// Held faults to serve nonetheless, oldest first.
    release: usize,
}

/// Keeps the faults of foreign threads (KVM's asynchronous fetches)
/// waiting in the handler while it is held; the VMM's own threads are
/// served all along, so a vCPU in a synchronous fault never stays stuck.
#[derive(Clone, Debug)]
pub struct FetchHold(Arc<HoldShared>);

#[derive(Debug)]
struct HoldShared {
    ctl: Mutex<HoldCtl>,
    /// Wakes the handler when `ctl` changes.
    wake: EventFd,
    /// Faults held now.
    waiting: AtomicUsize,
}

impl FetchHold {
    fn new() -> io::Result<FetchHold> {
        Ok(FetchHold(Arc::new(HoldShared {
            ctl: Mutex::new(HoldCtl::default()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            waiting: AtomicUsize::new(0),
        })))
    }

    fn ctl(&self) -> MutexGuard<'_, HoldCtl> {
        self.0.ctl.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, f: impl FnOnce(&mut HoldCtl)) {
        f(&mut self.ctl());
        // Only fails if the counter would overflow; the handler then has a
        // wake-up pending anyway.
        let _ = self.0.wake.write(1);
    }

    /// Faults held now.
    pub fn waiting(&self) -> usize {
        self.0.waiting.load(Ordering::Relaxed)
    }

    /// Holds foreign faults until the guard is dropped, which serves them.
    pub fn hold(&self) -> HoldGuard<'_> {
        self.set(|c| c.held = true);
        HoldGuard(self)
    }

    /// Serves the oldest held fault (or the next one to come).
    pub fn release_one(&self) {
        self.set(|c| c.release += 1);
    }
}

/// See [`FetchHold::hold`].
#[must_use = "the hold ends when the guard is dropped"]
pub struct HoldGuard<'a>(&'a FetchHold);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.0.set(|c| *c = HoldCtl::default());
    }
}

struct Server {
    uffd: Userfault,
    fetch: Fetch,
    source: PageSource,
    store: Arc<Mutex<PageStore>>,
    stats: UffdStats,
    hold: FetchHold,
    /// Which faulting threads the hold applies to.
    foreign: fn(u32) -> bool,
    /// Addresses of held faults, oldest first.
    held: VecDeque<u64>,
    /// Fetches in progress: when each is done, and its address. All take
    /// the same latency, so the first is done first.
    fetching: VecDeque<(Instant, u64)>,
    /// Faults waiting for a fetch slot, oldest first.
    waiting: VecDeque<u64>,
}

impl Server {
    fn run(mut self, stop: &EventFd) -> Result<UffdStats, UffdError> {
        let page_size = usize::try_from(self.uffd.page_size).unwrap_or(4096);
        let mut page = vec![0u8; page_size];
        let mut msgs = [UffdMsg::default(); 16];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.hold.0.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Until the next fetch is done, or for an event.
            let timeout = self.fetching.front().map(|(done, _)| {
                let left = done.saturating_duration_since(Instant::now());
                libc::timespec {
                    tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                }
            });
            let timeout_ptr = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `fds` is a valid array of three pollfd, and
            // `timeout_ptr` null or pointing to `timeout`, for the call; a
            // null signal mask leaves the thread's as it is.
            let ret = unsafe { libc::ppoll(fds.as_mut_ptr(), 3, timeout_ptr, std::ptr::null()) };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(UffdError::Read(err));
            }
            if fds[1].revents != 0 {
                self.serve_held(&mut page)?;
                self.drain(&mut page)?;
                return Ok(self.stats);
            }
            if fds[2].revents != 0 {
                // The count is of no interest, only that the hold changed.
                let _ = self.hold.0.wake.read();
                self.serve_held(&mut page)?;
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                return Err(UffdError::Read(io::ErrorKind::BrokenPipe.into()));
            }
            if fds[0].revents & libc::POLLIN == 0 {
                self.complete_due(&mut page)?;
                continue;
            }

            // SAFETY: `msgs` is writable for its full size, and any byte
            // pattern is a valid UffdMsg (plain integers).
            let n = unsafe {
                libc::read(
                    self.uffd.fd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    size_of_val(&msgs),
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                    _ => return Err(UffdError::Read(err)),
                }
            }
            let count = n as usize / size_of::<UffdMsg>();
            for msg in &msgs[..count] {
                if msg.event != UFFD_EVENT_PAGEFAULT {
                    continue;
                }
                self.stats.faults += 1;
                let tid = msg.arg[2] as u32;
                if self.hold.ctl().held && (self.foreign)(tid) {
                    self.held.push_back(msg.arg[1]);
                    self.hold
                        .0
                        .waiting
                        .store(self.held.len(), Ordering::Relaxed);
                } else {
                    self.start(msg.arg[1])?;
                }
            }
            self.serve_held(&mut page)?;
            self.complete_due(&mut page)?;
        }
    }

    /// Starts fetching the page of `addr`, or queues it behind the
    /// fetches in progress if all slots are taken. An address outside the
    /// range fails here, before any latency is spent on it.
    fn start(&mut self, addr: u64) -> Result<(), UffdError> {
        if addr
            .checked_sub(self.uffd.start)
            .is_none_or(|o| o >= self.uffd.len)
        {
            return Err(UffdError::OutOfRange(addr));
        }
        self.waiting.push_back(addr);
        self.start_waiting();
        Ok(())
    }

    /// Starts the waiting fetches that have a slot.
    fn start_waiting(&mut self) {
        while self.fetching.len() < self.fetch.depth.get() {
            let Some(addr) = self.waiting.pop_front() else {
                break;
            };
            self.fetching
                .push_back((Instant::now() + self.fetch.latency, addr));
            self.stats.fetch_peak = self.stats.fetch_peak.max(self.fetching.len() as u64);
        }
    }

    /// Fills the pages whose fetch is done, and starts the waiting ones
    /// that their slots free.
    fn complete_due(&mut self, page: &mut [u8]) -> Result<(), UffdError> {
        while let Some(&(done, addr)) = self.fetching.front() {
            if done > Instant::now() {
                break;
            }
            self.fetching.pop_front();
            self.fill(addr, page)?;
            self.start_waiting();
        }
        Ok(())
    }

    /// Completes every fetch, started or waiting, sleeping as they need.
    fn drain(&mut self, page: &mut [u8]) -> Result<(), UffdError> {
        while let Some(&(done, _)) = self.fetching.front() {
            thread::sleep(done.saturating_duration_since(Instant::now()));
            self.complete_due(page)?;
        }
        Ok(())
    }

    /// Serves the held faults that the hold lets go.
    fn serve_held(&mut self, page: &mut [u8]) -> Result<(), UffdError> {
        while !self.held.is_empty() {
            {
                let mut ctl = self.hold.ctl();
                if ctl.held && ctl.release == 0 {
                    break;
                }
                ctl.release = ctl.release.saturating_sub(1);
            }
            if let Some(addr) = self.held.pop_front() {
                self.hold
                    .0
                    .waiting
                    .store(self.held.len(), Ordering::Relaxed);
                self.stats.held += 1;
                self.start(addr)?;
                self.complete_due(page)?;
            }
        }
        Ok(())
    }

    /// Fills the page of `addr`, whose fetch is done.
    fn fill(&mut self, addr: u64, page: &mut [u8]) -> Result<(), UffdError> {
        let ps = self.uffd.page_size;
        let page_addr = addr & !(ps - 1);
        let offset = page_addr
            .checked_sub(self.uffd.start)
            .filter(|o| *o < self.uffd.len)
            .ok_or(UffdError::OutOfRange(addr))?;

        if let PageSource::Remote(ask) = &mut self.source {
            let index = (offset / ps) as usize;
            let present = self
                .store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_populated(index);
            if present {
                self.stats.already_present += 1;
            } else {
                ask(index)?;
            }
            return Ok(());
        }

        // Held until the page is in and marked, so that the evictor never
        // sees a page as populated before it is mapped, nor drops one
        // while it is being filled. (The store's state stays consistent
        // even if the evictor panicked while holding the lock.)
        let store = self.store.clone();
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        let index = store
            .page_index(offset)
            .ok_or(UffdError::OutOfRange(addr))?;

        let mut from_source = false;
        let src_addr = match store.saved(index) {
            Saved::Copy(saved) => saved,
            Saved::None => {
                from_source = self.read_source(offset, page)?;
                page.as_ptr()
            }
        };
        // SAFETY: `src_addr` points into `page` or into the saved copy in
        // the store (locked above), both valid for one page.
        let fresh = unsafe { copy_page(&self.uffd.fd, page_addr, src_addr, ps) }?;
        store.mark_populated(index);
        if !fresh {
            self.stats.already_present += 1;
            return Ok(());
        }
        self.stats.pages_copied += 1;
        if from_source {
            self.stats.from_source += 1;
        }
        if src_addr != page.as_ptr() {
            self.stats.restored += 1;
        }
        Ok(())
    }

    /// Fills `page` from the source image at `offset`, zeros past its end
    /// (or all zeros without one). Returns whether any byte came from it.
    fn read_source(&self, offset: u64, page: &mut [u8]) -> Result<bool, UffdError> {
        match &self.source {
            PageSource::File(f) => read_file_page(f.as_ref(), offset, page),
            PageSource::Remote(_) => Ok(false),
        }
    }
}

/// Fills `page` from `file` at `offset`, zeros past its end (or all zeros
/// without a file). Returns whether any byte came from the file.
pub fn read_file_page(
    file: Option<&File>,
    offset: u64,
    page: &mut [u8],
) -> Result<bool, UffdError> {
    page.fill(0);
    let mut from_source = false;
    if let Some(src) = file {
        let mut done = 0;
        while done < page.len() {
            match src.read_at(&mut page[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    from_source = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(UffdError::Source { offset, source }),
            }
        }
    }
    Ok(from_source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Anon;
    use std::time::Instant;

    /// A page store for the whole of `mem`.
    fn store_for(mem: &Anon) -> Arc<Mutex<PageStore>> {
        // SAFETY: every test keeps `mem` mapped until after the handler
        // and the store are gone.
        let s = unsafe { PageStore::new(mem.ptr, mem.len as u64, host_page_size()) }.unwrap();
        Arc::new(Mutex::new(s))
    }

    #[test]
    fn abi_sizes_and_numbers() {
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioCopy>(), 40);
        assert_eq!(size_of::<UffdMsg>(), 32);
        // Values of the macros in <linux/userfaultfd.h>.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
    }

    fn temp_file(name: &str, data: &[u8]) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("apf-vmm-uffd-{}-{name}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        let f = File::open(&path).unwrap();
        (path, f)
    }

    #[test]
    fn rejects_unaligned_range() {
        let mem = Anon::new(4 * 4096);
        // SAFETY: one byte into a live mapping.
        let odd = unsafe { mem.ptr.add(1) };
        assert!(matches!(
            Userfault::register(odd, 4096),
            Err(UffdError::Unaligned { .. })
        ));
    }

    #[test]
    fn serves_pages_from_source_then_zeros() {
        let ps = host_page_size() as usize;
        let pages = 8;
        let mem = Anon::new(ps * pages);

        // 1.5 pages of a recognisable pattern.
        let pattern: Vec<u8> = (0..ps + ps / 2).map(|i| (i % 251) as u8 + 1).collect();
        let (path, src) = temp_file("src", &pattern);

        let uffd = Userfault::register(mem.ptr, (ps * pages) as u64).expect("userfaultfd");
        let fatal = Arc::new(Mutex::new(None));
        let fatal2 = fatal.clone();
        let handler = uffd
            .spawn_handler(
                Fetch::serial(Duration::ZERO),
                PageSource::File(Some(src)),
                store_for(&mem),
                move |e| {
                    *fatal2.lock().unwrap() = Some(e.to_string());
                },
            )
            .unwrap();

        assert_eq!(mem.read_byte(0), pattern[0]);
        assert_eq!(mem.read_byte(ps - 1), pattern[ps - 1]);
        assert_eq!(mem.read_byte(ps + 7), pattern[ps + 7]);
        assert_eq!(mem.read_byte(ps + ps / 2), 0, "past the end of the source");
        assert_eq!(mem.read_byte(5 * ps + 3), 0);

        let stats = handler.stop().unwrap();
        assert!(fatal.lock().unwrap().is_none());
        assert_eq!(stats.pages_copied, 3);
        assert_eq!(stats.from_source, 2);
        assert_eq!(stats.faults, 3);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn own_threads_are_ours() {
        // SAFETY: gettid has no requirements.
        let me = unsafe { libc::gettid() } as u32;
        assert!(!foreign_thread(me));
        assert!(foreign_thread(1) || std::process::id() == 1);
    }

    #[test]
    fn hold_keeps_foreign_faults_until_released() {
        let ps = host_page_size() as usize;
        let mem = Arc::new(Anon::new(ps * 4));
        let uffd = Userfault::register(mem.ptr, (ps * 4) as u64).expect("userfaultfd");
        // Every faulting thread counts as foreign here.
        let handler = uffd
            .spawn_with(
                Fetch::serial(Duration::ZERO),
                PageSource::File(None),
                store_for(&mem),
                |_| true,
                |_| {},
            )
            .unwrap();
        let hold = handler.hold();
        let touch = |page: usize| {
            let (tx, rx) = std::sync::mpsc::channel();
            let mem = mem.clone();
            thread::spawn(move || tx.send(mem.read_byte(page * ps)).unwrap());
            rx
        };
        {
            let _held = hold.hold();
            let first = touch(0);
            let second = touch(1);
            let wait = Duration::from_millis(300);
            assert!(first.recv_timeout(wait).is_err(), "served while held");
            assert!(second.recv_timeout(wait).is_err(), "served while held");
            hold.release_one();
            // Either fault may have reached the handler first.
            let got = loop {
                if let Ok(b) = first.try_recv() {
                    break (b, second);
                }
                if let Ok(b) = second.try_recv() {
                    break (b, first);
                }
                thread::yield_now();
            };
            assert_eq!(got.0, 0);
            assert!(got.1.recv_timeout(wait).is_err(), "released two");
            // Dropping the guard lets the other one go.
            drop(_held);
            assert_eq!(got.1.recv().unwrap(), 0);
        }
        let stats = handler.stop().unwrap();
        assert_eq!(stats.held, 2);
        assert_eq!(stats.pages_copied, 2);
    }

    /// A handler over all of `mem` that serves zero pages, or the copies
    /// `store` saved, each after `latency`.
    fn handler_over(mem: &Anon, latency: Duration, store: Arc<Mutex<PageStore>>) -> UffdHandler {
        depth_handler_over(mem, Fetch::serial(latency), store)
    }

    fn depth_handler_over(mem: &Anon, fetch: Fetch, store: Arc<Mutex<PageStore>>) -> UffdHandler {
        let uffd = Userfault::register(mem.ptr, mem.len as u64).expect("userfaultfd");
        uffd.spawn_handler(fetch, PageSource::File(None), store, |_| {})
            .unwrap()
    }

    /// `threads` threads fault on pages 0, 1, ... of `mem` at once, each
    /// after a barrier; returns the handler's counters.
    fn concurrent_faults(mem: Arc<Anon>, fetch: Fetch, threads: usize) -> UffdStats {
        let ps = host_page_size() as usize;
        let handler = depth_handler_over(&mem, fetch, store_for(&mem));
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let touchers: Vec<_> = (0..threads)
            .map(|p| {
                let (mem, barrier) = (mem.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    mem.read_byte(p * ps)
                })
            })
            .collect();
        for t in touchers {
            assert_eq!(t.join().unwrap(), 0);
        }
        handler.stop().unwrap()
    }

    #[test]
    fn fetches_overlap_up_to_the_depth() {
        let ps = host_page_size() as usize;
        // A latency far above the time the threads take to fault, so
        // that every fault arrives while the first fetch is in progress.
        let latency = Duration::from_millis(500);
        let deep = Fetch {
            latency,
            depth: NonZeroUsize::new(3).unwrap(),
        };
        let stats = concurrent_faults(Arc::new(Anon::new(ps * 4)), deep, 4);
        assert_eq!((stats.faults, stats.pages_copied), (4, 4));
        assert_eq!(stats.fetch_peak, 3, "the fourth fault waits for a slot");
        let stats = concurrent_faults(Arc::new(Anon::new(ps * 4)), Fetch::serial(latency), 2);
        assert_eq!((stats.pages_copied, stats.fetch_peak), (2, 1));
    }

    #[test]
    fn hold_serves_own_threads() {
        let ps = host_page_size() as usize;
        let mem = Anon::new(ps * 2);
        let handler = handler_over(&mem, Duration::ZERO, store_for(&mem));
        let hold = handler.hold();
        let held = hold.hold();
        assert_eq!(mem.read_byte(ps), 0);
        drop(held);
        let stats = handler.stop().unwrap();
        assert_eq!((stats.held, stats.pages_copied), (0, 1));
    }

    #[test]
    fn latency_is_applied_per_page() {
        let ps = host_page_size() as usize;
        let mem = Anon::new(ps * 4);
        let handler = handler_over(&mem, Duration::from_millis(30), store_for(&mem));
        let t = Instant::now();
        for p in 0..3 {
            assert_eq!(mem.read_byte(p * ps), 0);
        }
        // Touching a served page again does not fault.
        assert_eq!(mem.read_byte(0), 0);
        let elapsed = t.elapsed();
        let stats = handler.stop().unwrap();
        assert!(
            elapsed >= Duration::from_millis(90),
            "took only {elapsed:?}"
        );
        assert_eq!(stats.pages_copied, 3);
        assert_eq!(stats.from_source, 0);
    }

    #[test]
    fn evicted_pages_come_back_intact() {
        let ps = host_page_size() as usize;
        let pages = 32;
        let mem = Anon::new(ps * pages);
        // Written before registration, like the kernel image: resident,
        // hence populated from the start.
        mem.write_byte(0, 0xaa);

        let store = store_for(&mem);
        let handler = handler_over(&mem, Duration::ZERO, store.clone());

        // First touches fault and get zero pages; then the data goes in.
        for p in 1..20 {
            mem.write_byte(p * ps + 17, p as u8);
        }
        assert_eq!(store.lock().unwrap().populated_count(), 20);

        for round in 0..3u8 {
            let evicted = store.lock().unwrap().evict().unwrap();
            assert_eq!(evicted, 20, "round {round}");
            assert!(mem.resident().iter().all(|r| !r), "all dropped");
            // Each read is a MISSING fault served from the saved copy,
            // which holds what was written before this eviction.
            assert_eq!(mem.read_byte(0), 0xaa);
            for p in 1..20 {
                assert_eq!(mem.read_byte(p * ps + 17), p as u8 + round, "page {p}");
                mem.write_byte(p * ps + 17, p as u8 + round + 1);
            }
        }
        // A page never touched is zero-filled, not restored.
        assert_eq!(mem.read_byte(25 * ps), 0);

        let stats = handler.stop().unwrap();
        let counts = store.lock().unwrap().counts();
        assert_eq!(counts.evictions, 3);
        assert_eq!(counts.pages_evicted, 60);
        assert_eq!(stats.already_present, 0);
        assert_eq!(stats.faults, 19 + 3 * 20 + 1);
        assert_eq!(stats.pages_copied, stats.faults);
        assert_eq!(stats.restored, 60);
        assert_eq!(stats.from_source, 0);
    }

    #[test]
    fn stop_without_faults() {
        let ps = host_page_size() as usize;
        let mem = Anon::new(ps);
        let handler = handler_over(&mem, Duration::ZERO, store_for(&mem));
        assert_eq!(handler.stop().unwrap(), UffdStats::default());
    }
}
