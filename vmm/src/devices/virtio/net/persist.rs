//! What a snapshot keeps of virtio-net: the MAC and MTU the driver read.
//! The TAP is not part of it: a restored device is given its pod's.

use serde::{Deserialize, Serialize};

/// virtio-net's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// `VIRTIO_NET_F_MAC`'s address, if offered.
    pub mac: Option<[u8; 6]>,
    /// `VIRTIO_NET_F_MTU`'s value, if offered.
    pub mtu: Option<u16>,
}
