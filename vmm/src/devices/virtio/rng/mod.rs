//! virtio-rng (entropy device, id 4): one request queue whose device-writable
//! buffers are filled from the host's `getrandom(2)`.

mod device;
#[cfg(test)]
mod tests;

pub use device::{fill_random, Rng, RngError, MAX_BYTES_PER_CHAIN, RNG_QUEUE_SIZE, VIRTIO_ID_RNG};
