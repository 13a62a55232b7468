//! Device worker threads under seccomp. A virtio device starts its worker
//! when the guest activates it, on a vCPU thread, whose filter allows no
//! `clone`; so with filters on, the workers are made beforehand by the
//! main thread ([`reserve`], one per device, while nothing is filtered
//! yet), each installs its own kind's filter at once and parks. An
//! activation hands its job to a parked thread of the right kind
//! ([`spawn_worker`]); when the job ends the thread parks again, ready for
//! the next activation (after a guest reset). Without filters (the
//! library, the unit tests) [`spawn_worker`] starts a plain thread.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::seccomp::{self, SeccompMode, ThreadKind};

type Job = Box<dyn FnOnce() + Send>;

/// Parked threads by kind: a sender to each.
static PARKED: OnceLock<Mutex<HashMap<ThreadKind, Vec<mpsc::Sender<Job>>>>> = OnceLock::new();

fn parked() -> &'static Mutex<HashMap<ThreadKind, Vec<mpsc::Sender<Job>>>> {
    PARKED.get_or_init(Default::default)
}

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    /// The thread could not be created.
    #[error("cannot create the {kind} thread")]
    Spawn {
        /// Its kind.
        kind: ThreadKind,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Filters are on and no parked thread of this kind is left.
    #[error(
        "no {kind} thread is parked for this device (seccomp filters forbid creating one now)"
    )]
    NoneParked {
        /// Its kind.
        kind: ThreadKind,
    },
}

/// Creates `count` parked threads of `kind`, each under its filter.
pub fn reserve(kind: ThreadKind, count: usize) -> Result<(), ThreadError> {
    for i in 0..count {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("{}-{i}", kind.name()))
            .spawn(move || park(kind, rx))
            .map_err(|source| ThreadError::Spawn { kind, source })?;
        parked()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default()
            .push(tx);
    }
    Ok(())
}

fn park(kind: ThreadKind, jobs: mpsc::Receiver<Job>) {
    if let Err(e) = seccomp::enter(kind) {
        // Never run a job unfiltered: this thread stays out of the pool.
        tracing::error!(error = %e, "a parked {kind} thread has no filter; not used");
        return;
    }
    while let Ok(job) = jobs.recv() {
        job();
    }
}

/// A running worker: its result arrives when the job ends.
#[derive(Debug)]
pub struct Worker<T> {
    result: mpsc::Receiver<std::thread::Result<T>>,
    done: Option<std::thread::Result<T>>,
    plain: Option<JoinHandle<()>>,
}

impl<T> Worker<T> {
    /// Whether the job has ended.
    pub fn is_finished(&mut self) -> bool {
        if self.done.is_none() {
            if let Ok(r) = self.result.try_recv() {
                self.done = Some(r);
            }
        }
        self.done.is_some()
    }

    /// Waits for the job's end; `Err` if it panicked.
    pub fn join(mut self) -> std::thread::Result<T> {
        let r = match self.done.take() {
            Some(r) => r,
            None => self
                .result
                .recv()
                .unwrap_or_else(|_| Err(Box::new("the worker thread is gone"))),
        };
        if let Some(h) = self.plain.take() {
            let _ = h.join();
        }
        r
    }
}

/// Runs `f` on a worker of `kind`: a parked one when filters are on, a
/// new thread named `name` otherwise.
pub fn spawn_worker<T, F>(kind: ThreadKind, name: String, f: F) -> Result<Worker<T>, ThreadError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let parked_tx = {
        let mut map = parked().lock().unwrap_or_else(|e| e.into_inner());
        map.get_mut(&kind).and_then(Vec::pop)
    };
    match parked_tx {
        Some(thread) => {
            let back = thread.clone();
            let job: Job = Box::new(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                // Parked again before anyone learns the job ended, so the
                // next activation finds it.
                parked()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(kind)
                    .or_default()
                    .push(back);
                let _ = tx.send(r);
            });
            thread
                .send(job)
                .map_err(|_| ThreadError::NoneParked { kind })?;
            Ok(Worker {
                result: rx,
                done: None,
                plain: None,
            })
        }
        None if seccomp::mode() != SeccompMode::Off => Err(ThreadError::NoneParked { kind }),
        None => {
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                    let _ = tx.send(r);
                })
                .map_err(|source| ThreadError::Spawn { kind, source })?;
            Ok(Worker {
                result: rx,
                done: None,
                plain: Some(h),
            })
        }
    }
}
