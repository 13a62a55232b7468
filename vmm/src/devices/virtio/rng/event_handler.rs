//! Serving virtio-rng's request queue: each device-writable chain is
//! filled from the host's entropy.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::config::{MAX_BYTES_PER_CHAIN, MAX_DESCRIPTORS};
use super::entropy::{fill_random, EntropyError};
use crate::devices::virtio::checked_chain::{write_to, ChainError, CheckedChain};
use crate::devices::virtio::event_loop::{Control, Event, EventHandler};

/// Why the device stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The host's entropy failed.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The guest gave us a chain we cannot use.
    #[error("malformed request chain")]
    Chain(#[from] ChainError),
    /// The used ring could not be updated.
    #[error("cannot return a buffer to the used ring: {0}")]
    UsedRing(String),
}

/// The activated request queue.
pub struct RngHandler {
    mem: GuestMemoryMmap,
    queue: Queue,
    buf: Vec<u8>,
}

impl RngHandler {
    /// Serve `queue` in `mem`.
    pub fn new(mem: GuestMemoryMmap, queue: Queue) -> Self {
        RngHandler {
            mem,
            queue,
            buf: Vec::new(),
        }
    }

    /// Serve every available chain; returns whether the used ring changed.
    /// A malformed chain goes back empty (so the driver is not stuck on
    /// it) and ends the pass with an error.
    pub fn process_queue(&mut self) -> Result<bool, RngError> {
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let checked = CheckedChain::new(chain, MAX_DESCRIPTORS).and_then(|c| {
                if !c.readable.is_empty() {
                    return Err(ChainError::Direction(
                        "device-readable buffer in an rng request",
                    ));
                }
                if c.writable.is_empty() {
                    return Err(ChainError::Direction("no device-writable buffer"));
                }
                Ok(c)
            });
            let c = match checked {
                Ok(c) => c,
                Err(e) => {
                    let _ = self.queue.add_used(&self.mem, head, 0);
                    return Err(e.into());
                }
            };
            let n = c.writable_len().min(u64::from(MAX_BYTES_PER_CHAIN)) as usize;
            self.buf.resize(n, 0);
            fill_random(&mut self.buf)?;
            write_to(&self.mem, &c.writable, 0, &self.buf)?;
            self.queue
                .add_used(&self.mem, head, n as u32)
                .map_err(|e| RngError::UsedRing(e.to_string()))?;
            used = true;
        }
        Ok(used)
    }
}

impl EventHandler for RngHandler {
    type Error = RngError;

    fn name(&self) -> String {
        "virtio-rng".into()
    }

    fn handle(&mut self, event: Event, _ctl: &mut Control<'_>) -> Result<bool, RngError> {
        match event {
            Event::Queue(_) => self.process_queue(),
            Event::Started | Event::Backend(_) | Event::Timeout => Ok(false),
        }
    }
}
