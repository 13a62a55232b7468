//! What virtio-rng offers the driver: one queue, no configuration space,
//! and a bound on the bytes one request gets.

/// Size of the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// At most this many random bytes go into one chain, however large it is.
pub const MAX_BYTES_PER_CHAIN: u32 = 64 * 1024;
/// Longest chain we accept (Linux uses one buffer).
pub const MAX_DESCRIPTORS: usize = 16;
