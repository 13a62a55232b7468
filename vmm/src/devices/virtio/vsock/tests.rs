//! The device against `MockSplitQueue`: normal traffic both ways and every
//! kind of malformed chain or header.

use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress};

use super::packet::HDR_SIZE;
use super::test_utils::*;
use super::uapi::*;
use super::*;
use crate::devices::virtio::VirtioDevice;

const A: u64 = DATA_START;
const B: u64 = DATA_START + 0x2_0000;

fn rw(data: &[u8]) -> (VsockHeader, Vec<u8>) {
    (guest_hdr(OP_RW, 1000, 52), data.to_vec())
}

#[test]
fn guest_packet_reaches_the_backend() {
    let t = TestMemory::default();
    let (mut core, irq) = t.core(TestBackend::default());
    let (hdr, data) = rw(b"hello host");
    t.add_tx_packet(0, A, &hdr, &data);
    core.process_all();
    assert_eq!(core.backend.sent.len(), 1);
    assert_eq!(core.backend.sent[0].0.op, OP_RW);
    assert_eq!(core.backend.sent[0].1, b"hello host");
    assert_eq!(t.used(TXQ), vec![(0, 0)]);
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn header_only_packets_and_request_response() {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    t.add_tx_packet(0, A, &guest_hdr(OP_REQUEST, 1000, 52), &[]);
    core.process_tx();
    assert_eq!(core.backend.sent[0].0.op, OP_REQUEST);
    let mut resp = guest_hdr(OP_RESPONSE, 52, 1000);
    resp.src_cid = VSOCK_HOST_CID;
    resp.dst_cid = TEST_CID;
    core.backend.to_guest.push_back((resp, Vec::new()));
    t.add_rx_buffer(0, B, 4096);
    core.process_rx();
    let (h, d) = t.read_rx(B);
    assert_eq!(h.op, OP_RESPONSE);
    assert!(d.is_empty());
    assert_eq!(t.used(RXQ), vec![(0, HDR_SIZE as u32)]);
}

#[test]
fn host_data_fills_guest_buffers_and_waits_for_more() {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    let mut hdr = guest_hdr(OP_RW, 52, 1000);
    hdr.src_cid = VSOCK_HOST_CID;
    hdr.dst_cid = TEST_CID;
    core.backend.to_guest.push_back((hdr, vec![7u8; 3000]));
    core.backend.to_guest.push_back((hdr, vec![8u8; 10]));
    // No rx buffers: nothing is lost, nothing spins.
    core.process_all();
    assert_eq!(core.backend.to_guest.len(), 2);
    // A buffer split over two descriptors.
    t.add_chain(0, 0, &[(B, 20, true), (B + 0x100, 4000, true)]);
    core.process_rx();
    assert_eq!(t.used(RXQ), vec![(0, (HDR_SIZE + 3000) as u32)]);
    let mut first = [0u8; 20];
    t.mem.read_slice(&mut first, GuestAddress(B)).unwrap();
    assert_eq!(
        parse_header(&[&first[..], &[0u8; 24]].concat()[..]).map(|h| h.src_cid),
        Ok(2)
    );
    t.add_rx_buffer(2, B + 0x2000, 1000);
    core.process_rx();
    assert_eq!(t.read_rx(B + 0x2000).1, vec![8u8; 10]);
    assert!(core.backend.to_guest.is_empty());
}

#[test]
fn busy_backend_leaves_packets_on_the_queue() {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    core.backend.busy = true;
    let (hdr, data) = rw(b"later");
    t.add_tx_packet(0, A, &hdr, &data);
    core.process_all();
    assert!(core.is_tx_stalled());
    assert!(t.used(TXQ).is_empty());
    core.backend.busy = false;
    core.process_all();
    assert_eq!(core.backend.sent.len(), 1);
    assert_eq!(t.used(TXQ).len(), 1);
}

/// A malformed tx chain is returned unused-length and dropped; the device
/// stays healthy and the next good packet goes through.
fn assert_dropped(add: impl FnOnce(&TestMemory)) {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    add(&t);
    core.process_all();
    assert!(core.backend.sent.is_empty(), "{:?}", core.backend.sent);
    assert_eq!(t.used(TXQ).len(), 1);
    assert_eq!(t.used(TXQ)[0].1, 0);
    assert!(!core.is_broken());
    let (hdr, data) = rw(b"ok");
    t.add_tx_packet(10, A + 0x1000, &hdr, &data);
    core.process_all();
    assert_eq!(core.backend.sent.len(), 1);
}

#[test]
fn header_too_short() {
    assert_dropped(|t| t.add_chain(1, 0, &[(A, 20, false)]));
}

#[test]
fn header_split_over_descriptors_is_fine() {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    let mut h = guest_hdr(OP_RW, 1000, 52);
    h.len = 3;
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend_from_slice(b"abc");
    // The header's first 10 bytes in one descriptor, the rest of it and
    // the data in another.
    t.mem.write_slice(&bytes[..10], GuestAddress(A)).unwrap();
    t.mem.write_slice(&bytes[10..], GuestAddress(B)).unwrap();
    t.add_chain(
        1,
        0,
        &[(A, 10, false), (B, (bytes.len() - 10) as u32, false)],
    );
    core.process_all();
    assert_eq!(core.backend.sent.len(), 1, "{:?}", core.backend.sent);
    let (got, data) = &core.backend.sent[0];
    assert_eq!(
        (got.op, got.src_port, got.dst_port, got.len),
        (OP_RW, 1000, 52, 3)
    );
    assert_eq!(data, b"abc");
    assert_eq!(t.used(TXQ), vec![(0, 0)]);
    assert!(!core.is_broken());
}

#[test]
fn a_packet_claiming_the_host_cid_as_source_is_dropped() {
    assert_dropped(|t| {
        let mut h = guest_hdr(OP_REQUEST, 1000, 52);
        h.src_cid = 2;
        t.add_tx_packet(0, A, &h, &[]);
    });
}

#[test]
fn unusable_rx_buffers_are_returned_empty() {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    let (hdr, data) = rw(b"x");
    core.backend.to_guest.push_back((hdr, data));
    t.add_chain(0, 0, &[(B, 4096, false)]); // read-only
    t.add_rx_buffer(1, B + 0x1000, 20); // too small for a header
    t.add_rx_buffer(2, TEST_MEM_SIZE as u64 - 10, 4096); // outside memory
    t.add_rx_buffer(3, B + 0x3000, 4096);
    core.process_rx();
    let used = t.used(RXQ);
    assert_eq!(used.len(), 4);
    assert_eq!(&used[..3], &[(0, 0), (1, 0), (2, 0)]);
    assert_eq!(used[3], (3, HDR_SIZE as u32 + 1));
    assert!(!core.is_broken());
}

#[test]
fn a_wild_avail_index_breaks_only_this_device() {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    let avail = t.avail_addr(TXQ);
    t.mem.write_obj(1000u16, avail.unchecked_add(2)).unwrap();
    assert!(!core.needs_reset());
    core.process_all();
    assert!(core.is_broken());
    assert!(core.needs_reset(), "DEVICE_NEEDS_RESET not raised");
    core.process_all();
    assert!(core.backend.sent.is_empty());
}

#[test]
fn device_config_and_cid_limits() {
    assert!(matches!(
        Vsock::new(2, TestBackend::default()),
        Err(VsockError::BadCid(2))
    ));
    let dev = Vsock::new(0x1234, TestBackend::default()).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_VSOCK);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1234);
    // The driver may read the 64-bit CID as two 32-bit halves.
    let mut lo = [0u8; 4];
    let mut hi = [0xaau8; 4];
    dev.read_config(0, &mut lo);
    dev.read_config(4, &mut hi);
    assert_eq!(
        (u32::from_le_bytes(lo), u32::from_le_bytes(hi)),
        (0x1234, 0)
    );
    // A read running past the 8 config bytes (or at an absurd offset)
    // leaves the buffer alone.
    let mut b = [0xaau8; 4];
    dev.read_config(6, &mut b);
    assert_eq!(b, [0xaa; 4]);
    let mut b = [0xaau8; 2];
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0xaa; 2]);
}

