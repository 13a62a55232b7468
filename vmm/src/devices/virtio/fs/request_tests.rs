//! The EIO fallback against `MockSplitQueue`: normal requests and
//! malformed chains from a hostile guest.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::fs::test_utils::{add_fuse_request, desc, fuse_in_header};

const N: u16 = 16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn queue(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
    let mut queue: Queue = q.create_queue().unwrap();
    queue.set_ready(true);
    queue
}

fn reply(mem: &GuestMemoryMmap, addr: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

#[test]
fn header_parsing() {
    let h = parse_fuse_in_header(&fuse_in_header(15, 0xdead_beef)).unwrap();
    assert_eq!((h.len, h.opcode, h.unique), (40, 15, 0xdead_beef));
    assert_eq!(
        parse_fuse_in_header(&[0u8; 39]),
        Err(FsRequestError::HeaderTooShort(39))
    );
    assert!(parse_fuse_in_header(&[]).is_err());
    assert!(parse_fuse_in_header(&[0xff; 4096]).is_ok());
    assert_eq!(
        &eio_reply(3)[..],
        &[16, 0, 0, 0, 0xfb, 0xff, 0xff, 0xff, 3, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn requests_get_eio_and_forgets_get_nothing() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
    add_fuse_request(&q, &m, 0, (1, 11), 0x8000, (0x9000, 4096));
    add_fuse_request(&q, &m, 2, (FUSE_FORGET, 12), 0xa000, (0xb000, 16));
    add_fuse_request(&q, &m, 4, (FUSE_BATCH_FORGET, 13), 0xc000, (0xd000, 16));
    let mut queue = queue(&q);
    let d = fail_pending(&mut queue, &m, false, true);
    assert_eq!((d.completed, d.malformed), (3, 0));
    assert!(d.notify);
    assert_eq!(reply(&m, 0x9000), eio_reply(11));
    assert_eq!(reply(&m, 0xb000), [0; 16]);
    assert_eq!(q.used().idx().load(), 3);
    let used: Vec<_> = (0..3)
        .map(|i| q.used().ring().ref_at(i).unwrap().load())
        .collect();
    assert_eq!((used[0].id(), used[0].len()), (0, 16));
    assert_eq!((used[1].id(), used[1].len()), (2, 0));
    // Nothing new: nothing done.
    assert_eq!(
        fail_pending(&mut queue, &m, false, false),
        Drained::default()
    );
}

#[test]
fn hiprio_requests_get_no_reply() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
    add_fuse_request(&q, &m, 0, (36, 5), 0x8000, (0x9000, 16)); // FUSE_INTERRUPT
    let mut queue = queue(&q);
    let d = fail_pending(&mut queue, &m, true, true);
    assert_eq!(d.completed, 1);
    assert_eq!(reply(&m, 0x9000), [0; 16]);
}

#[test]
fn resync_skips_what_the_backend_already_completed() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
    add_fuse_request(&q, &m, 0, (1, 1), 0x8000, (0x9000, 16));
    add_fuse_request(&q, &m, 2, (1, 2), 0xa000, (0xb000, 16));
    // The backend completed the first one before it died.
    q.used().idx().store(1);
    let mut queue = queue(&q);
    let d = fail_pending(&mut queue, &m, false, true);
    assert_eq!(d.completed, 1);
    assert_eq!(reply(&m, 0x9000), [0; 16]);
    assert_eq!(reply(&m, 0xb000), eio_reply(2));
    assert_eq!(q.used().idx().load(), 2);
}

#[test]
fn a_header_split_over_descriptors_is_read() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
    let h = fuse_in_header(1, 77);
    m.write_slice(&h[..10], GuestAddress(0x8000)).unwrap();
    m.write_slice(&h[10..], GuestAddress(0x8100)).unwrap();
    let descs = [
        desc(0x8000, 10, NEXT, 1),
        desc(0x8100, 30, NEXT, 2),
        desc(0x9000, 8, WRITE | NEXT, 3),
        desc(0x9100, 8, WRITE, 0),
    ];
    q.add_desc_chains(&descs, 0).unwrap();
    let mut queue = queue(&q);
    assert_eq!(fail_pending(&mut queue, &m, false, true).completed, 1);
    let mut out = [0u8; 16];
    m.read_slice(&mut out[..8], GuestAddress(0x9000)).unwrap();
    m.read_slice(&mut out[8..], GuestAddress(0x9100)).unwrap();
    assert_eq!(out, eio_reply(77));
}

