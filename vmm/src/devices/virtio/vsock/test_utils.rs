//! Input builders for the vsock unit tests (and a future fuzz target): a
//! guest driver played by `MockSplitQueue`, and a `TestBackend` that
//! records what the device hands it.

use std::collections::VecDeque;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::packet::{VsockHeader, VsockPacket, HDR_SIZE};
use super::uapi::*;
use super::{
    VsockBackend, VsockChannel, VsockCore, VsockEpollListener, VsockError, QUEUE_SIZE,
    VSOCK_HOST_CID,
};
use crate::devices::virtio::device::VirtioInterrupt;

/// Guest CID used by the tests.
pub const TEST_CID: u64 = 3;
/// Guest memory size of a test context.
pub const TEST_MEM_SIZE: usize = 4 << 20;
/// Where test data buffers start.
pub const DATA_START: u64 = 0x10_0000;

/// A stream header from the guest (`src_cid` = `TEST_CID`, to the host).
pub fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
    VsockHeader {
        src_cid: TEST_CID,
        dst_cid: VSOCK_HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: VSOCK_TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

/// One descriptor as the test writes it: (address, length, flags, next).
pub type TestDesc = (u64, u32, u16, u16);

/// A backend that records packets and replays queued ones.
pub struct TestBackend {
    /// Packets the device delivered (header, data).
    pub sent: Vec<(VsockHeader, Vec<u8>)>,
    /// Packets to hand to the guest.
    pub to_guest: VecDeque<(VsockHeader, Vec<u8>)>,
    /// Refuse packets with `Busy`.
    pub busy: bool,
    /// The guest CID set by the device.
    pub cid: u64,
    /// notify() calls.
    pub notified: usize,
    /// reset() calls.
    pub resets: usize,
    evt: EventFd,
}

impl Default for TestBackend {
    fn default() -> Self {
        TestBackend {
            sent: Vec::new(),
            to_guest: VecDeque::new(),
            busy: false,
            cid: 0,
            notified: 0,
            resets: 0,
            evt: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        }
    }
}

impl VsockChannel for TestBackend {
    fn recv_pkt(&mut self, pkt: &mut VsockPacket) -> Result<(), VsockError> {
        let (mut hdr, data) = self.to_guest.pop_front().ok_or(VsockError::NoData)?;
        let buf = pkt.rx_buf();
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        hdr.len = n as u32;
        pkt.hdr = hdr;
        Ok(())
    }

    fn send_pkt(&mut self, pkt: &VsockPacket) -> Result<(), VsockError> {
        if self.busy {
            return Err(VsockError::Busy);
        }
        self.sent.push((pkt.hdr, pkt.data().to_vec()));
        Ok(())
    }

    fn has_pending_rx(&self) -> bool {
        !self.to_guest.is_empty()
    }
}

impl VsockEpollListener for TestBackend {
    fn polled_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
    fn notify(&mut self) {
        let _ = self.evt.read();
        self.notified += 1;
    }
    fn poll_timeout(&self) -> Option<Duration> {
        None
    }
}

impl VsockBackend for TestBackend {
    fn set_guest_cid(&mut self, cid: u64) {
        self.cid = cid;
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.to_guest.clear();
    }
}

/// Guest memory with three queues laid out by `MockSplitQueue` (created
/// once: creating a mock zeroes its rings).
pub struct TestMemory {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// (descriptor table, avail ring, used ring) of each queue.
    layout: [(GuestAddress, GuestAddress, GuestAddress); 3],
}

/// Queue table addresses (rx, tx, event).
pub const QUEUE_ADDRS: [u64; 3] = [0x0, 0x1_0000, 0x2_0000];

impl Default for TestMemory {
    fn default() -> Self {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TEST_MEM_SIZE)]).expect("test memory");
        let layout = QUEUE_ADDRS.map(|a| {
            let m = MockSplitQueue::create(&mem, GuestAddress(a), QUEUE_SIZE);
            (m.desc_table_addr(), m.avail_addr(), m.used_addr())
        });
        TestMemory { mem, layout }
    }
}

