//! What a snapshot keeps of virtio-vsock: the guest CID the driver read.
//! Connections are not: a restored device announces a transport reset.

use serde::{Deserialize, Serialize};

/// virtio-vsock's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest CID (configuration space).
    pub cid: u64,
}
