//! `Vsock<B>`: the virtio device. Its guest CID is the configuration
//! space; its three queues are served by a device thread running
//! `VsockCore` (`event_handler.rs`) on the shared event loop.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{VsockBackend, VsockError};
use super::config::{valid_guest_cid, QUEUE_SIZE};
use super::event_handler::VsockCore;
use super::persist::VsockState;
use crate::devices::virtio::device_state::DeviceState;
use crate::devices::virtio::device_thread::DeviceThread;
use crate::devices::virtio::event_loop::QueueEvents;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::seccomp::ThreadKind;

/// The vsock device: guest CID in the configuration space, three queues.
pub struct Vsock<B: VsockBackend> {
    cid: u64,
    queue_sizes: [u16; 3],
    backend: Option<B>,
    kicks: QueueEvents,
    thread: Option<DeviceThread<VsockCore<B>>>,
    /// Set by `restoring`: the next activation announces a transport reset.
    reset_on_activate: bool,
}

impl<B: VsockBackend> Vsock<B> {
    /// A device for guest `cid` over `backend`.
    pub fn new(cid: u64, mut backend: B) -> Result<Self, VsockError> {
        if !valid_guest_cid(cid) {
            return Err(VsockError::BadCid(cid));
        }
        let kicks = QueueEvents::new(3).map_err(|source| VsockError::Sys {
            what: "queue eventfd",
            source,
        })?;
        backend.set_guest_cid(cid);
        Ok(Vsock {
            cid,
            queue_sizes: [QUEUE_SIZE; 3],
            backend: Some(backend),
            kicks,
            thread: None,
            reset_on_activate: false,
        })
    }

    /// The guest CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The backend while the device is not running (tests).
    #[cfg(test)]
    pub fn backend_for_tests(&self) -> Option<&B> {
        self.backend.as_ref()
    }

    fn stop_worker(&mut self) {
        if let Some(t) = self.thread.take() {
            match t.stop() {
                Some(core) => {
                    let mut backend = core.into_backend();
                    backend.reset();
                    self.backend = Some(backend);
                }
                None => tracing::error!("vsock device thread panicked; the device is gone"),
            }
        }
    }
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.cid.to_le_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| cfg.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::limited!(debug, offset, "vsock config is read-only; write ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::BadQueue {
                index: queues.len(),
                reason: "vsock needs 3 queues".into(),
            });
        }
        for (index, q) in queues.iter().take(2).enumerate() {
            if !q.ready() {
                return Err(ActivateError::BadQueue {
                    index,
                    reason: "not ready".into(),
                });
            }
        }
        self.stop_worker();
        let backend = self
            .backend
            .take()
            .ok_or_else(|| ActivateError::Backend("vsock backend lost".into()))?;
        let mut core = VsockCore::new(mem, queues, interrupt.clone(), backend, self.cid);
        if std::mem::take(&mut self.reset_on_activate) {
            core = core.with_transport_reset();
        }
        match DeviceThread::spawn(
            ThreadKind::Vsock,
            core,
            self.kicks.as_slice(),
            interrupt,
            true,
        ) {
            Ok(t) => {
                self.thread = Some(t);
                Ok(())
            }
            Err(failed) => {
                let (e, core) = *failed;
                self.backend = Some(core.into_backend());
                Err(ActivateError::Backend(format!("virtio-vsock: {e}")))
            }
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn quiesce(&mut self) {
        self.stop_worker();
    }

    fn device_state(&self) -> DeviceState {
        DeviceState::Vsock(VsockState { cid: self.cid })
    }

    fn queue_events(&self) -> &[EventFd] {
        self.kicks.as_slice()
    }

    fn restoring(&mut self) {
        self.reset_on_activate = true;
        if let Some(b) = self.backend.as_mut() {
            b.restoring();
        }
    }
}

impl<B: VsockBackend> Drop for Vsock<B> {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
