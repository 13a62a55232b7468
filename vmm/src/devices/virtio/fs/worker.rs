//! The fs device's worker thread. While the backend lives it only watches
//! the vhost-user socket for hang-up (the backend sends nothing unsolicited
//! on it; replies are read by the caller of each request, so the watch
//! asks for `EPOLLRDHUP` only, never `EPOLLIN`). Once the backend is gone
//! it marks the device broken and serves the queues itself, answering
//! every request with `EIO` (`request.rs`). Stopped through an EventFd on
//! reset and when the device is dropped, and joined.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::fail_pending;
use super::FsError;
use crate::devices::virtio::VirtioInterrupt;

const TOKEN_STOP: u64 = 0;
const TOKEN_SOCKET: u64 = 1;
const TOKEN_KICK0: u64 = 2;

/// Whether the backend is gone, and why. Shared by the device, its worker
/// and whoever wants to report it.
#[derive(Debug, Default)]
pub struct FsHealth {
    reason: Mutex<Option<String>>,
}

impl FsHealth {
    /// Mark the device broken (the first reason wins) and log it once.
    pub fn mark_broken(&self, tag: &str, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::error!(
                tag,
                reason = %reason,
                "virtio-fs backend lost; the device is broken and guest requests now fail with EIO"
            );
            *r = Some(reason);
        }
    }

    /// Why the device is broken, if it is.
    pub fn broken(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What the worker works with.
pub struct WorkerContext {
    /// The device's tag (for log lines).
    pub tag: String,
    /// The vhost-user socket to watch; `None` when the backend is already gone.
    pub socket: Option<UnixStream>,
    /// Kick EventFds, index = queue.
    pub kicks: Vec<EventFd>,
    /// The driver's queues (only touched once the backend is gone).
    pub queues: Vec<Queue>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
    /// Shared health.
    pub health: Arc<FsHealth>,
}

/// A running worker; `stop` ends and joins it.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    thread: Option<crate::threads::Worker<()>>,
}

impl Worker {
    /// Start the worker thread.
    pub fn spawn(ctx: WorkerContext) -> Result<Self, FsError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::resource("stop eventfd"))?;
        let epoll = Epoll::new().map_err(FsError::resource("epoll"))?;
        let add = |fd: i32, events: EventSet, token: u64| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
                .map_err(FsError::resource("epoll registration"))
        };
        add(stop.as_raw_fd(), EventSet::IN, TOKEN_STOP)?;
        if let Some(s) = &ctx.socket {
            add(s.as_raw_fd(), EventSet::READ_HANG_UP, TOKEN_SOCKET)?;
        }
        let thread = crate::threads::spawn_worker(
            crate::seccomp::ThreadKind::FsWorker,
            format!("virtio-fs-{}", ctx.tag),
            move || run(epoll, ctx),
        )
        .map_err(|e| FsError::resource("worker thread")(std::io::Error::other(e)))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop and join the thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                tracing::error!(error = %e, "cannot stop the virtio-fs worker");
                return;
            }
            if t.join().is_err() {
                tracing::error!("the virtio-fs worker panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn run(epoll: Epoll, mut ctx: WorkerContext) {
    let mut failing = false;
    if ctx.socket.is_none() {
        failing = take_over(&epoll, &mut ctx);
    }
    let mut events = vec![EpollEvent::default(); 2 + ctx.kicks.len()];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                ctx.health
                    .mark_broken(&ctx.tag, format!("worker epoll failed: {e}"));
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_SOCKET => {
                    if let Some(s) = ctx.socket.take() {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            s.as_raw_fd(),
                            EpollEvent::default(),
                        );
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    ctx.health.mark_broken(
                        &ctx.tag,
                        "virtiofsd closed the vhost-user socket (it exited or was killed)".into(),
                    );
                    if !failing {
                        failing = take_over(&epoll, &mut ctx);
                    }
                }
                token => {
                    let index = (token - TOKEN_KICK0) as usize;
                    if let Some(kick) = ctx.kicks.get(index) {
                        let _ = kick.read();
                    }
                    serve(&mut ctx, index, false);
                }
            }
        }
    }
}

/// Poll the kicks ourselves and fail whatever the guest already queued.
fn take_over(epoll: &Epoll, ctx: &mut WorkerContext) -> bool {
    for (i, kick) in ctx.kicks.iter().enumerate() {
        let ev = EpollEvent::new(EventSet::IN, TOKEN_KICK0 + i as u64);
        if let Err(e) = epoll.ctl(ControlOperation::Add, kick.as_raw_fd(), ev) {
            tracing::error!(error = %e, queue = i, "cannot watch a virtio-fs kick");
        }
    }
    for i in 0..ctx.queues.len() {
        serve(ctx, i, true);
    }
    true
}

fn serve(ctx: &mut WorkerContext, index: usize, resync: bool) {
    let Some(queue) = ctx.queues.get_mut(index) else {
        return;
    };
    let drained = fail_pending(queue, &ctx.mem, index == 0, resync);
    if drained.completed + drained.malformed > 0 {
        crate::limited!(
            debug,
            queue = index,
            ?drained,
            "virtio-fs requests failed with EIO"
        );
    }
    if drained.notify {
        ctx.interrupt.signal_used_queue();
    }
}