impl TestMemory {
    /// A fresh `Queue` over queue `index` (ready, full size).
    pub fn queue(&self, index: usize) -> Queue {
        let (d, a, u) = self.layout[index];
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(d.0 as u32), Some((d.0 >> 32) as u32));
        q.set_avail_ring_address(Some(a.0 as u32), Some((a.0 >> 32) as u32));
        q.set_used_ring_address(Some(u.0 as u32), Some((u.0 >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// The descriptor table of queue `index`.
    pub fn desc_addr(&self, index: usize) -> GuestAddress {
        self.layout[index].0
    }

    /// The avail ring of queue `index`.
    pub fn avail_addr(&self, index: usize) -> GuestAddress {
        self.layout[index].1
    }

    /// A core over the three queues with `backend`.
    pub fn core<B: VsockBackend>(&self, backend: B) -> (VsockCore<B>, EventFd) {
        let queues: Vec<Queue> = (0..3).map(|i| self.queue(i)).collect();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("eventfd")));
        let mut backend = backend;
        backend.set_guest_cid(TEST_CID);
        (
            VsockCore::new(self.mem.clone(), queues, interrupt, backend, TEST_CID),
            irq,
        )
    }

    /// Write raw descriptors at table slots `first..` and make the first
    /// one available (next fields are used as given).
    pub fn add_raw_chain(&self, index: usize, first: u16, descs: &[TestDesc]) {
        let (table, avail, _) = self.layout[index];
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            let at = table.unchecked_add(16 * u64::from(first + i as u16));
            self.mem.write_obj(d, at).expect("store descriptor");
        }
        let idx: u16 = self
            .mem
            .read_obj(avail.unchecked_add(2))
            .expect("avail idx");
        let slot = u64::from(idx % QUEUE_SIZE);
        self.mem
            .write_obj(first, avail.unchecked_add(4 + slot * 2))
            .expect("avail ring");
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .expect("avail idx");
    }

    /// Chain `descs` (address, length, writable) linearly from slot `first`.
    pub fn add_chain(&self, index: usize, first: u16, descs: &[(u64, u32, bool)]) {
        let raw: Vec<TestDesc> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                let next = if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                    first + i as u16 + 1
                } else {
                    0
                };
                (addr, len, flags, next)
            })
            .collect();
        self.add_raw_chain(index, first, &raw);
    }

    /// A guest tx packet: header at `addr`, data right after in a second
    /// descriptor (if any), using table slots `first`, `first + 1`.
    pub fn add_tx_packet(&self, first: u16, addr: u64, hdr: &VsockHeader, data: &[u8]) {
        let mut h = *hdr;
        h.len = data.len() as u32;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(addr))
            .expect("header");
        if data.is_empty() {
            self.add_chain(1, first, &[(addr, HDR_SIZE as u32, false)]);
        } else {
            let daddr = addr + HDR_SIZE as u64;
            self.mem
                .write_slice(data, GuestAddress(daddr))
                .expect("data");
            self.add_chain(
                1,
                first,
                &[
                    (addr, HDR_SIZE as u32, false),
                    (daddr, data.len() as u32, false),
                ],
            );
        }
    }

    /// One writable rx buffer of `len` bytes at `addr` in slot `first`.
    pub fn add_rx_buffer(&self, first: u16, addr: u64, len: u32) {
        self.add_chain(0, first, &[(addr, len, true)]);
    }

    /// Used entries of queue `index`: (descriptor id, length).
    pub fn used(&self, index: usize) -> Vec<(u32, u32)> {
        let used = self.layout[index].2;
        let n: u16 = self.mem.read_obj(used.unchecked_add(2)).expect("used idx");
        (0..u64::from(n))
            .map(|i| {
                let at = used.unchecked_add(4 + 8 * (i % u64::from(QUEUE_SIZE)));
                let id: u32 = self.mem.read_obj(at).expect("used id");
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).expect("used len");
                (id, len)
            })
            .collect()
    }

    /// The packet the device wrote to an rx buffer at `addr`.
    pub fn read_rx(&self, addr: u64) -> (VsockHeader, Vec<u8>) {
        let mut b = [0u8; HDR_SIZE];
        self.mem.read_slice(&mut b, GuestAddress(addr)).expect("rx");
        let h = super::parse_header(&b).expect("header");
        let mut data = vec![0u8; h.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(addr + HDR_SIZE as u64))
            .expect("rx data");
        (h, data)
    }
}
