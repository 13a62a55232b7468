//! What a snapshot keeps of each device beyond its transport: the facts
//! the guest's driver learned from the device (its configuration space:
//! a MAC, a CID, a tag, a disk's size) and still relies on after a
//! restore. Each device folder's `persist.rs` defines its part; a restore
//! onto a device whose part differs is refused (a template VM made for
//! another CID or MAC is never half-used).

use serde::{Deserialize, Serialize};

use super::block::persist::BlockState;
use super::fs::persist::FsState;
use super::net::persist::NetState;
use super::rng::persist::RngState;
use super::vsock::persist::VsockState;

/// One device's own saved state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A device that keeps nothing of its own (test devices).
    #[default]
    Stateless,
    /// virtio-blk.
    Block(BlockState),
    /// virtio-fs.
    Fs(FsState),
    /// virtio-net.
    Net(NetState),
    /// virtio-rng.
    Rng(RngState),
    /// virtio-vsock.
    Vsock(VsockState),
}
