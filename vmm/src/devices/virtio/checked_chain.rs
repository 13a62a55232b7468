//! A descriptor chain read once and validated before a device touches it.
//!
//! `virtio_queue::DescriptorChain` stops iterating silently on a loop, a
//! `next` index outside the table or an unreadable descriptor. Devices here
//! never walk a chain directly: `CheckedChain::new` collects it, and turns
//! every such case into a `ChainError` — an empty or truncated chain, too
//! many descriptors, a buffer outside guest memory, or a device-readable
//! buffer after a device-writable one (virtio 1.2 §2.7.4.2).

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index was outside the table, or the chain had no buffer.
    #[error("descriptor chain is empty or its head is outside the table")]
    Empty,
    /// A `next` pointed outside the table, looped, or could not be read.
    #[error("descriptor chain is truncated (loop, bad next index or unreadable table)")]
    Truncated,
    /// More descriptors than the device accepts.
    #[error("descriptor chain has more than {max} descriptors")]
    TooLong {
        /// The device's limit.
        max: usize,
    },
    /// A buffer that is not (entirely) guest RAM.
    #[error("descriptor buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-readable buffer after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A buffer the device must not use in this direction.
    #[error("descriptor chain has the wrong direction: {0}")]
    Direction(&'static str),
    /// Guest memory failed while copying (should not happen after the checks).
    #[error("guest memory access failed at {0:#x}")]
    Memory(u64),
}

/// One guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated chain: its head and its buffers by direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedChain {
    /// Head index, for `add_used`.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

impl CheckedChain {
    /// Walk `chain` (at most `max_descriptors` buffers) and validate it.
    pub fn new(
        chain: DescriptorChain<&GuestMemoryMmap>,
        max_descriptors: usize,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mem = chain.memory();
        let mut out = CheckedChain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut last_has_next = false;
        let mut count = 0usize;
        for desc in chain.clone() {
            count += 1;
            if count > max_descriptors {
                return Err(ChainError::TooLong {
                    max: max_descriptors,
                });
            }
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if seg.len > 0 && !mem.check_range(seg.addr, seg.len as usize) {
                return Err(ChainError::OutsideMemory {
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
            if desc.is_write_only() {
                out.writable.push(seg);
            } else if !out.writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            } else {
                out.readable.push(seg);
            }
            last_has_next = desc.has_next();
        }
        if count == 0 {
            return Err(ChainError::Empty);
        }
        if last_has_next {
            return Err(ChainError::Truncated);
        }
        Ok(out)
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        total(&self.readable)
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        total(&self.writable)
    }
}

/// The sum of the segment lengths.
pub fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Walks `segs` from byte `offset` for `len` bytes, calling `f(addr, range)`
/// with the guest address and the matching range of the caller's buffer.
fn walk(
    segs: &[Segment],
    mut offset: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let mut done = 0usize;
    for seg in segs {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let n = ((seg_len - offset) as usize).min(len - done);
        let addr = seg
            .addr
            .checked_add(offset)
            .ok_or(ChainError::Memory(seg.addr.0))?;
        f(addr, done..done + n)?;
        done += n;
        offset = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(ChainError::Direction("buffer shorter than the request"))
    }
}

/// Copy `buf.len()` bytes starting `offset` bytes into `segs` from guest memory.
pub fn read_from(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ChainError> {
    let len = buf.len();
    walk(segs, offset, len, |addr, r| {
        mem.read_slice(&mut buf[r], addr)
            .map_err(|_| ChainError::Memory(addr.0))
    })
}

/// Copy `data` into `segs` from byte `offset` on, in guest memory.
pub fn write_to(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: u64,
    data: &[u8],
) -> Result<(), ChainError> {
    walk(segs, offset, data.len(), |addr, r| {
        mem.write_slice(&data[r], addr)
            .map_err(|_| ChainError::Memory(addr.0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_chains::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};

    fn check(descs: &[RawDescriptor], max: usize) -> Result<CheckedChain, ChainError> {
        let mem = test_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        CheckedChain::new(chain, max)
    }

    #[test]
    fn good_chain_is_split_by_direction() {
        let c = check(
            &chained(&[
                readable(DATA_ADDR, 16),
                writable(DATA_ADDR + 0x1000, 512),
                writable(DATA_ADDR + 0x2000, 1),
            ]),
            8,
        )
        .unwrap();
        assert_eq!(c.readable.len(), 1);
        assert_eq!(c.writable.len(), 2);
        assert_eq!(c.readable_len(), 16);
        assert_eq!(c.writable_len(), 513);
    }

    #[test]
    fn malformed_chains_are_refused() {
        let out = readable(MEM_SIZE - 8, 16);
        assert!(matches!(
            check(&chained(&[out]), 8),
            Err(ChainError::OutsideMemory { .. })
        ));
        let far = readable(1 << 40, 1);
        assert!(matches!(
            check(&chained(&[far]), 8),
            Err(ChainError::OutsideMemory { .. })
        ));
        let order = chained(&[writable(DATA_ADDR, 1), readable(DATA_ADDR, 1)]);
        assert_eq!(check(&order, 8), Err(ChainError::ReadableAfterWritable));
        let long = chained(&[readable(DATA_ADDR, 1); 5]);
        assert_eq!(check(&long, 4), Err(ChainError::TooLong { max: 4 }));
        // 0 -> 1 -> 0 -> ...: the queue's TTL ends it, we see the dangling NEXT.
        let looped = [
            RawDescriptor::from(SplitDescriptor::new(DATA_ADDR, 1, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA_ADDR, 1, F_NEXT, 0)),
        ];
        assert_eq!(check(&looped, 64), Err(ChainError::Truncated));
        let bad_next = [RawDescriptor::from(SplitDescriptor::new(
            DATA_ADDR, 1, F_NEXT, 999,
        ))];
        assert_eq!(check(&bad_next, 64), Err(ChainError::Truncated));
    }

    #[test]
    fn head_outside_the_table_is_empty() {
        let mem = test_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&chained(&[readable(DATA_ADDR, 1)]), 0)
            .unwrap();
        // Point the first avail entry at descriptor 200 of a 16-entry table.
        mem.write_obj(200u16, vq.avail_addr().unchecked_add(4))
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(CheckedChain::new(chain, 8), Err(ChainError::Empty));
    }

    #[test]
    fn copies_across_segments() {
        let mem = test_memory();
        let segs = [
            Segment {
                addr: GuestAddress(DATA_ADDR),
                len: 3,
            },
            Segment {
                addr: GuestAddress(DATA_ADDR + 0x100),
                len: 5,
            },
        ];
        write_to(&mem, &segs, 1, b"abcdef").unwrap();
        let mut back = [0u8; 6];
        read_from(&mem, &segs, 1, &mut back).unwrap();
        assert_eq!(&back, b"abcdef");
        assert!(write_to(&mem, &segs, 4, b"12345").is_err());
        let mut first = [0u8; 2];
        mem.read_slice(&mut first, GuestAddress(DATA_ADDR + 1))
            .unwrap();
        assert_eq!(&first, b"ab");
    }
}
