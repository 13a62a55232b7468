//! What a snapshot keeps of virtio-rng: nothing of its own. Its one queue
//! is the transport's state, and the entropy it hands out is never
//! replayed (a restored guest reseeds, see the agent).

use serde::{Deserialize, Serialize};

/// virtio-rng's saved state (empty: no configuration space).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {}
