// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The userfaultfd evictor (`--uffd-evict-ms`): every interval it pauses
//! the vCPUs, saves and drops every populated page of guest RAM (see
//! `pagestore`), and resumes them. The guest's next access to each page is
//! a MISSING fault, served from the saved copy after `--uffd-latency-us`:
//! a repeated snapshot restore or post-copy migration with the data intact.
//!
//! A pass can also be requested at any time through an [`EvictRequester`]:
//! the benchmark's guest asks for one on its console (see `serial`) before
//! each measured round, and is told when it is done.
//!
//! Pausing is behind the `VcpuPause` trait so that the loop runs on any
//! host in tests; the VM provides the KVM one.

use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use thiserror::Error;

use crate::pagestore::{PageStore, PageStoreError};
use crate::pause::PauseError;

/// Evictor errors.
#[derive(Debug, Error)]
pub enum EvictError {
    /// Saving or dropping pages failed.
    #[error("uffd eviction: {0}")]
    Store(#[from] PageStoreError),
    /// The thread could not be started.
    #[error("starting the uffd evictor thread: {0}")]
    Spawn(io::Error),
    /// The thread panicked.
    #[error("the uffd evictor thread panicked")]
    Panicked,
}

/// Stops and restarts every vCPU around an eviction.
pub trait VcpuPause: Send + 'static {
    /// Returns once no vCPU is inside KVM_RUN; on error nothing is paused.
    fn pause(&self) -> Result<(), PauseError>;
    /// Lets the vCPUs run again.
    fn resume(&self);
}

/// Counters of the evictor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictStats {
    /// Eviction passes done.
    pub evictions: u64,
    /// Pages saved and dropped over all passes.
    pub pages_evicted: u64,
    /// Passes skipped because the vCPUs did not pause in time.
    pub pause_timeouts: u64,
    /// Passes done on request (included in `evictions` unless skipped).
    pub requested: u64,
}

/// What the evictor thread is told.
#[derive(Debug)]
pub enum EvictMsg {
    /// Do a pass now, then call the `on_done` the evictor was started with.
    Now,
    /// End the thread.
    Stop,
}

/// The channel of an evictor that is yet to start: requests can be made
/// before it runs (they wait for it), and it starts with the receiver.
pub struct EvictChannel {
    tx: Sender<EvictMsg>,
    rx: Receiver<EvictMsg>,
}

impl EvictChannel {
    /// Creates the channel.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        EvictChannel { tx, rx }
    }

    /// Returns a handle that requests passes.
    pub fn requester(&self) -> EvictRequester {
        EvictRequester(self.tx.clone())
    }
}

impl Default for EvictChannel {
    fn default() -> Self {
        Self::new()
    }
}

/// Requests an eviction pass from another thread.
#[derive(Clone)]
pub struct EvictRequester(Sender<EvictMsg>);

impl EvictRequester {
    /// Asks for a pass as soon as the evictor can; never blocks. A request
    /// after the evictor ended is dropped.
    pub fn request(&self) {
        let _ = self.0.send(EvictMsg::Now);
    }
}

/// The running evictor thread.
pub struct Evictor {
    stop: Sender<EvictMsg>,
    thread: JoinHandle<Result<EvictStats, EvictError>>,
}

/// Starts the evictor: a pass every `interval`, and one whenever
/// `channel` asks, after which `on_done` is called. `on_fatal` is called
/// from its thread if an eviction fails; the thread then ends.
pub fn spawn<P, F, D>(
    interval: Duration,
    store: Arc<Mutex<PageStore>>,
    pauser: P,
    channel: EvictChannel,
    on_done: D,
    on_fatal: F,
) -> Result<Evictor, EvictError>
where
    P: VcpuPause,
    F: FnOnce(&EvictError) + Send + 'static,
    D: Fn() + Send + 'static,
{
    let EvictChannel { tx: stop, rx } = channel;
    let thread = thread::Builder::new()
        .name("uffd-evict".into())
        .spawn(move || {
            let mut stats = EvictStats::default();
            loop {
                let requested = match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => false,
                    Ok(EvictMsg::Now) => true,
                    Ok(EvictMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(stats),
                };
                if let Err(e) = evict_once(&store, &pauser, &mut stats) {
                    on_fatal(&e);
                    return Err(e);
                }
                if requested {
                    stats.requested += 1;
                    on_done();
                }
            }
        })
        .map_err(EvictError::Spawn)?;
    Ok(Evictor { stop, thread })
}

/// One pass: pause, save and drop, resume.
fn evict_once<P: VcpuPause>(
    store: &Mutex<PageStore>,
    pauser: &P,
    stats: &mut EvictStats,
) -> Result<(), EvictError> {
    if let Err(e) = pauser.pause() {
        stats.pause_timeouts += 1;
        log::warn!("uffd eviction skipped: {e}");
        return Ok(());
    }
    let result = {
        // The handler only marks pages and serves copies; its state is
        // consistent even if it panicked while holding the lock.
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        s.evict()
    };
    pauser.resume();
    let pages = result?;
    stats.evictions += 1;
    stats.pages_evicted += pages;
    Ok(())
}

