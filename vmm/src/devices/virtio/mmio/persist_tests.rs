//! Transport save/restore with virtio-rng (served on its device thread)
//! and `MockSplitQueue` playing the guest driver.

use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::status::*;
use super::super::tests::{negotiate, r32, setup_queue, w32, ALL_OK, QUEUE_SIZE};
use super::super::{regs, VIRTIO_F_VERSION_1};
use super::*;
use crate::devices::virtio::rng::{Rng, VIRTIO_ID_RNG};
use crate::devices::virtio::test_chains::{test_memory, wait_until, writable, DATA_ADDR};

const BUF_LEN: u32 = 64;

fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ))
}

fn rng_transport(mem: &GuestMemoryMmap) -> MmioTransport {
    MmioTransport::new(Box::new(Rng::new().unwrap()), mem.clone(), interrupt())
}

fn restore_rng(
    mem: &GuestMemoryMmap,
    state: &MmioTransportState,
) -> Result<MmioTransport, PersistError> {
    MmioTransport::restore(
        Box::new(Rng::new().unwrap()),
        mem.clone(),
        interrupt(),
        state,
    )
}

/// Make one writable buffer at `DATA_ADDR + slot * 0x1000` available, with
/// descriptor `slot` as its head.
fn offer(vq: &MockSplitQueue<GuestMemoryMmap>, slot: u16) {
    let addr = DATA_ADDR + u64::from(slot) * 0x1000;
    vq.add_desc_chains(&[writable(addr, BUF_LEN)], slot)
        .unwrap();
}

fn buffer(mem: &GuestMemoryMmap, slot: u16) -> Vec<u8> {
    let mut v = vec![0u8; BUF_LEN as usize];
    mem.read_slice(&mut v, GuestAddress(DATA_ADDR + u64::from(slot) * 0x1000))
        .unwrap();
    v
}

