//! Tests of the virtio-mmio transport with a dummy device driven by
//! `virtio_queue::mock::MockSplitQueue` playing the guest driver. The
//! register helpers are `pub(super)` for the snapshot tests (`persist_tests.rs`).

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::status::*;
use super::*;
use crate::devices::virtio::device::{
    ActivateError, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use crate::devices::virtio::event_loop::QueueEvents;

pub(super) const QUEUE_SIZE: u16 = 16;
const DUMMY_FEATURES: u64 = 1 << 3;

/// What the dummy device saw, shared with the test.
#[derive(Default)]
struct Seen {
    activations: usize,
    resets: usize,
    acked: u64,
    /// (queue, head index, total chain length) per processed chain.
    used: Vec<(u16, u16, u32)>,
    config_writes: Vec<(u64, Vec<u8>)>,
}

/// What the dummy device serves its queues with, shared with the test
/// (which plays the device thread: `Fixture::serve`).
#[derive(Default)]
struct DummyQueues {
    mem: Option<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Option<Arc<VirtioInterrupt>>,
}

struct Dummy {
    seen: Arc<Mutex<Seen>>,
    fail_activate: bool,
    active: Arc<Mutex<DummyQueues>>,
    kicks: QueueEvents,
    config: [u8; 8],
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        DUMMY_FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.seen.lock().unwrap().acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.config.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Backend("dummy refuses".into()));
        }
        self.seen.lock().unwrap().activations += 1;
        *self.active.lock().unwrap() = DummyQueues {
            mem: Some(mem),
            queues,
            interrupt: Some(interrupt),
        };
        Ok(())
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().resets += 1;
        *self.active.lock().unwrap() = DummyQueues::default();
    }
    fn queue_events(&self) -> &[EventFd] {
        self.kicks.as_slice()
    }
}

struct Fixture {
    mmio: MmioTransport,
    mem: GuestMemoryMmap,
    seen: Arc<Mutex<Seen>>,
    irq: EventFd,
    active: Arc<Mutex<DummyQueues>>,
    kicks: Vec<EventFd>,
}

impl Fixture {
    /// Whether the transport kicked queue `index` since the last look.
    fn kicked(&self, index: usize) -> bool {
        self.kicks[index].read().is_ok()
    }

    /// Play the device thread for a kick of queue `index`: it must have
    /// been kicked; queue 1 stands for a device that breaks, queue 0
    /// uses every chain.
    fn serve(&self, index: u16) {
        assert!(self.kicked(index.into()), "queue {index} was not kicked");
        let mut a = self.active.lock().unwrap();
        let DummyQueues {
            mem,
            queues,
            interrupt,
        } = &mut *a;
        if index == 1 {
            if let Some(irq) = interrupt {
                irq.signal_needs_reset();
            }
            return;
        }
        let (Some(mem), Some(q)) = (mem.as_ref(), queues.get_mut(usize::from(index))) else {
            return;
        };
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len: u32 = chain.clone().map(|d| d.len()).fold(0, u32::saturating_add);
            q.add_used(mem, head, len).unwrap();
            self.seen.lock().unwrap().used.push((index, head, len));
        }
        if let Some(irq) = interrupt {
            irq.signal_used_queue();
        }
    }
}

fn fixture_with(fail_activate: bool) -> Fixture {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let active = Arc::new(Mutex::new(DummyQueues::default()));
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kicks = QueueEvents::new(2).unwrap();
    let test_kicks = kicks.try_clone().unwrap();
    let dev = Dummy {
        seen: seen.clone(),
        fail_activate,
        active: active.clone(),
        kicks,
        config: [1, 2, 3, 4, 5, 6, 7, 8],
    };
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
    let mmio = MmioTransport::new(Box::new(dev), mem.clone(), interrupt);
    Fixture {
        mmio,
        mem,
        seen,
        irq,
        active,
        kicks: test_kicks,
    }
}

fn fixture() -> Fixture {
    fixture_with(false)
}

pub(super) fn r32(m: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read(0, off, &mut b);
    u32::from_le_bytes(b)
}

pub(super) fn w32(m: &mut MmioTransport, off: u64, v: u32) {
    m.write(0, off, &v.to_le_bytes());
}

