//! The thread of an activated virtio device (the idea of Cloud
//! Hypervisor's `thread_helper`): a parked worker of the device's seccomp
//! kind runs the shared event loop (`event_loop.rs`) over the device's
//! handler until the device is reset, quiesced or dropped. A panic in the
//! handler raises DEVICE_NEEDS_RESET, like a failed pass, instead of
//! leaving the driver waiting on a device nobody serves.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{EventHandler, LoopParts};
use super::{ActivateError, VirtioInterrupt};
use crate::seccomp::ThreadKind;
use crate::threads::{self, ThreadError, Worker};

/// Why a device thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum DeviceThreadError {
    /// Its epoll, stop EventFd or kick clones could not be made.
    #[error("cannot set up the device's event loop")]
    Setup(#[source] std::io::Error),
    /// No thread could run it.
    #[error(transparent)]
    Thread(#[from] ThreadError),
}

/// A running device thread; [`DeviceThread::stop`] ends it and gives the
/// handler back.
pub struct DeviceThread<H> {
    stop: EventFd,
    worker: Option<Worker<Option<H>>>,
    name: String,
}

/// A failed start: the error, and the handler back (a device keeps its
/// backend for the next activation).
pub type SpawnFailure<H> = Box<(DeviceThreadError, H)>;

impl<H: EventHandler> DeviceThread<H> {
    /// Run `handler` on a `kind` thread, waking on `kicks` (clones of the
    /// device's queue events) from the start when `watch_queues`.
    pub fn spawn(
        kind: ThreadKind,
        handler: H,
        kicks: &[EventFd],
        interrupt: Arc<VirtioInterrupt>,
        watch_queues: bool,
    ) -> Result<Self, SpawnFailure<H>> {
        let name = handler.name();
        let setup = || -> std::io::Result<(LoopParts, EventFd)> {
            let kicks = kicks
                .iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            LoopParts::new(kicks, interrupt, watch_queues)
        };
        let (parts, stop) = match setup() {
            Ok(v) => v,
            Err(e) => return Err(Box::new((DeviceThreadError::Setup(e), handler))),
        };
        // The thread receives the handler once it runs, so a failed spawn
        // still gives it back.
        let (tx, rx) = std::sync::mpsc::channel::<H>();
        let thread_name = name.clone();
        let worker = threads::spawn_worker(kind, kind.name().to_string(), move || {
            let handler = rx.recv().ok()?;
            let interrupt = parts.interrupt().clone();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parts.run(handler))) {
                Ok(h) => Some(h),
                Err(_) => {
                    interrupt.signal_needs_reset();
                    tracing::error!(device = %thread_name, "virtio device thread panicked; the device needs a reset");
                    None
                }
            }
        });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => return Err(Box::new((e.into(), handler))),
        };
        if let Err(std::sync::mpsc::SendError(handler)) = tx.send(handler) {
            let e = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
            return Err(Box::new((DeviceThreadError::Setup(e), handler)));
        }
        Ok(DeviceThread {
            stop,
            worker: Some(worker),
            name,
        })
    }

    /// [`DeviceThread::spawn`] for a device that keeps nothing of a
    /// handler that did not start: the failure is the activation's error,
    /// named after the handler.
    pub fn start(
        kind: ThreadKind,
        handler: H,
        kicks: &[EventFd],
        interrupt: Arc<VirtioInterrupt>,
        watch_queues: bool,
    ) -> Result<Self, ActivateError> {
        let device = handler.name();
        Self::spawn(kind, handler, kicks, interrupt, watch_queues)
            .map_err(|failed| ActivateError::Backend(format!("{device}: {}", failed.0)))
    }

    /// Stop the thread and wait for it; the handler comes back (`None` if
    /// it panicked).
    pub fn stop(mut self) -> Option<H> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<H> {
        let worker = self.worker.take()?;
        if let Err(e) = self.stop.write(1) {
            tracing::error!(device = %self.name, error = %e, "cannot stop the device thread");
            return None;
        }
        worker.join().ok().flatten()
    }
}

impl<H> Drop for DeviceThread<H> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            if self.stop.write(1).is_ok() {
                let _ = worker.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::event_loop::{Control, Event, QueueEvents};
    use crate::devices::virtio::test_chains::wait_until;

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    /// Serves queue 0; panics on queue 1, as a handler bug would.
    struct Buggy;

    impl EventHandler for Buggy {
        type Error = Never;
        fn name(&self) -> String {
            "buggy".into()
        }
        fn handle(&mut self, event: Event, _: &mut Control<'_>) -> Result<bool, Never> {
            match event {
                Event::Queue(1) => panic!("a handler bug"),
                Event::Queue(_) => Ok(true),
                _ => Ok(false),
            }
        }
    }

    #[test]
    fn a_handler_that_panics_raises_needs_reset_and_the_thread_ends() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
        let kicks = QueueEvents::new(2).unwrap();
        let t = DeviceThread::start(
            ThreadKind::Rng,
            Buggy,
            kicks.as_slice(),
            interrupt.clone(),
            true,
        )
        .unwrap();
        kicks.as_slice()[0].write(1).unwrap();
        wait_until("queue 0 served", || irq.read().is_ok());
        assert!(!interrupt.needs_reset());
        kicks.as_slice()[1].write(1).unwrap();
        wait_until("DEVICE_NEEDS_RESET after the panic", || {
            interrupt.needs_reset()
        });
        assert!(t.stop().is_none(), "a panicked handler does not come back");
    }
}
