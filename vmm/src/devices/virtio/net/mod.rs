//! virtio-net (device id 1) on a TAP (by name, or an inherited descriptor): an rx and a tx
//! queue, the MAC in config space (`VIRTIO_NET_F_MAC`), no offloads. A
//! worker thread per activation polls the TAP and the queue kicks.

mod config;
mod device;
mod tap;
pub mod test_utils;
#[cfg(test)]
mod tests;
mod worker;

pub use config::{MacAddr, NetConfig, NetConfigError, TapSource};
pub use device::{
    Net, NetError, NET_QUEUE_SIZE, VIRTIO_ID_NET, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
};
pub use tap::{Tap, TapError};
pub use worker::{FrameIo, NetQueueError, NetQueues, MAX_DESCRIPTORS, MAX_FRAME_LEN, NET_HDR_LEN};
