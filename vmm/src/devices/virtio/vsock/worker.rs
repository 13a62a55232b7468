//! The device thread: one epoll over the three queue EventFds (written by
//! `queue_notify`), the backend's fd and a stop EventFd.

use std::os::unix::io::AsRawFd;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::device::VsockCore;
use super::{VsockBackend, VsockError};

const TOKEN_BACKEND: u64 = 3;
const TOKEN_STOP: u64 = 4;

/// A running device thread.
pub(super) struct WorkerHandle<B: VsockBackend> {
    kicks: Vec<EventFd>,
    stop: EventFd,
    join: crate::threads::Worker<Option<B>>,
}

impl<B: VsockBackend> WorkerHandle<B> {
    /// Queue `index` was notified by the driver.
    pub fn kick(&self, index: usize) {
        if let Some(evt) = self.kicks.get(index) {
            if let Err(e) = evt.write(1) {
                crate::limited!(warn, error = %e, "cannot kick the vsock thread");
            }
        }
    }

    /// Stop and join the thread; the backend comes back (None if it panicked).
    pub fn stop(self) -> Option<B> {
        if let Err(e) = self.stop.write(1) {
            tracing::error!(error = %e, "cannot stop the vsock thread");
        }
        self.join.join().ok().flatten()
    }
}

fn sys(what: &'static str) -> impl Fn(std::io::Error) -> VsockError {
    move |source| VsockError::Sys { what, source }
}

type SpawnError<B> = Box<(VsockError, VsockCore<B>)>;

/// Start the thread; on failure the core comes back.
pub(super) fn spawn<B: VsockBackend>(core: VsockCore<B>) -> Result<WorkerHandle<B>, SpawnError<B>> {
    let setup = || -> Result<(Vec<EventFd>, EventFd, Epoll), VsockError> {
        let kicks = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sys("queue eventfd"))?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(sys("stop eventfd"))?;
        let epoll = Epoll::new().map_err(sys("epoll"))?;
        let add = |fd, token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        for (i, k) in kicks.iter().enumerate() {
            add(k.as_raw_fd(), i as u64).map_err(sys("epoll registration"))?;
        }
        add(stop.as_raw_fd(), TOKEN_STOP).map_err(sys("epoll registration"))?;
        Ok((kicks, stop, epoll))
    };
    let (kicks, stop, epoll) = match setup() {
        Ok(v) => v,
        Err(e) => return Err(Box::new((e, core))),
    };
    if let Err(e) = epoll.ctl(
        ControlOperation::Add,
        core.backend.polled_fd(),
        EpollEvent::new(EventSet::IN, TOKEN_BACKEND),
    ) {
        return Err(Box::new((sys("epoll registration")(e), core)));
    }
    let thread_kicks = match kicks
        .iter()
        .map(|k| k.try_clone())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(k) => k,
        Err(e) => return Err(Box::new((sys("queue eventfd")(e), core))),
    };
    // The thread receives the core once it runs, so a failed spawn still
    // gives the core back.
    let (tx, rx) = std::sync::mpsc::channel::<VsockCore<B>>();
    let join = crate::threads::spawn_worker(
        crate::seccomp::ThreadKind::Vsock,
        "vsock".into(),
        move || rx.recv().ok().map(|core| run(core, epoll, thread_kicks)),
    );
    let join = match join {
        Ok(join) => join,
        Err(e) => {
            return Err(Box::new((
                sys("vsock thread")(std::io::Error::other(e)),
                core,
            )))
        }
    };
    if let Err(std::sync::mpsc::SendError(core)) = tx.send(core) {
        return Err(Box::new((
            VsockError::Sys {
                what: "vsock thread",
                source: std::io::ErrorKind::BrokenPipe.into(),
            },
            core,
        )));
    }
    Ok(WorkerHandle { kicks, stop, join })
}

fn run<B: VsockBackend>(mut core: VsockCore<B>, epoll: Epoll, kicks: Vec<EventFd>) -> B {
    let mut events = [EpollEvent::default(); 8];
    // A restored VM learns first that its old connections are gone.
    core.announce_transport_reset();
    // Packets may be waiting from before activation (host connections).
    core.backend_event();
    loop {
        let timeout = core
            .poll_timeout()
            .map(|d| d.min(Duration::from_secs(60)).as_millis() as i32)
            .unwrap_or(-1);
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "vsock thread epoll failed; device stops");
                return core.into_backend();
            }
        };
        if n == 0 {
            core.backend_event();
            continue;
        }
        let mut queues = false;
        let mut backend = false;
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return core.into_backend(),
                TOKEN_BACKEND => backend = true,
                i => {
                    if let Some(k) = kicks.get(i as usize) {
                        let _ = k.read();
                    }
                    queues = true;
                }
            }
        }
        if backend {
            core.backend_event();
        } else if queues {
            core.process_all();
        }
    }
}
