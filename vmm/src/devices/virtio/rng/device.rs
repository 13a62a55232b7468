//! The virtio-rng device model.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::checked_chain::{write_to, ChainError, CheckedChain};
use crate::devices::virtio::device::finish_queue_pass;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};

/// virtio device id of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Size of the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// At most this many random bytes go into one chain, however large it is.
pub const MAX_BYTES_PER_CHAIN: u32 = 64 * 1024;
/// Longest chain we accept (Linux uses one buffer).
const MAX_DESCRIPTORS: usize = 16;

/// Errors of the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The host's `getrandom` failed.
    #[error("getrandom failed")]
    Entropy(#[source] std::io::Error),
    /// The guest gave us a chain we cannot use.
    #[error("malformed request chain")]
    Chain(#[from] ChainError),
    /// The used ring could not be updated.
    #[error("cannot return a buffer to the used ring: {0}")]
    UsedRing(String),
}

/// Fill `buf` from `getrandom(2)` (the urandom pool; never blocks once the
/// host's pool is initialised).
pub fn fill_random(buf: &mut [u8]) -> Result<(), RngError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe the writable slice `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RngError::Entropy(e));
        }
        done += n as usize;
    }
    Ok(())
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-rng device.
pub struct Rng {
    active: Option<Active>,
    broken: bool,
    buf: Vec<u8>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Self {
        Rng {
            active: None,
            broken: false,
            buf: Vec::new(),
        }
    }

    /// Whether a malformed chain stopped the device (until the driver resets it).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Serve every available chain; returns whether the used ring changed.
    fn process_queue(&mut self) -> Result<bool, RngError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(false);
        };
        let mut used = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let result = CheckedChain::new(chain, MAX_DESCRIPTORS).and_then(|c| {
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
            let written = match result {
                Ok(c) => {
                    let n = c.writable_len().min(u64::from(MAX_BYTES_PER_CHAIN)) as usize;
                    self.buf.resize(n, 0);
                    fill_random(&mut self.buf)?;
                    write_to(&a.mem, &c.writable, 0, &self.buf)?;
                    n as u32
                }
                Err(e) => {
                    // Hand the buffer back empty so the driver is not stuck on it.
                    let _ = a.queue.add_used(&a.mem, head, 0);
                    a.interrupt.signal_used_queue();
                    return Err(e.into());
                }
            };
            a.queue
                .add_used(&a.mem, head, written)
                .map_err(|e| RngError::UsedRing(e.to_string()))?;
            used = true;
        }
        Ok(used)
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        crate::limited!(
            debug,
            "virtio-rng has no configuration space; write ignored"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::BadQueue {
                index: queues.len(),
                reason: "virtio-rng has exactly one queue".into(),
            });
        }
        let queue = queues.remove(0);
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        self.broken = false;
        Ok(())
    }

    fn queue_notify(&mut self, _queue: u16) {
        if self.broken {
            crate::limited!(debug, "virtio-rng is broken; notify ignored until reset");
            return;
        }
        let pass = self.process_queue();
        let interrupt = self.active.as_ref().map(|a| &*a.interrupt);
        finish_queue_pass(&"virtio-rng", pass, interrupt, &mut self.broken);
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }
}
