//! Descriptor builders shared by the device tests (and, later, fuzz
//! targets): plain `RawDescriptor`s, no mock queue needed. The
//! `MockSplitQueue` driver lives in `MockDriver` (tests only).

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// Size of the test guest memory.
pub const MEM_SIZE: u64 = 0x40_0000;
/// Where test buffers start (above the queues the mock places at 0).
pub const DATA_ADDR: u64 = 0x10_0000;

/// A fresh guest memory of `MEM_SIZE` bytes at 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("test guest memory")
}

/// A device-readable buffer.
pub fn readable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

/// A device-writable buffer.
pub fn writable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, F_WRITE, 0))
}

/// Link `descs` into one chain whose first descriptor sits at table index 0.
pub fn chained(descs: &[RawDescriptor]) -> Vec<RawDescriptor> {
    chained_at(0, descs)
}

/// Link `descs` into one chain stored from table index `base` on.
pub fn chained_at(base: u16, descs: &[RawDescriptor]) -> Vec<RawDescriptor> {
    let last = descs.len().saturating_sub(1);
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let (flags, next) = if i == last {
                (d.flags() & !F_NEXT, 0)
            } else {
                (d.flags() | F_NEXT, base + i as u16 + 1)
            };
            RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect()
}

#[cfg(test)]
pub use mock::MockDriver;

/// Wait (10 s at most, then fail naming `what`) until `done` holds: a
/// device thread served what the test posted.
#[cfg(test)]
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed().as_secs() < 10, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(test)]
mod mock {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;

    /// Plays the guest driver for one queue: a `MockSplitQueue` at `base`.
    pub struct MockDriver<'a> {
        vq: MockSplitQueue<'a, GuestMemoryMmap>,
        next_desc: u16,
    }

    impl<'a> MockDriver<'a> {
        /// A queue of `size` entries whose rings start at `base`.
        pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
            MockDriver {
                vq: MockSplitQueue::create(mem, GuestAddress(base), size),
                next_desc: 0,
            }
        }

        /// The `Queue` a device would get at activation.
        pub fn queue(&self) -> Queue {
            self.vq.create_queue().expect("mock queue")
        }

        /// Make `descs` (linked here) available as one chain; returns its head.
        pub fn add(&mut self, descs: &[RawDescriptor]) -> u16 {
            let head = self.next_desc;
            self.add_raw(&chained_at(head, descs));
            head
        }

        /// Store `descs` as they are (their own flags and next indices)
        /// from the next free table index; the first one is made available.
        pub fn add_raw(&mut self, descs: &[RawDescriptor]) {
            self.vq
                .add_desc_chains(descs, self.next_desc)
                .expect("add chain");
            self.next_desc += descs.len() as u16;
        }

        /// Used ring entries so far: (head, written length).
        pub fn used(&self) -> Vec<(u32, u32)> {
            let n = self.vq.used().idx().load();
            (0..n)
                .map(|i| {
                    let e = self
                        .vq
                        .used()
                        .ring()
                        .ref_at(usize::from(i % self.vq_len()))
                        .expect("used entry")
                        .load();
                    (e.id(), e.len())
                })
                .collect()
        }

        fn vq_len(&self) -> u16 {
            // Table size = (avail - desc) / 16.
            ((self.vq.avail_addr().0 - self.vq.desc_table_addr().0) / 16) as u16
        }
    }
}