/// Driver steps up to FEATURES_OK with `features` acknowledged.
pub(super) fn negotiate(m: &mut MmioTransport, features: u64) {
    w32(m, regs::STATUS, ACKNOWLEDGE);
    w32(m, regs::STATUS, ACKNOWLEDGE | DRIVER);
    w32(m, regs::DRIVER_FEATURES_SEL, 0);
    w32(m, regs::DRIVER_FEATURES, features as u32);
    w32(m, regs::DRIVER_FEATURES_SEL, 1);
    w32(m, regs::DRIVER_FEATURES, (features >> 32) as u32);
    w32(m, regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

pub(super) fn setup_queue(m: &mut MmioTransport, index: u32, q: &MockSplitQueue<GuestMemoryMmap>) {
    w32(m, regs::QUEUE_SEL, index);
    w32(m, regs::QUEUE_NUM, u32::from(QUEUE_SIZE));
    let addr = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
    let (lo, hi) = addr(q.desc_table_addr());
    w32(m, regs::QUEUE_DESC_LOW, lo);
    w32(m, regs::QUEUE_DESC_HIGH, hi);
    let (lo, hi) = addr(q.avail_addr());
    w32(m, regs::QUEUE_AVAIL_LOW, lo);
    w32(m, regs::QUEUE_AVAIL_HIGH, hi);
    let (lo, hi) = addr(q.used_addr());
    w32(m, regs::QUEUE_USED_LOW, lo);
    w32(m, regs::QUEUE_USED_HIGH, hi);
    w32(m, regs::QUEUE_READY, 1);
}

pub(super) const ALL_OK: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

/// The whole driver initialisation with queue 0 on `q`, up to DRIVER_OK.
fn bring_up(m: &mut MmioTransport, q: &MockSplitQueue<GuestMemoryMmap>) {
    negotiate(m, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    setup_queue(m, 0, q);
    w32(m, regs::STATUS, ALL_OK);
}

#[test]
fn identification_registers() {
    let mut f = fixture();
    assert_eq!(r32(&mut f.mmio, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r32(&mut f.mmio, regs::VERSION), 2);
    assert_eq!(r32(&mut f.mmio, regs::DEVICE_ID), 42);
    assert_eq!(r32(&mut f.mmio, regs::VENDOR_ID), VENDOR_ID);
    assert_eq!(r32(&mut f.mmio, regs::SHM_LEN_LOW), u32::MAX);
}

#[test]
fn feature_words_by_selector() {
    let mut f = fixture();
    w32(&mut f.mmio, regs::DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        r32(&mut f.mmio, regs::DEVICE_FEATURES),
        DUMMY_FEATURES as u32
    );
    w32(&mut f.mmio, regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r32(&mut f.mmio, regs::DEVICE_FEATURES), 1); // VERSION_1
    w32(&mut f.mmio, regs::DEVICE_FEATURES_SEL, 7);
    assert_eq!(r32(&mut f.mmio, regs::DEVICE_FEATURES), 0);
}

#[test]
fn full_initialisation_activates_the_device() {
    let mut f = fixture();
    negotiate(&mut f.mmio, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    assert_eq!(
        r32(&mut f.mmio, regs::STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    assert_eq!(
        f.seen.lock().unwrap().acked,
        DUMMY_FEATURES | VIRTIO_F_VERSION_1
    );
    w32(&mut f.mmio, regs::QUEUE_SEL, 0);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 0);
    let q = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_SIZE);
    setup_queue(&mut f.mmio, 0, &q);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 1);
    w32(&mut f.mmio, regs::STATUS, ALL_OK);
    assert_eq!(r32(&mut f.mmio, regs::STATUS), ALL_OK);
    assert!(f.mmio.is_activated());
    assert_eq!(f.seen.lock().unwrap().activations, 1);
}

#[test]
fn features_ok_refused_for_unoffered_features_or_no_version_1() {
    let mut f = fixture();
    negotiate(&mut f.mmio, VIRTIO_F_VERSION_1 | (1 << 5));
    assert_eq!(r32(&mut f.mmio, regs::STATUS) & FEATURES_OK, 0);
    let mut g = fixture();
    negotiate(&mut g.mmio, DUMMY_FEATURES);
    assert_eq!(r32(&mut g.mmio, regs::STATUS) & FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK does not activate.
    w32(&mut g.mmio, regs::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert!(!g.mmio.is_activated());
}

#[test]
fn status_bits_out_of_order_or_cleared_are_ignored() {
    let mut f = fixture();
    w32(&mut f.mmio, regs::STATUS, DRIVER);
    assert_eq!(r32(&mut f.mmio, regs::STATUS), 0);
    w32(&mut f.mmio, regs::STATUS, ACKNOWLEDGE | DRIVER);
    w32(&mut f.mmio, regs::STATUS, ACKNOWLEDGE);
    assert_eq!(r32(&mut f.mmio, regs::STATUS), ACKNOWLEDGE | DRIVER);
    w32(&mut f.mmio, regs::STATUS, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(r32(&mut f.mmio, regs::STATUS) & FAILED, FAILED);
}

#[test]
fn wrong_sizes_and_alignment() {
    let mut f = fixture();
    let mut two = [0u8; 2];
    f.mmio.read(0, regs::MAGIC_VALUE, &mut two);
    assert_eq!(two, [0xff, 0xff]);
    let mut eight = [0u8; 8];
    f.mmio.read(0, regs::MAGIC_VALUE, &mut eight);
    assert_eq!(eight, [0xff; 8]);
    let mut four = [0u8; 4];
    f.mmio.read(0, 0x2, &mut four);
    assert_eq!(four, [0xff; 4]);
    // A 1-byte status write is ignored.
    f.mmio.write(0, regs::STATUS, &[ACKNOWLEDGE as u8]);
    assert_eq!(r32(&mut f.mmio, regs::STATUS), 0);
    // Reads of write-only registers return 0; writes to read-only ones are ignored.
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_NOTIFY), 0);
    w32(&mut f.mmio, regs::MAGIC_VALUE, 0);
    assert_eq!(r32(&mut f.mmio, regs::MAGIC_VALUE), MMIO_MAGIC_VALUE);
}

#[test]
fn out_of_range_queue_select() {
    let mut f = fixture();
    negotiate(&mut f.mmio, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    w32(&mut f.mmio, regs::QUEUE_SEL, 2);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_NUM_MAX), 0);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 0);
    w32(&mut f.mmio, regs::QUEUE_NUM, 8);
    w32(&mut f.mmio, regs::QUEUE_READY, 1);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 0);
    w32(&mut f.mmio, regs::QUEUE_SEL, u32::MAX);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_NUM_MAX), 0);
}

