//! The virtio-net device model: config space with the MAC, and a device
//! thread per activation (`event_handler.rs` on the shared event loop)
//! over the TAP and the queue kicks.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::{MacAddr, NetConfig, TapSource};
use super::event_handler::{NetHandler, NetQueues};
use super::persist::NetState;
use super::tap::{Tap, TapError};
use crate::devices::virtio::device_state::DeviceState;
use crate::devices::virtio::device_thread::DeviceThread;
use crate::devices::virtio::event_loop::QueueEvents;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::seccomp::ThreadKind;
/// Size of the rx and tx queues.
pub const NET_QUEUE_SIZE: u16 = 256;
/// `VIRTIO_NET_F_MAC`.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_MTU`.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Where `mtu` is in `struct virtio_net_config` (after mac[6], status and
/// max_virtqueue_pairs, which we do not offer).
const CONFIG_MTU_OFFSET: usize = 10;

/// Errors setting up a net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP cannot be used.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The queue EventFds could not be made.
    #[error("cannot create the virtio-net queue eventfds")]
    QueueEvents(#[source] std::io::Error),
}

/// A virtio-net device on a TAP.
pub struct Net {
    tap: Tap,
    mac: Option<MacAddr>,
    mtu: Option<u16>,
    kicks: QueueEvents,
    thread: Option<DeviceThread<NetHandler>>,
}

impl Net {
    /// Attach to the TAP `config` names, or take over its descriptor.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        let tap = match &config.tap {
            TapSource::Name(name) => Tap::open(name)?,
            TapSource::Fd(fd) => Tap::from_fd(*fd)?,
        };
        Ok(Net {
            tap,
            mac: config.mac,
            mtu: config.mtu,
            kicks: QueueEvents::new(2).map_err(NetError::QueueEvents)?,
            thread: None,
        })
    }

    fn stop_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 0;
        if self.mac.is_some() {
            f |= VIRTIO_NET_F_MAC;
        }
        if self.mtu.is_some() {
            f |= VIRTIO_NET_F_MTU;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if self.mac.is_none() && self.mtu.is_none() {
            return;
        }
        // mac[6], status (le16), max_virtqueue_pairs (le16), mtu (le16).
        let mut config = [0u8; CONFIG_MTU_OFFSET + 2];
        if let Some(mac) = self.mac {
            config[..6].copy_from_slice(&mac.0);
        }
        if let Some(mtu) = self.mtu {
            config[CONFIG_MTU_OFFSET..].copy_from_slice(&mtu.to_le_bytes());
        }
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // VIRTIO_NET_F_CTRL_MAC_ADDR is not offered: the MAC is read-only.
        crate::limited!(debug, offset, "virtio-net configuration write ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let [rxq, txq]: [Queue; 2] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| ActivateError::BadQueue {
                    index: q.len(),
                    reason: "virtio-net has exactly an rx and a tx queue".into(),
                })?;
        self.stop_thread();
        let tap = self
            .tap
            .try_clone()
            .map_err(|e| ActivateError::Backend(format!("virtio-net: {e}")))?;
        let handler = NetHandler::new(NetQueues::new(tap, mem, rxq, txq, interrupt.clone()));
        let thread = DeviceThread::start(
            ThreadKind::Net,
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
        DeviceState::Net(NetState {
            mac: self.mac.map(|m| m.0),
            mtu: self.mtu,
        })
    }

    fn queue_events(&self) -> &[EventFd] {
        self.kicks.as_slice()
    }
}