/// Every malformed chain is completed with length 0 and counted; none
/// panics, spins or writes outside its buffers.
#[test]
fn malformed_chains_are_completed_empty() {
    let cases: Vec<(&str, Vec<virtio_queue::desc::RawDescriptor>)> = vec![
        (
            "header too short",
            vec![desc(0x8000, 20, NEXT, 1), desc(0x9000, 16, WRITE, 0)],
        ),
        ("no reply buffer", vec![desc(0x8000, 40, 0, 0)]),
        (
            "reply too short",
            vec![desc(0x8000, 40, NEXT, 1), desc(0x9000, 8, WRITE, 0)],
        ),
        (
            "readable after writable",
            vec![
                desc(0x8000, 40, NEXT, 1),
                desc(0x9000, 16, WRITE | NEXT, 2),
                desc(0xa000, 8, 0, 0),
            ],
        ),
        ("only writable", vec![desc(0x9000, 64, WRITE, 0)]),
        (
            "header outside memory",
            vec![desc(0x4000_0000, 40, NEXT, 1), desc(0x9000, 16, WRITE, 0)],
        ),
        (
            "reply outside memory",
            vec![desc(0x8000, 40, NEXT, 1), desc(0xffff_fff0, 16, WRITE, 0)],
        ),
        (
            "header crossing the end",
            vec![desc((1 << 20) - 8, 40, NEXT, 1), desc(0x9000, 16, WRITE, 0)],
        ),
    ];
    for (what, descs) in cases {
        let m = mem();
        m.write_slice(&fuse_in_header(1, 1), GuestAddress(0x8000))
            .unwrap();
        let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue = queue(&q);
        let d = fail_pending(&mut queue, &m, false, true);
        assert_eq!((d.completed, d.malformed), (0, 1), "{what}");
        assert_eq!(q.used().idx().load(), 1, "{what}");
        assert_eq!(q.used().ring().ref_at(0).unwrap().load().len(), 0, "{what}");
        assert_ne!(reply(&m, 0x9000), eio_reply(1), "{what}");
    }
}

#[test]
fn loops_and_out_of_range_links_terminate() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
    m.write_slice(&fuse_in_header(1, 1), GuestAddress(0x8000))
        .unwrap();
    // 0 -> 1 -> 0 ... loops; 5 links past the table.
    q.add_desc_chains(&[desc(0x8000, 40, NEXT, 1), desc(0x8000, 40, NEXT, 0)], 0)
        .unwrap();
    q.add_desc_chains(&[desc(0x8000, 40, NEXT, 200)], 5)
        .unwrap();
    let mut queue = queue(&q);
    let d = fail_pending(&mut queue, &m, false, true);
    assert_eq!(d.completed + d.malformed, 2);
    assert_eq!(q.used().idx().load(), 2);
}

#[test]
fn a_bogus_avail_index_is_bounded() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
    add_fuse_request(&q, &m, 0, (1, 1), 0x8000, (0x9000, 16));
    // The guest claims 60000 new entries in a 16-entry ring.
    q.avail().idx().store(60000);
    let mut queue = queue(&q);
    let d = fail_pending(&mut queue, &m, false, true);
    assert!(d.completed + d.malformed <= usize::from(N));
    // An unreadable used ring: nothing is done.
    let mut broken = Queue::try_from(queue.state()).unwrap();
    broken.set_used_ring_address(Some(0x7fff_0000), None);
    assert_eq!(
        fail_pending(&mut broken, &m, false, true),
        Drained::default()
    );
}

#[test]
fn a_queue_that_is_not_ready_is_left_alone() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1000), N);
    add_fuse_request(&q, &m, 0, (1, 1), 0x8000, (0x9000, 16));
    let mut queue: Queue = q.create_queue().unwrap();
    queue.set_ready(false);
    assert_eq!(
        fail_pending(&mut queue, &m, false, true),
        Drained::default()
    );
    assert_eq!(q.used().idx().load(), 0);
}
