//! `Fs`: the virtio-fs `VirtioDevice` whose queues virtiofsd serves.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::Connection;
use super::config::{read_config_space, FsConfig, CONFIG_SPACE_LEN};
use super::event_handler::{FsHandler, FsHealth};
use super::persist::FsState;
use super::FsError;
use crate::devices::virtio::device_state::DeviceState;
use crate::devices::virtio::device_thread::DeviceThread;
use crate::devices::virtio::event_loop::QueueEvents;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::seccomp::ThreadKind;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;

/// A virtio-fs device backed by a vhost-user backend (virtiofsd).
pub struct Fs {
    config: FsConfig,
    config_space: [u8; CONFIG_SPACE_LEN],
    queue_sizes: Vec<u16>,
    conn: Connection,
    acked: u64,
    kicks: QueueEvents,
    health: Arc<FsHealth>,
    worker: Option<DeviceThread<FsHandler>>,
    started: Vec<usize>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.config.tag)
            .field("socket", &self.config.socket)
            .field("started", &self.started)
            .field("broken", &self.health.broken())
            .finish()
    }
}

impl Fs {
    /// Connect to the virtiofsd listening on `config.socket` and negotiate.
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        config.validate()?;
        let conn = Connection::connect(&config.socket, config.total_queues())?;
        Self::with_connection(config, conn)
    }

    /// Build the device over an already negotiated connection.
    pub fn with_connection(config: FsConfig, conn: Connection) -> Result<Self, FsError> {
        config.validate()?;
        let kicks =
            QueueEvents::new(config.total_queues()).map_err(FsError::resource("kick eventfd"))?;
        Ok(Fs {
            config_space: config.config_space(),
            queue_sizes: vec![config.queue_size; config.total_queues()],
            config,
            conn,
            acked: 0,
            kicks,
            health: Arc::new(FsHealth::default()),
            worker: None,
            started: Vec::new(),
        })
    }

    /// The device's health (broken once the backend is gone).
    pub fn health(&self) -> Arc<FsHealth> {
        self.health.clone()
    }

    /// The queues handed to the backend at the last activation.
    pub fn started_queues(&self) -> &[usize] {
        &self.started
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn broken(&mut self, reason: String) {
        self.health.mark_broken(self.config.tag.as_str(), reason);
        self.conn.shutdown();
    }

    fn start_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        call: &EventFd,
    ) -> Result<(), FsError> {
        self.conn.set_features_and_memory(self.acked, mem)?;
        self.started = self
            .conn
            .start_vrings(mem, queues, self.kicks.as_slice(), call)?;
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.conn.negotiated().guest_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::limited!(
            debug,
            offset,
            "virtio-fs config space is read-only; write ignored"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.stop_worker();
        let event_idx = self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        if self.health.broken().is_none() {
            if let Err(e) = self.start_backend(&mem, &queues, interrupt.irq_evt()) {
                if matches!(e, FsError::QueueOutsideMemory(_)) {
                    return Err(ActivateError::BadQueue {
                        index: 0,
                        reason: e.to_string(),
                    });
                }
                self.broken(format!("activation failed: {e}"));
            }
        }
        let socket = match self.health.broken() {
            Some(_) => None,
            None => Some(self.conn.socket().try_clone().map_err(|e| {
                ActivateError::Backend(format!("cannot watch the vhost-user socket: {e}"))
            })?),
        };
        let watch_queues = socket.is_none();
        let handler = FsHandler {
            tag: self.config.tag.as_str().to_string(),
            socket,
            queues,
            mem,
            health: self.health.clone(),
        };
        let worker = DeviceThread::start(
            ThreadKind::FsWorker,
            handler,
            self.kicks.as_slice(),
            interrupt,
            watch_queues,
        )?;
        self.worker = Some(worker);
        Ok(())
    }

    fn quiesce(&mut self) {
        // Stops the worker and the backend's rings (GET_VRING_BASE), so
        // virtiofsd touches no ring after this.
        self.reset();
    }

    fn reset(&mut self) {
        self.stop_worker();
        let started = std::mem::take(&mut self.started);
        if self.health.broken().is_none() && !started.is_empty() {
            if let Err(e) = self.conn.stop_vrings(&started) {
                self.broken(format!("reset failed: {e}"));
            }
        }
        self.acked = 0;
    }

    fn device_state(&self) -> DeviceState {
        DeviceState::Fs(FsState {
            tag: self.config.tag.as_str().to_string(),
        })
    }

    fn queue_events(&self) -> &[EventFd] {
        self.kicks.as_slice()
    }

    fn is_vhost_user(&self) -> bool {
        true
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
