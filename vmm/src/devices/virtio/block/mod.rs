//! virtio-blk (device id 2) backed by a regular file, read-only or
//! read-write, with FLUSH and GET_ID. One request queue, served
//! synchronously with `pread`/`pwrite` when the driver notifies it.

mod config;
mod device;
mod disk;
pub mod request;
pub mod test_utils;
#[cfg(test)]
mod tests;

pub use config::{BlockConfig, BlockConfigError};
pub use device::{
    Block, BLOCK_QUEUE_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_ID_BLOCK,
};
pub use disk::{BlockError, Disk};
