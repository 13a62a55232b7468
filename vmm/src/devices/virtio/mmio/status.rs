//! virtio device status bits (virtio 1.2 §2.1).

/// ACKNOWLEDGE.
pub const ACKNOWLEDGE: u32 = 1;
/// DRIVER.
pub const DRIVER: u32 = 2;
/// DRIVER_OK.
pub const DRIVER_OK: u32 = 4;
/// FEATURES_OK.
pub const FEATURES_OK: u32 = 8;
/// DEVICE_NEEDS_RESET.
pub const DEVICE_NEEDS_RESET: u32 = 64;
/// FAILED.
pub const FAILED: u32 = 128;
