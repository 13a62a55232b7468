//! Parking vCPU threads outside `KVM_RUN` so the VM's state can be read.
//!
//! The main thread asks for a pause and kicks every vCPU thread (the same
//! signal as a stop). Each vCPU thread, seeing the request between two
//! `KVM_RUN`s, saves its own state, reports it here and sleeps until the
//! pause ends (resume) or the VM stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::vcpu_state::{VcpuState, VcpuStateError};

/// Errors while pausing.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// Not every vCPU parked in time.
    #[error("{parked} of {total} vcpus parked within {waited:?}; the VM cannot be paused")]
    Timeout {
        /// How many parked.
        parked: usize,
        /// How many there are.
        total: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// A vCPU could not save its state.
    #[error(transparent)]
    Save(#[from] VcpuStateError),
    /// The VM stopped while pausing.
    #[error("the VM stopped while it was being paused")]
    Stopped,
}

#[derive(Default)]
struct Parked {
    /// One entry per parked vCPU (its saved state or why it has none).
    states: Vec<Result<VcpuState, VcpuStateError>>,
    /// Bumped by every resume, so a sleeper wakes for its own pause only.
    generation: u64,
}

/// Shared by the main thread and the vCPU threads.
#[derive(Default)]
pub struct PauseGate {
    requested: AtomicBool,
    parked: Mutex<Parked>,
    cond: Condvar,
}

impl PauseGate {
    /// A gate with no pause requested.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether vCPU threads should park (checked before every `KVM_RUN`).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Ask vCPU threads to park; the caller then kicks them.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Called by a vCPU thread: report `state` and sleep until a resume or
    /// until `stopping` says the VM is going away.
    pub fn park(&self, state: Result<VcpuState, VcpuStateError>, stopping: &dyn Fn() -> bool) {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        parked.states.push(state);
        self.cond.notify_all();
        let generation = parked.generation;
        while parked.generation == generation && !stopping() {
            parked = self
                .cond
                .wait_timeout(parked, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wait until `total` vCPUs parked; their states, by vCPU index. `kick`
    /// is called while waiting (to push threads out of `KVM_RUN`), and
    /// `stopping` ends the wait when the VM stops.
    pub fn wait_parked(
        &self,
        total: usize,
        timeout: Duration,
        kick: &dyn Fn(),
        stopping: &dyn Fn() -> bool,
    ) -> Result<Vec<VcpuState>, PauseError> {
        let start = Instant::now();
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        while parked.states.len() < total {
            if stopping() {
                return Err(PauseError::Stopped);
            }
            if start.elapsed() >= timeout {
                return Err(PauseError::Timeout {
                    parked: parked.states.len(),
                    total,
                    waited: timeout,
                });
            }
            drop(parked);
            kick();
            parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            parked = self
                .cond
                .wait_timeout(parked, Duration::from_millis(2))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut states = Vec::with_capacity(total);
        for s in std::mem::take(&mut parked.states) {
            states.push(s?);
        }
        states.sort_by_key(|s| s.index);
        Ok(states)
    }

    /// End the pause: parked vCPUs return to the guest.
    pub fn resume(&self) {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.requested.store(false, Ordering::SeqCst);
        parked.states.clear();
        parked.generation += 1;
        self.cond.notify_all();
    }
}
