//! The virtio-blk device model: the configuration space, and one request
//! queue served by a device thread (`event_handler.rs` on the shared
//! event loop) with positioned I/O on the backing file.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::{
    BlockConfig, BLOCK_QUEUE_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
use super::disk::{BlockError, Disk};
use super::event_handler::BlockHandler;
use super::persist::BlockState;
use crate::devices::virtio::device_state::DeviceState;
use crate::devices::virtio::device_thread::DeviceThread;
use crate::devices::virtio::event_loop::QueueEvents;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::seccomp::ThreadKind;

/// A virtio-blk device backed by a file.
pub struct Block {
    disk: Arc<Disk>,
    serial: Option<String>,
    config_space: [u8; 24],
    kicks: QueueEvents,
    thread: Option<DeviceThread<BlockHandler>>,
}

impl Block {
    /// Open the backing file (errors name the file and what is wrong).
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(config)?;
        let mut config_space = [0u8; 24];
        config_space[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let kicks = QueueEvents::new(1).map_err(BlockError::QueueEvents)?;
        Ok(Block {
            disk: Arc::new(disk),
            serial: config.serial.clone(),
            config_space,
            kicks,
            thread: None,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// What serves the queue once the driver activates it (the device
    /// thread's handler; tests drive it directly).
    pub fn handler(&self, mem: GuestMemoryMmap, queue: Queue) -> BlockHandler {
        BlockHandler::new(self.disk.clone(), self.serial.clone(), mem, queue)
    }

    fn stop_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config_space.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::limited!(
            debug,
            offset,
            "virtio-blk configuration is read-only; write ignored"
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
                    reason: "virtio-blk has exactly one queue".into(),
                })?;
        self.stop_thread();
        let handler = self.handler(mem, queue);
        let thread = DeviceThread::start(
            ThreadKind::Block,
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
        DeviceState::Block(BlockState {
            capacity_sectors: self.disk.capacity_sectors(),
            read_only: self.disk.read_only(),
            serial: self.serial.clone(),
        })
    }

    fn queue_events(&self) -> &[EventFd] {
        self.kicks.as_slice()
    }
}
