//! What a snapshot keeps of virtio-blk: the disk as the driver saw it.

use serde::{Deserialize, Serialize};

/// virtio-blk's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Capacity in 512-byte sectors (configuration space).
    pub capacity_sectors: u64,
    /// `VIRTIO_BLK_F_RO` offered.
    pub read_only: bool,
    /// What GET_ID answers.
    pub serial: Option<String>,
}