impl Evictor {
    /// Stops the thread (after the pass in progress, if any) and returns
    /// its counters.
    pub fn stop(self) -> Result<EvictStats, EvictError> {
        // If the send fails the thread has already ended; join tells why.
        let _ = self.stop.send(EvictMsg::Stop);
        self.thread.join().map_err(|_| EvictError::Panicked)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Anon;
    use crate::uffd::host_page_size;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts pause and resume calls; fails every pause after `ok` of them.
    struct FakePause {
        pauses: Arc<AtomicU64>,
        resumes: Arc<AtomicU64>,
        ok: u64,
    }

    impl VcpuPause for FakePause {
        fn pause(&self) -> Result<(), PauseError> {
            let n = self.pauses.fetch_add(1, Ordering::SeqCst);
            if n < self.ok {
                Ok(())
            } else {
                Err(PauseError::Timeout {
                    parked: 0,
                    active: 1,
                    waited: Duration::ZERO,
                })
            }
        }

        fn resume(&self) {
            self.resumes.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn evicts_periodically_and_skips_failed_pauses() {
        let ps = host_page_size() as usize;
        let mem = Anon::new(ps * 8);
        mem.write_byte(0, 1);
        mem.write_byte(3 * ps, 2);
        // SAFETY: the mapping outlives the store (dropped at the end).
        let store = unsafe { PageStore::new(mem.ptr, (ps * 8) as u64, ps as u64) }.unwrap();
        let store = Arc::new(Mutex::new(store));
        let pauses = Arc::new(AtomicU64::new(0));
        let resumes = Arc::new(AtomicU64::new(0));
        let pauser = FakePause {
            pauses: pauses.clone(),
            resumes: resumes.clone(),
            ok: 2,
        };
        let ev = spawn(
            Duration::from_millis(10),
            store.clone(),
            pauser,
            EvictChannel::new(),
            || {},
            |_| {},
        )
        .unwrap();
        let t = std::time::Instant::now();
        while pauses.load(Ordering::SeqCst) < 4 && t.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        let stats = ev.stop().unwrap();
        assert_eq!(stats.evictions, 2);
        assert_eq!(stats.pages_evicted, 2, "only the first pass had pages");
        assert!(stats.pause_timeouts >= 2);
        // Every successful pause was resumed; failed ones resume themselves.
        assert_eq!(resumes.load(Ordering::SeqCst), 2);
        assert_eq!(mem.resident(), vec![false; 8]);
        let s = store.lock().unwrap();
        assert_eq!(s.counts().pages_evicted, 2);
    }

    #[test]
    fn stop_before_first_interval() {
        let ps = host_page_size() as usize;
        let mem = Anon::new(ps);
        // SAFETY: the mapping outlives the store.
        let store = unsafe { PageStore::new(mem.ptr, ps as u64, ps as u64) }.unwrap();
        let pauser = FakePause {
            pauses: Arc::new(AtomicU64::new(0)),
            resumes: Arc::new(AtomicU64::new(0)),
            ok: u64::MAX,
        };
        let ev = spawn(
            Duration::from_secs(3600),
            Arc::new(Mutex::new(store)),
            pauser,
            EvictChannel::new(),
            || {},
            |_| {},
        )
        .unwrap();
        assert_eq!(ev.stop().unwrap(), EvictStats::default());
    }

    #[test]
    fn evicts_on_request_and_reports_done() {
        let ps = host_page_size() as usize;
        let mem = Anon::new(ps * 4);
        mem.write_byte(ps, 7);
        // SAFETY: the mapping outlives the store (dropped at the end).
        let store = unsafe { PageStore::new(mem.ptr, (ps * 4) as u64, ps as u64) }.unwrap();
        let pauser = FakePause {
            pauses: Arc::new(AtomicU64::new(0)),
            resumes: Arc::new(AtomicU64::new(0)),
            ok: u64::MAX,
        };
        let channel = EvictChannel::new();
        let req = channel.requester();
        // Asked before it runs: the request waits in the channel.
        req.request();
        let (done_tx, done_rx) = mpsc::channel();
        let ev = spawn(
            Duration::from_secs(3600),
            Arc::new(Mutex::new(store)),
            pauser,
            channel,
            move || done_tx.send(()).unwrap(),
            |_| {},
        )
        .unwrap();
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(mem.resident(), vec![false; 4], "the page was dropped first");
        // A second request gets a second pass (nothing left to drop).
        req.request();
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let stats = ev.stop().unwrap();
        assert_eq!(stats.evictions, 2);
        assert_eq!(stats.requested, 2);
        assert_eq!(stats.pages_evicted, 1);
        // After the stop, a request is dropped without a panic.
        req.request();
    }
}