/// (head, length) of every used ring entry up to `idx`.
fn used(vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

/// Notify queue 0 and wait until the device thread has used `total`
/// chains in all; then make sure it uses no more.
fn notify_until(t: &mut MmioTransport, vq: &MockSplitQueue<GuestMemoryMmap>, total: u16) {
    w32(t, regs::QUEUE_NOTIFY, 0);
    wait_until("the notify was not served", || {
        vq.used().idx().load() >= total
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        vq.used().idx().load(),
        total,
        "more chains used than offered"
    );
}

/// An activated rng transport whose queue 0 is `vq`.
fn activated_rng(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> MmioTransport {
    let mut t = rng_transport(mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, vq);
    w32(&mut t, regs::STATUS, ALL_OK);
    assert!(t.is_activated());
    t
}

#[test]
fn buffers_in_flight_survive_save_and_restore() {
    let mem = test_memory();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let mut t = activated_rng(&mem, &vq);
    offer(&vq, 0);
    notify_until(&mut t, &vq, 1);
    assert_eq!(used(&vq), vec![(0, BUF_LEN)]);
    let first = buffer(&mem, 0);
    // The second chain is available but not served when the snapshot is taken.
    offer(&vq, 1);
    assert_eq!(vq.avail().idx().load(), 2);

    let state = t.save().unwrap();
    // The transport's own copy never moved: the progress came from guest memory.
    assert_eq!(t.queues[0].next_used(), 0);
    assert_eq!(
        (state.queues[0].next_avail, state.queues[0].next_used),
        (1, 1)
    );
    assert!(state.activated);
    assert_eq!(state.status, ALL_OK);
    assert_eq!(state.interrupt_status, VIRTIO_MMIO_INT_VRING);
    drop(t);

    let mut r = restore_rng(&mem, &state).unwrap();
    assert!(r.is_activated());
    assert_eq!(r32(&mut r, regs::STATUS), ALL_OK);
    assert_eq!(r32(&mut r, regs::INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    assert_eq!(
        r.save().unwrap(),
        state,
        "restore then save is the identity"
    );

    notify_until(&mut r, &vq, 2);
    assert_eq!(used(&vq), vec![(0, BUF_LEN), (1, BUF_LEN)]);
    // A replay from next_used 0 would leave the same used ring (entries 0
    // and 1 rewritten, idx 2); the first buffer's bytes tell it apart.
    assert_eq!(buffer(&mem, 0), first, "the first chain was served twice");
    assert!(
        buffer(&mem, 1).iter().any(|&b| b != 0),
        "second chain not filled"
    );
    // Nothing more to do: another notify changes nothing.
    notify_until(&mut r, &vq, 2);
    assert_eq!(vq.used().idx().load(), 2);
}

#[test]
fn state_round_trips_through_postcard() {
    let mem = test_memory();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let mut t = activated_rng(&mem, &vq);
    offer(&vq, 0);
    notify_until(&mut t, &vq, 1);
    w32(&mut t, regs::QUEUE_SEL, 7);
    let state = t.save().unwrap();
    let bytes = state.to_bytes().unwrap();
    assert_eq!(MmioTransportState::from_bytes(&bytes).unwrap(), state);

    let odd = MmioTransportState {
        device_type: u32::MAX,
        driver_features: u64::MAX,
        config_generation: 9,
        needs_reset: true,
        queues: vec![QueueSnapshot {
            max_size: 256,
            used_ring: u64::MAX - 3,
            next_avail: u16::MAX,
            event_idx_enabled: true,
            ..QueueSnapshot::default()
        }],
        ..state
    };
    let bytes = odd.to_bytes().unwrap();
    assert_eq!(MmioTransportState::from_bytes(&bytes).unwrap(), odd);
}

fn saved_rng(mem: &GuestMemoryMmap) -> MmioTransportState {
    let vq = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
    activated_rng(mem, &vq).save().unwrap()
}

#[test]
fn restore_refuses_another_device_type() {
    let mem = test_memory();
    let mut state = saved_rng(&mem);
    state.device_type = 2;
    let err = restore_rng(&mem, &state).err().unwrap();
    assert!(
        matches!(
            err,
            PersistError::DeviceType {
                saved: 2,
                device: VIRTIO_ID_RNG
            }
        ),
        "{err:?}"
    );
}

#[test]
fn restore_refuses_another_queue_count_or_max_size() {
    let mem = test_memory();
    let mut state = saved_rng(&mem);
    state.queues.push(state.queues[0]);
    let err = restore_rng(&mem, &state).err().unwrap();
    assert!(
        matches!(
            err,
            PersistError::QueueCount {
                saved: 2,
                device: 1
            }
        ),
        "{err:?}"
    );
    state.queues.truncate(1);
    state.queues[0].max_size = 128;
    let err = restore_rng(&mem, &state).err().unwrap();
    assert!(
        matches!(
            err,
            PersistError::QueueMaxSize {
                index: 0,
                saved: 128,
                device: 256
            }
        ),
        "{err:?}"
    );
}

#[test]
fn restore_refuses_a_ready_queue_outside_guest_memory() {
    let mem = test_memory();
    let mut state = saved_rng(&mem);
    state.queues[0].desc_table = 0xf000_0000;
    state.queues[0].avail_ring = 0xf001_0000;
    state.queues[0].used_ring = 0xf002_0000;
    let err = restore_rng(&mem, &state).err().unwrap();
    assert!(
        matches!(err, PersistError::QueueOutsideMemory { index: 0 }),
        "{err:?}"
    );
}

#[test]
fn restore_refuses_truncated_bytes() {
    let mem = test_memory();
    let bytes = saved_rng(&mem).to_bytes().unwrap();
    for len in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        let err = MmioTransportState::from_bytes(&bytes[..len]).err().unwrap();
        assert!(matches!(err, PersistError::Decode(_)), "{len}: {err:?}");
    }
    let mut long = bytes.clone();
    long.push(0);
    let err = MmioTransportState::from_bytes(&long).err().unwrap();
    assert!(matches!(err, PersistError::TrailingBytes(1)), "{err:?}");
}

type Corrupt = fn(&mut MmioTransportState);
type Expect = fn(&PersistError) -> bool;

#[test]
fn restore_refuses_corrupt_fields() {
    let mem = test_memory();
    let good = saved_rng(&mem);
    let cases: [(&str, Corrupt, Expect); 6] = [
        (
            "size not a power of two",
            |s| s.queues[0].size = 3,
            |e| matches!(e, PersistError::BadQueue { index: 0, .. }),
        ),
        (
            "misaligned used ring",
            |s| s.queues[0].used_ring += 2,
            |e| matches!(e, PersistError::BadQueue { index: 0, .. }),
        ),
        (
            "more in flight than the queue holds",
            |s| s.queues[0].next_avail = 100,
            |e| matches!(e, PersistError::QueueIndices { index: 0, .. }),
        ),
        (
            "unknown interrupt bits",
            |s| s.interrupt_status = 0x10,
            |e| matches!(e, PersistError::InterruptStatus(0x10)),
        ),
        (
            "activated without DRIVER_OK",
            |s| s.status &= !DRIVER_OK,
            |e| matches!(e, PersistError::Inconsistent(_)),
        ),
        (
            "features the device does not offer",
            |s| s.driver_features |= 1 << 5,
            |e| matches!(e, PersistError::Features { .. }),
        ),
    ];
    for (what, corrupt, expect) in cases {
        let mut state = good.clone();
        corrupt(&mut state);
        let err = restore_rng(&mem, &state).err().unwrap();
        assert!(expect(&err), "{what}: {err:?}");
    }
}

#[test]
fn save_refuses_a_used_ring_outside_guest_memory() {
    let mem = test_memory();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let mut t = activated_rng(&mem, &vq);
    t.queues[0].set_used_ring_address(Some(0xf000_0000), None);
    let err = t.save().err().unwrap();
    assert!(
        matches!(
            err,
            PersistError::UsedRingUnreadable {
                index: 0,
                addr: 0xf000_0000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn never_activated_transport_restores_and_comes_up_normally() {
    let mem = test_memory();
    // A transport the driver has not touched, and one stopped at FEATURES_OK.
    let fresh = rng_transport(&mem).save().unwrap();
    let r = restore_rng(&mem, &fresh).unwrap();
    assert!(!r.is_activated());
    assert_eq!(r.status(), 0);

    let mut t = rng_transport(&mem);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    let state = t.save().unwrap();
    assert!(!state.activated);
    let mut r = restore_rng(&mem, &state).unwrap();
    assert!(!r.is_activated());
    assert_eq!(
        r32(&mut r, regs::STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );

    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    setup_queue(&mut r, 0, &vq);
    w32(&mut r, regs::STATUS, ALL_OK);
    assert!(r.is_activated());
    offer(&vq, 0);
    notify_until(&mut r, &vq, 1);
    assert_eq!(used(&vq), vec![(0, BUF_LEN)]);
}

#[test]
fn a_restore_onto_another_device_part_is_refused_and_names_both() {
    use crate::devices::virtio::device_state::DeviceState;
    use crate::devices::virtio::vsock::persist::VsockState;
    let mem = test_memory();
    let mut state = rng_transport(&mem).save().unwrap();
    assert!(matches!(state.device, DeviceState::Rng(_)));
    assert!(restore_rng(&mem, &state).is_ok());
    // A template whose device told the driver something else (here: a
    // vsock CID on what is now an rng) is not continued from.
    state.device = DeviceState::Vsock(VsockState { cid: 3 });
    let err = restore_rng(&mem, &state).err().expect("restored anyway");
    assert!(matches!(err, PersistError::DeviceState { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("cid: 3") && msg.contains("Rng"), "{msg}");
}
