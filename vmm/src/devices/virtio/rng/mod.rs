//! virtio-rng (entropy device): one request queue whose device-writable
//! buffers are filled from the host's `getrandom(2)`.
//!
//! - `config.rs`: the queue size and per-request bounds.
//! - `device.rs`: `Rng`, the `VirtioDevice`.
//! - `event_handler.rs`: `RngHandler`, serving the queue on the device thread.
//! - `entropy.rs`: `fill_random`, the host's entropy.

pub mod config;
pub mod device;
pub mod entropy;
pub mod event_handler;
pub mod persist;
#[cfg(test)]
mod tests;

pub use config::{MAX_BYTES_PER_CHAIN, RNG_QUEUE_SIZE};
pub use device::Rng;
pub use entropy::{fill_random, EntropyError};
pub use event_handler::{RngError, RngHandler};
pub use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
