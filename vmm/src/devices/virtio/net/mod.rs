//! virtio-net (device id 1) on a TAP (by name, or an inherited descriptor): an rx and a tx
//! queue, the MAC in config space (`VIRTIO_NET_F_MAC`), no offloads. A
//! device thread per activation polls the TAP and the queue kicks.

mod config;
mod device;
pub mod event_handler;
pub mod persist;
mod tap;
pub mod test_utils;
#[cfg(test)]
mod tests;

pub use config::{MacAddr, NetConfig, NetConfigError, TapSource};
pub use device::{Net, NetError, NET_QUEUE_SIZE, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU};
pub use event_handler::{
    FrameIo, NetHandler, NetQueueError, NetQueues, MAX_DESCRIPTORS, MAX_FRAME_LEN, NET_HDR_LEN,
};
pub use tap::{Tap, TapError};
pub use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
