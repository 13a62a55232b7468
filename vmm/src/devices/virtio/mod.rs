//! virtio devices over the virtio-mmio (version 2) transport.

pub mod device;
pub mod fs;
pub mod mmio;

pub use device::{ActivateError, VirtioDevice, VirtioInterrupt};
pub use mmio::MmioTransport;