#[test]
fn queue_and_feature_writes_need_the_right_state() {
    let mut f = fixture();
    // Queue setup before FEATURES_OK is ignored.
    w32(&mut f.mmio, regs::QUEUE_SEL, 0);
    w32(&mut f.mmio, regs::QUEUE_READY, 1);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 0);
    // Features before DRIVER are ignored.
    w32(&mut f.mmio, regs::DRIVER_FEATURES, 0xffff_ffff);
    negotiate(&mut f.mmio, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    assert_eq!(
        f.seen.lock().unwrap().acked,
        DUMMY_FEATURES | VIRTIO_F_VERSION_1
    );
    let q = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_SIZE);
    setup_queue(&mut f.mmio, 0, &q);
    w32(&mut f.mmio, regs::STATUS, ALL_OK);
    // After DRIVER_OK: features and queue registers are frozen.
    w32(&mut f.mmio, regs::DRIVER_FEATURES_SEL, 0);
    w32(&mut f.mmio, regs::DRIVER_FEATURES, 0);
    w32(&mut f.mmio, regs::QUEUE_SEL, 1);
    w32(&mut f.mmio, regs::QUEUE_NUM, 4);
    w32(&mut f.mmio, regs::QUEUE_READY, 1);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 0);
    w32(&mut f.mmio, regs::QUEUE_SEL, 0);
    w32(&mut f.mmio, regs::QUEUE_READY, 0);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 1);
    assert_eq!(f.seen.lock().unwrap().activations, 1);
    // Setting DRIVER_OK again does not activate twice.
    w32(&mut f.mmio, regs::STATUS, ALL_OK);
    assert_eq!(f.seen.lock().unwrap().activations, 1);
}