#[test]
fn device_thread_processes_kicks_and_stops_on_reset() {
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;
    let t = TestMemory::default();
    let mut dev = Vsock::new(TEST_CID, TestBackend::default()).unwrap();
    let queues = (0..3).map(|i| t.queue(i)).collect::<Vec<_>>();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(crate::devices::virtio::VirtioInterrupt::new(
        irq.try_clone().unwrap(),
    ));
    dev.activate(t.mem.clone(), queues, interrupt).unwrap();
    let (hdr, data) = rw(b"threaded");
    t.add_tx_packet(0, A, &hdr, &data);
    dev.queue_events()[TXQ].write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.used(TXQ).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(t.used(TXQ).len(), 1);
    dev.reset();
    let backend = dev.backend_for_tests().expect("backend back after reset");
    assert_eq!(backend.sent.len(), 1);
    assert_eq!(backend.resets, 1);
}

/// The helpers lay descriptors out as the virtio spec does (le64 addr,
/// le32 len, le16 flags with NEXT = 1 and WRITE = 2, le16 next; 16 bytes
/// each), checked against the spec's numbers, not the bindings' names.
#[test]
fn test_chains_have_the_spec_descriptor_layout() {
    let t = TestMemory::default();
    t.add_chain(RXQ, 4, &[(0x1234_5678, 20, false), (B, 4000, true)]);
    let table = t.desc_addr(RXQ);
    let mut raw = [0u8; 32];
    t.mem
        .read_slice(&mut raw, table.unchecked_add(16 * 4))
        .unwrap();
    let le16 = |o: usize| u16::from_le_bytes(raw[o..o + 2].try_into().unwrap());
    let le32 = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap());
    let le64 = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap());
    // First: read-only, chained (NEXT = 1) to slot 5.
    assert_eq!(
        (le64(0), le32(8), le16(12), le16(14)),
        (0x1234_5678, 20, 1, 5)
    );
    // Second: device-writable (WRITE = 2), last of the chain.
    assert_eq!((le64(16), le32(24), le16(28), le16(30)), (B, 4000, 2, 0));
}

