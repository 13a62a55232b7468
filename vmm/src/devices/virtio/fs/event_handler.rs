//! The fs device's thread (the shared event loop). While the backend
//! lives it only watches the vhost-user socket for hang-up (the backend
//! sends nothing unsolicited on it; replies are read by the caller of each
//! request, so the watch asks for `EPOLLRDHUP` only, never `EPOLLIN`).
//! Once the backend is gone it marks the device broken and serves the
//! queues itself, answering every request with `EIO` (`request.rs`).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::request::fail_pending;
use super::FsError;
use crate::devices::virtio::event_loop::{Control, Event, EventHandler};

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

/// The backend token of the vhost-user socket.
const SOCKET: u32 = 0;

/// The device thread's side. While the backend lives the loop does not
/// wait on the kicks (virtiofsd does); it watches the socket for hang-up
/// only. Once the backend is gone it waits on the kicks and fails every
/// request with `EIO`.
pub struct FsHandler {
    /// The device's tag (for log lines).
    pub tag: String,
    /// The vhost-user socket to watch; `None` when the backend is already gone.
    pub socket: Option<UnixStream>,
    /// The driver's queues (only touched once the backend is gone).
    pub queues: Vec<Queue>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Shared health.
    pub health: Arc<FsHealth>,
}

impl FsHandler {
    /// Wait on the kicks ourselves and fail whatever the guest already queued.
    fn take_over(&mut self, ctl: &mut Control<'_>) -> Result<bool, FsError> {
        ctl.watch_queues()
            .map_err(FsError::resource("epoll registration of the kicks"))?;
        let mut used = false;
        for i in 0..self.queues.len() {
            used |= self.serve(i, true);
        }
        Ok(used)
    }

    fn serve(&mut self, index: usize, resync: bool) -> bool {
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        let drained = fail_pending(queue, &self.mem, index == 0, resync);
        if drained.completed + drained.malformed > 0 {
            crate::limited!(
                debug,
                queue = index,
                ?drained,
                "virtio-fs requests failed with EIO"
            );
        }
        drained.notify
    }
}

impl EventHandler for FsHandler {
    type Error = FsError;

    fn name(&self) -> String {
        format!("virtio-fs {}", self.tag)
    }

    fn handle(&mut self, event: Event, ctl: &mut Control<'_>) -> Result<bool, FsError> {
        match event {
            Event::Started => match &self.socket {
                Some(s) => {
                    ctl.watch(s.as_raw_fd(), EventSet::READ_HANG_UP, SOCKET)
                        .map_err(FsError::resource("epoll registration of the socket"))?;
                    Ok(false)
                }
                None => self.take_over(ctl),
            },
            Event::Backend(_) => {
                if let Some(s) = self.socket.take() {
                    let _ = ctl.unwatch(s.as_raw_fd());
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                self.health.mark_broken(
                    &self.tag,
                    "virtiofsd closed the vhost-user socket (it exited or was killed)".into(),
                );
                self.take_over(ctl)
            }
            Event::Queue(i) => Ok(self.serve(i, false)),
            Event::Timeout => Ok(false),
        }
    }
}
