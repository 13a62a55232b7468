//! The virtio-rng device model: one request queue, served by a device
//! thread (`event_handler.rs` on the shared event loop).

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::RNG_QUEUE_SIZE;
use super::event_handler::RngHandler;
use super::persist::RngState;
use crate::devices::virtio::device_state::DeviceState;
use crate::devices::virtio::device_thread::DeviceThread;
use crate::devices::virtio::event_loop::QueueEvents;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::seccomp::ThreadKind;

/// A virtio-rng device.
pub struct Rng {
    kicks: QueueEvents,
    thread: Option<DeviceThread<RngHandler>>,
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Rng {
            kicks: QueueEvents::new(1)?,
            thread: None,
        })
    }

    fn stop_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        crate::limited!(
            debug,
            "virtio-rng has no configuration space; write ignored"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let [queue]: [Queue; 1] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| ActivateError::BadQueue {
                    index: q.len(),
                    reason: "virtio-rng has exactly one queue".into(),
                })?;
        self.stop_thread();
        let handler = RngHandler::new(mem, queue);
        let thread = DeviceThread::start(
            ThreadKind::Rng,
            handler,
            self.kicks.as_slice(),
            interrupt,
            true,
        )?;
        self.thread = Some(thread);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_thread();
    }

    fn quiesce(&mut self) {
        self.stop_thread();
    }

    fn device_state(&self) -> DeviceState {
        DeviceState::Rng(RngState::default())
    }

    fn queue_events(&self) -> &[EventFd] {
        self.kicks.as_slice()
    }
}
