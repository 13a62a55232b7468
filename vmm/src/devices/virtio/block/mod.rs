//! virtio-blk (device id 2) backed by a regular file, read-only or
//! read-write, with FLUSH and GET_ID. One request queue, served by a device
//! thread with `pread`/`pwrite`.
//!
//! - `config.rs`: `--block` and what the device offers (sizes, features).
//! - `device.rs`: `Block`, the `VirtioDevice`.
//! - `event_handler.rs`: `BlockHandler`, serving the queue.
//! - `disk.rs`: the backing file; `request.rs`: parsing a request.

mod config;
mod device;
mod disk;
pub mod event_handler;
pub mod persist;
pub mod request;
pub mod test_utils;
#[cfg(test)]
mod tests;

pub use config::{
    BlockConfig, BlockConfigError, BLOCK_QUEUE_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
pub use device::Block;
pub use disk::{BlockError, Disk};
pub use event_handler::{BlockHandler, BlockQueueError};
pub use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
