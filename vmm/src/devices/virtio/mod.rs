//! virtio devices over the virtio-mmio (version 2) transport.

pub mod device;
pub mod mmio;
pub mod vsock;

pub use device::{ActivateError, VirtioDevice, VirtioInterrupt};
pub use mmio::MmioTransport;