#[test]
fn invalid_queue_needs_reset() {
    let mut f = fixture();
    negotiate(&mut f.mmio, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    w32(&mut f.mmio, regs::QUEUE_SEL, 0);
    w32(&mut f.mmio, regs::QUEUE_NUM, u32::from(QUEUE_SIZE));
    // Rings outside guest memory.
    w32(&mut f.mmio, regs::QUEUE_DESC_LOW, 0xf000_0000);
    w32(&mut f.mmio, regs::QUEUE_AVAIL_LOW, 0xf001_0000);
    w32(&mut f.mmio, regs::QUEUE_USED_LOW, 0xf002_0000);
    w32(&mut f.mmio, regs::QUEUE_READY, 1);
    w32(&mut f.mmio, regs::STATUS, ALL_OK);
    assert!(!f.mmio.is_activated());
    assert_ne!(r32(&mut f.mmio, regs::STATUS) & DEVICE_NEEDS_RESET, 0);
    assert_ne!(
        r32(&mut f.mmio, regs::INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
    assert_eq!(r32(&mut f.mmio, regs::CONFIG_GENERATION), 1);
}

#[test]
fn bad_queue_size_is_not_accepted() {
    let mut f = fixture();
    negotiate(&mut f.mmio, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    let q = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_SIZE);
    setup_queue(&mut f.mmio, 0, &q);
    // Not a power of two / above the maximum: virtio-queue keeps the old size.
    w32(&mut f.mmio, regs::QUEUE_READY, 0);
    w32(&mut f.mmio, regs::QUEUE_NUM, 3);
    w32(&mut f.mmio, regs::QUEUE_NUM, 0x1_0010);
    w32(&mut f.mmio, regs::QUEUE_NUM, 64);
    w32(&mut f.mmio, regs::QUEUE_READY, 1);
    w32(&mut f.mmio, regs::STATUS, ALL_OK);
    assert!(f.mmio.is_activated());
}

#[test]
fn failed_activation_needs_reset() {
    let mut f = fixture_with(true);
    negotiate(&mut f.mmio, DUMMY_FEATURES | VIRTIO_F_VERSION_1);
    w32(&mut f.mmio, regs::STATUS, ALL_OK);
    assert!(!f.mmio.is_activated());
    assert_ne!(r32(&mut f.mmio, regs::STATUS) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_device_that_breaks_reports_needs_reset_once_until_reset() {
    let mut f = fixture();
    let q = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_SIZE);
    bring_up(&mut f.mmio, &q);
    assert!(f.mmio.is_activated());
    assert_eq!(r32(&mut f.mmio, regs::STATUS) & DEVICE_NEEDS_RESET, 0);
    w32(&mut f.mmio, regs::QUEUE_NOTIFY, 1);
    f.serve(1);
    assert_eq!(r32(&mut f.mmio, regs::STATUS), ALL_OK | DEVICE_NEEDS_RESET);
    assert_ne!(
        r32(&mut f.mmio, regs::INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
    assert_eq!(f.irq.read().unwrap(), 1);
    // Breaking again sends no second notification.
    w32(&mut f.mmio, regs::QUEUE_NOTIFY, 1);
    f.serve(1);
    assert_eq!(r32(&mut f.mmio, regs::CONFIG_GENERATION), 1);
    assert!(f.irq.read().is_err(), "a second config interrupt");
    // A reset clears it.
    w32(&mut f.mmio, regs::STATUS, 0);
    assert_eq!(r32(&mut f.mmio, regs::STATUS), 0);
}

#[test]
fn reset_clears_everything() {
    let mut f = fixture();
    let q = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), QUEUE_SIZE);
    bring_up(&mut f.mmio, &q);
    w32(&mut f.mmio, regs::STATUS, 0);
    assert_eq!(r32(&mut f.mmio, regs::STATUS), 0);
    assert!(!f.mmio.is_activated());
    assert_eq!(f.seen.lock().unwrap().resets, 1);
    w32(&mut f.mmio, regs::QUEUE_SEL, 0);
    assert_eq!(r32(&mut f.mmio, regs::QUEUE_READY), 0);
    assert_eq!(r32(&mut f.mmio, regs::INTERRUPT_STATUS), 0);
    // And the device can be brought up again.
    bring_up(&mut f.mmio, &q);
    assert_eq!(f.seen.lock().unwrap().activations, 2);
}

#[test]
fn config_space_accesses() {
    let mut f = fixture();
    let mut b = [0u8; 4];
    f.mmio.read(0, regs::CONFIG + 2, &mut b);
    assert_eq!(b, [3, 4, 5, 6]);
    let mut q = [0u8; 8];
    f.mmio.read(0, regs::CONFIG, &mut q);
    assert_eq!(q, [1, 2, 3, 4, 5, 6, 7, 8]);
    // Past the end: zeroes, not garbage.
    let mut past = [0xaau8; 4];
    f.mmio.read(0, regs::CONFIG + 6, &mut past);
    assert_eq!(past, [0; 4]);
    // A 3-byte access is refused.
    let mut three = [0xaau8; 3];
    f.mmio.read(0, regs::CONFIG, &mut three);
    assert_eq!(three, [0; 3]);
    f.mmio.write(0, regs::CONFIG, &[1, 2, 3]);
    f.mmio.write(0, regs::CONFIG + 4, &[9, 9]);
    assert_eq!(f.seen.lock().unwrap().config_writes, vec![(4, vec![9, 9])]);
}

#[test]
fn notify_processes_chains_and_interrupts() {
    let mut f = fixture();
    let mem = f.mem.clone();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    // Two chains: [0 -> 1] and [2].
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(
            0x8000,
            0x100,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        RawDescriptor::from(SplitDescriptor::new(0x9000, 0x200, 0, 0)),
        RawDescriptor::from(SplitDescriptor::new(0xa000, 0x10, 0, 0)),
    ];
    q.add_desc_chains(&descs, 0).unwrap();
    // Notify before DRIVER_OK does nothing.
    w32(&mut f.mmio, regs::QUEUE_NOTIFY, 0);
    assert!(!f.kicked(0), "kicked before DRIVER_OK");
    assert!(f.seen.lock().unwrap().used.is_empty());

    bring_up(&mut f.mmio, &q);
    w32(&mut f.mmio, regs::QUEUE_NOTIFY, 0);
    f.serve(0);
    assert_eq!(
        f.seen.lock().unwrap().used,
        vec![(0, 0, 0x300), (0, 2, 0x10)]
    );
    assert_eq!(q.used().idx().load(), 2);
    assert_eq!(
        r32(&mut f.mmio, regs::INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    assert_eq!(f.irq.read().unwrap(), 1);
    w32(&mut f.mmio, regs::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(r32(&mut f.mmio, regs::INTERRUPT_STATUS), 0);
    // Notifying a queue that does not exist is ignored.
    w32(&mut f.mmio, regs::QUEUE_NOTIFY, 9);
    assert!(!f.kicked(0) && !f.kicked(1), "a kick for queue 9");
    assert_eq!(f.seen.lock().unwrap().used.len(), 2);
}

#[test]
fn malformed_chains_terminate() {
    let mut f = fixture();
    let mem = f.mem.clone();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    // A chain whose `next` is past the queue, and one that loops on itself.
    let descs = [RawDescriptor::from(SplitDescriptor::new(
        0x8000,
        0x100,
        VRING_DESC_F_NEXT as u16,
        200,
    ))];
    q.add_desc_chains(&descs, 0).unwrap();
    let looping = [RawDescriptor::from(SplitDescriptor::new(
        0x9000,
        0x10,
        VRING_DESC_F_NEXT as u16,
        5,
    ))];
    q.add_desc_chains(&looping, 5).unwrap();
    bring_up(&mut f.mmio, &q);
    w32(&mut f.mmio, regs::QUEUE_NOTIFY, 0);
    f.serve(0);
    let used = f.seen.lock().unwrap().used.clone();
    assert_eq!(used.len(), 2);
    // The bad `next` ends the chain after the first descriptor.
    assert_eq!(used[0], (0, 0, 0x100));
    // The loop is cut after at most QUEUE_SIZE descriptors.
    assert!(used[1].2 <= 0x10 * u32::from(QUEUE_SIZE));
}