#[test]
fn a_restored_device_announces_a_transport_reset_first() {
    let t = TestMemory::default();
    let (core, irq) = t.core(TestBackend::default());
    let mut core = core.with_transport_reset();
    // No event buffer yet: nothing posted, still pending.
    assert!(!core.announce_transport_reset());
    t.add_chain(EVQ, 0, &[(A, 8, true)]);
    t.mem.write_obj(0xffff_ffffu32, GuestAddress(A)).unwrap();
    assert!(core.announce_transport_reset());
    assert_eq!(t.used(EVQ), vec![(0, 4)]);
    let id: u32 = t.mem.read_obj(GuestAddress(A)).unwrap();
    assert_eq!(id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
    assert_eq!(irq.read().unwrap(), 1);
    // Once only.
    t.add_chain(EVQ, 1, &[(B, 8, true)]);
    assert!(!core.announce_transport_reset());
    assert_eq!(t.used(EVQ).len(), 1);
}

#[test]
fn a_fresh_device_announces_nothing_and_bad_event_buffers_are_returned_empty() {
    let t = TestMemory::default();
    let (mut core, _irq) = t.core(TestBackend::default());
    t.add_chain(EVQ, 0, &[(A, 8, true)]);
    assert!(!core.announce_transport_reset());
    assert!(t.used(EVQ).is_empty());

    // Read-only, or too small for the 4-byte event: used with length 0.
    for (slot, desc) in [(1u16, (B, 8, false)), (2, (B, 2, true))] {
        let t = TestMemory::default();
        let (core, _irq) = t.core(TestBackend::default());
        let mut core = core.with_transport_reset();
        t.add_chain(EVQ, slot, &[desc]);
        assert!(core.announce_transport_reset());
        assert_eq!(t.used(EVQ), vec![(u32::from(slot), 0)], "{desc:?}");
        assert!(!core.is_broken());
    }
}

fn host_request() -> (VsockHeader, Vec<u8>) {
    let mut h = guest_hdr(OP_REQUEST, 52, 1024);
    h.src_cid = VSOCK_HOST_CID;
    h.dst_cid = TEST_CID;
    (h, Vec::new())
}

#[test]
fn host_packets_wait_until_the_driver_has_handled_the_reset() {
    let t = TestMemory::default();
    let (core, _irq) = t.core(TestBackend::default());
    let mut core = core.with_transport_reset();
    t.add_chain(EVQ, 0, &[(A, 8, true)]);
    assert!(core.announce_transport_reset());
    // A connection made right after the restore: held back, or the
    // driver's reset (handled later) would drop it too.
    core.backend.to_guest.push_back(host_request());
    t.add_rx_buffer(0, B, 4096);
    assert!(!core.process_rx());
    assert!(t.used(RXQ).is_empty());
    assert!(core.poll_timeout().is_some_and(|d| d <= RESET_ACK_LIMIT));
    // The driver handled the event and re-posted its buffer.
    t.add_chain(EVQ, 1, &[(A, 8, true)]);
    assert!(core.process_rx());
    assert_eq!(t.read_rx(B).0.op, OP_REQUEST);
}

#[test]
fn host_packets_go_on_when_the_driver_never_acknowledges_the_reset() {
    let t = TestMemory::default();
    let (core, _irq) = t.core(TestBackend::default());
    let limit = Duration::from_millis(200);
    let mut core = core.with_transport_reset().with_reset_ack_limit(limit);
    t.add_chain(EVQ, 0, &[(A, 8, true)]);
    assert!(core.announce_transport_reset());
    core.backend.to_guest.push_back(host_request());
    t.add_rx_buffer(0, B, 4096);
    assert!(!core.process_rx());
    std::thread::sleep(limit);
    assert!(core.process_rx(), "held past the limit");
}
