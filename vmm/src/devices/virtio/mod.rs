//! virtio devices over the virtio-mmio (version 2) transport.

pub mod block;
pub mod checked_chain;
pub mod device;
pub mod device_state;
pub mod device_thread;
pub mod event_loop;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod test_chains;
pub mod vsock;

pub use device::{ActivateError, VirtioDevice, VirtioInterrupt};
pub use mmio::MmioTransport;
