//! What a snapshot keeps of virtio-fs: the tag the guest mounts by. The
//! backend is not part of it: a restored device connects to a fresh
//! virtiofsd (the template never mounted the share).

use serde::{Deserialize, Serialize};

/// virtio-fs's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    /// The tag in the configuration space.
    pub tag: String,
}
