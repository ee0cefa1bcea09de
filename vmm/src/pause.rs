// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Pausing every vCPU outside KVM_RUN, for work that must not race with
//! the guest (the userfaultfd evictor).
//!
//! The controller calls `PauseGate::pause` with a function that kicks every
//! vCPU thread out of KVM_RUN (on aarch64: a signal whose handler sets
//! `kvm_run.immediate_exit`). Each vCPU thread checks `requested()` before
//! every KVM_RUN and, when set, parks in `park()` until `resume()`. `pause`
//! returns once every vCPU thread still running has parked.
//!
//! Nothing here is KVM specific, so it is tested on any host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How often a waiting `pause` kicks the vCPUs again.
const REKICK: Duration = Duration::from_millis(20);
/// How often a parked vCPU re-checks its stop flag.
const PARK_POLL: Duration = Duration::from_millis(50);

/// Pause errors.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PauseError {
    /// Not every vCPU thread parked in time; the pause was undone.
    #[error("only {parked} of {active} vCPU threads paused within {waited:?}")]
    Timeout {
        /// Threads that parked.
        parked: usize,
        /// Threads running.
        active: usize,
        /// How long `pause` waited.
        waited: Duration,
    },
}

#[derive(Debug)]
struct State {
    /// vCPU threads whose run loop is still going.
    active: usize,
    /// Of those, threads parked in `park`.
    parked: usize,
    /// A pause is requested or in effect.
    paused: bool,
}

/// Where vCPU threads wait while paused.
#[derive(Debug)]
pub struct PauseGate {
    requested: AtomicBool,
    state: Mutex<State>,
    cond: Condvar,
}

impl PauseGate {
    /// A gate for `active` vCPU threads, none paused.
    pub fn new(active: usize) -> PauseGate {
        PauseGate {
            requested: AtomicBool::new(false),
            state: Mutex::new(State {
                active,
                parked: 0,
                paused: false,
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// vCPU side, cheap: whether the thread should call `park` before its
    /// next KVM_RUN.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// vCPU side: waits, outside KVM_RUN, until the pause is over or `stop`
    /// is set.
    pub fn park(&self, stop: &AtomicBool) {
        let mut st = self.lock();
        if !st.paused {
            return;
        }
        st.parked += 1;
        self.cond.notify_all();
        while st.paused && !stop.load(Ordering::Acquire) {
            st = match self.cond.wait_timeout(st, PARK_POLL) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        st.parked -= 1;
    }

    /// vCPU side: the thread's run loop ended; a pause no longer waits for
    /// it.
    pub fn leave(&self) {
        let mut st = self.lock();
        st.active = st.active.saturating_sub(1);
        self.cond.notify_all();
    }

    /// Controller side: requests a pause, kicks the vCPU threads (again
    /// every 20 ms) and waits until all running ones have parked. On
    /// timeout the request is withdrawn and the vCPUs run on.
    pub fn pause<K: FnMut()>(&self, mut kick: K, timeout: Duration) -> Result<(), PauseError> {
        let start = Instant::now();
        {
            let mut st = self.lock();
            st.paused = true;
            // Before any kick: a kicked thread must see the request.
            self.requested.store(true, Ordering::SeqCst);
        }
        loop {
            kick();
            let mut st = self.lock();
            let next = Instant::now() + REKICK;
            while st.parked < st.active && Instant::now() < next {
                let left = next.saturating_duration_since(Instant::now());
                st = match self.cond.wait_timeout(st, left) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
            if st.parked >= st.active {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                let err = PauseError::Timeout {
                    parked: st.parked,
                    active: st.active,
                    waited,
                };
                drop(st);
                self.resume();
                return Err(err);
            }
        }
    }

    /// Controller side: ends the pause and wakes the parked threads.
    pub fn resume(&self) {
        let mut st = self.lock();
        st.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// Threads parked right now.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.lock().parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::thread;

    /// A fake vCPU: "runs" (spins in short sleeps) until stopped, parking
    /// when asked, and counts its iterations outside the gate.
    fn fake_vcpu(
        gate: Arc<PauseGate>,
        stop: Arc<AtomicBool>,
        in_run: Arc<AtomicU64>,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if gate.requested() {
                    gate.park(&stop);
                    continue;
                }
                in_run.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(1));
            }
            gate.leave();
        })
    }

    #[test]
    fn pause_waits_for_every_vcpu_and_resume_releases_them() {
        let gate = Arc::new(PauseGate::new(3));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| fake_vcpu(gate.clone(), stop.clone(), counter.clone()))
            .collect();

        let mut kicks = 0;
        gate.pause(|| kicks += 1, Duration::from_secs(10)).unwrap();
        assert!(kicks >= 1);
        assert_eq!(gate.parked(), 3);
        // Nobody runs while paused.
        let before = counter.load(Ordering::SeqCst);
        thread::sleep(Duration::from_millis(30));
        assert_eq!(counter.load(Ordering::SeqCst), before);

        gate.resume();
        let t = Instant::now();
        while counter.load(Ordering::SeqCst) == before && t.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(
            counter.load(Ordering::SeqCst) > before,
            "vCPUs did not resume"
        );

        // Again, then stop while paused: parked threads notice `stop`.
        gate.pause(|| {}, Duration::from_secs(10)).unwrap();
        stop.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
        gate.resume();
        // With every vCPU gone a pause has nobody to wait for.
        gate.pause(|| {}, Duration::from_millis(100)).unwrap();
        gate.resume();
    }

    #[test]
    fn pause_times_out_and_withdraws() {
        // One "vCPU" that never checks the gate.
        let gate = PauseGate::new(1);
        let err = gate.pause(|| {}, Duration::from_millis(60)).unwrap_err();
        assert!(matches!(
            err,
            PauseError::Timeout {
                parked: 0,
                active: 1,
                ..
            }
        ));
        assert!(!gate.requested(), "request withdrawn");
        // A late park returns at once.
        gate.park(&AtomicBool::new(false));
        assert_eq!(gate.parked(), 0);
    }

    #[test]
    fn leaving_thread_completes_a_pause() {
        let gate = Arc::new(PauseGate::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let parker = fake_vcpu(gate.clone(), stop.clone(), counter);
        let g2 = gate.clone();
        // The second thread ends its run loop instead of parking.
        let leaver = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            g2.leave();
        });
        gate.pause(|| {}, Duration::from_secs(10)).unwrap();
        gate.resume();
        stop.store(true, Ordering::Release);
        parker.join().unwrap();
        leaver.join().unwrap();
    }
}
