//! virtio-rng against `MockSplitQueue`: normal requests and malformed chains.

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::event_loop::{Event, Inline};
use crate::devices::virtio::test_chains::*;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};

struct Fixture {
    d: Inline<RngHandler>,
    irq: EventFd,
    interrupt: Arc<VirtioInterrupt>,
}

impl Fixture {
    /// The driver notified the queue: one pass, as the device thread runs it.
    fn notify(&mut self) {
        self.d.event(Event::Queue(0));
    }

    fn is_broken(&self) -> bool {
        self.interrupt.needs_reset()
    }
}

fn activate(mem: &GuestMemoryMmap, driver: &MockDriver) -> Fixture {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
    let d = Inline::new(
        RngHandler::new(mem.clone(), driver.queue()),
        interrupt.clone(),
        1,
    )
    .unwrap();
    Fixture { d, irq, interrupt }
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn random_looking(bytes: &[u8]) -> bool {
    bytes.len() >= 16 && bytes.iter().any(|&b| b != bytes[0])
}

#[test]
fn fills_writable_buffers_and_interrupts() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    let a = d.add(&[writable(DATA_ADDR, 64)]);
    let b = d.add(&[
        writable(DATA_ADDR + 0x1000, 32),
        writable(DATA_ADDR + 0x2000, 32),
    ]);
    let mut f = activate(&mem, &d);
    f.notify();
    assert_eq!(d.used(), vec![(u32::from(a), 64), (u32::from(b), 64)]);
    assert!(random_looking(&read(&mem, DATA_ADDR, 64)));
    assert!(random_looking(&read(&mem, DATA_ADDR + 0x2000, 32)));
    assert_eq!(f.irq.read().unwrap(), 1);
    assert!(!f.is_broken());
}

#[test]
fn bytes_per_chain_are_bounded() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    let big = MAX_BYTES_PER_CHAIN * 2;
    d.add(&[writable(DATA_ADDR, big)]);
    let mut f = activate(&mem, &d);
    f.notify();
    assert_eq!(d.used(), vec![(0, MAX_BYTES_PER_CHAIN)]);
    let tail = read(&mem, DATA_ADDR + u64::from(MAX_BYTES_PER_CHAIN), 4096);
    assert!(
        tail.iter().all(|&b| b == 0),
        "wrote past the per-chain limit"
    );
}

#[test]
fn notify_with_nothing_queued_is_harmless() {
    let mem = test_memory();
    let d = MockDriver::new(&mem, 0, 16);
    let mut f = activate(&mem, &d);
    f.notify();
    assert!(d.used().is_empty());
    assert!(f.irq.read().is_err(), "no interrupt without used buffers");
}

/// Every malformed chain: the buffer comes back empty, the device stops
/// (later chains wait for a reset), nothing panics.
fn assert_breaks(descs: &[RawDescriptor], raw: bool) {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    if raw {
        d.add_raw(descs);
    } else {
        d.add(descs);
    }
    let good = d.add(&[writable(DATA_ADDR + 0x8000, 16)]);
    let mut f = activate(&mem, &d);
    f.notify();
    assert!(f.is_broken(), "{descs:?} was accepted");
    assert!(f.interrupt.needs_reset(), "DEVICE_NEEDS_RESET not raised");
    assert_eq!(d.used(), vec![(0, 0)]);
    f.notify();
    assert_eq!(
        d.used().len(),
        1,
        "a broken device must not serve more chains"
    );
    // A reset and a new activation serve the waiting chain.
    let mut q = d.queue();
    virtio_queue::QueueT::set_next_avail(&mut q, 1);
    virtio_queue::QueueT::set_next_used(&mut q, 1);
    let irq = Arc::new(VirtioInterrupt::new(f.irq.try_clone().unwrap()));
    let mut again = Inline::new(RngHandler::new(mem.clone(), q), irq, 1).unwrap();
    again.event(Event::Queue(0));
    assert_eq!(d.used()[1], (u32::from(good), 16));
}

#[test]
fn readable_only_chain_breaks_the_device() {
    assert_breaks(&[readable(DATA_ADDR, 64)], false);
}

#[test]
fn readable_and_writable_chain_breaks_the_device() {
    assert_breaks(
        &[readable(DATA_ADDR, 8), writable(DATA_ADDR + 8, 64)],
        false,
    );
}

#[test]
fn buffer_outside_guest_memory_breaks_the_device() {
    assert_breaks(&[writable(MEM_SIZE - 16, 64)], false);
    assert_breaks(&[writable(u64::MAX - 8, 64)], false);
}

#[test]
fn descriptor_loop_breaks_the_device() {
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(DATA_ADDR, 8, F_WRITE | F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA_ADDR, 8, F_WRITE | F_NEXT, 0)),
    ];
    assert_breaks(&looped, true);
}

#[test]
fn next_outside_the_table_breaks_the_device() {
    let bad = [RawDescriptor::from(SplitDescriptor::new(
        DATA_ADDR,
        8,
        F_WRITE | F_NEXT,
        500,
    ))];
    assert_breaks(&bad, true);
}

#[test]
fn overlong_chain_breaks_the_device() {
    let many: Vec<_> = (0..15).map(|i| writable(DATA_ADDR + i * 16, 16)).collect();
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 32);
    d.add(&many);
    let mut f = activate(&mem, &d);
    f.notify();
    assert!(!f.is_broken(), "15 descriptors are within the limit");
    let mut d = MockDriver::new(&mem, 0, 32);
    let many: Vec<_> = (0..17).map(|i| writable(DATA_ADDR + i * 16, 16)).collect();
    d.add(&many);
    let mut f = activate(&mem, &d);
    f.notify();
    assert!(f.is_broken());
}

#[test]
fn getrandom_fills_large_buffers() {
    let mut buf = vec![0u8; 1 << 20];
    fill_random(&mut buf).unwrap();
    assert!(random_looking(&buf[buf.len() - 64..]));
}

/// The device itself: a kick on its queue event reaches the device thread,
/// which fills the buffer and interrupts; a reset stops the thread.
#[test]
fn the_device_thread_serves_kicks_until_reset() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    let a = d.add(&[writable(DATA_ADDR, 32)]);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
    let mut rng = Rng::new().unwrap();
    assert_eq!(rng.device_type(), 4);
    assert_eq!(rng.queue_events().len(), 1);
    rng.activate(mem.clone(), vec![d.queue()], interrupt.clone())
        .unwrap();
    rng.queue_events()[0].write(1).unwrap();
    wait_until("the kick was not served", || !d.used().is_empty());
    assert_eq!(d.used(), vec![(u32::from(a), 32)]);
    assert!(random_looking(&read(&mem, DATA_ADDR, 32)));
    rng.reset();
    // After the reset nothing serves the queue.
    d.add(&[writable(DATA_ADDR + 0x1000, 32)]);
    rng.queue_events()[0].write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(d.used().len(), 1);
    assert!(!interrupt.needs_reset());
}
