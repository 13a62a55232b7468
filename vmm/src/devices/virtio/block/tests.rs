//! virtio-blk against `MockSplitQueue`: reads, writes, flush, GET_ID,
//! refused requests (status) and malformed chains (device stops).

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::request::*;
use super::test_utils::*;
use super::*;
use crate::devices::virtio::event_loop::{Event, Inline};
use crate::devices::virtio::test_chains::*;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};

const SECTORS: u64 = 64;

/// A disk of 64 sectors where byte i of sector s is (s + i) & 0xff.
fn image() -> TempFile {
    let tmp = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..SECTORS * 512)
        .map(|i| ((i / 512 + i % 512) & 0xff) as u8)
        .collect();
    std::fs::write(tmp.as_path(), bytes).unwrap();
    tmp
}

struct Fixture {
    blk: Block,
    d: Inline<BlockHandler>,
    irq: EventFd,
    interrupt: Arc<VirtioInterrupt>,
    _image: TempFile,
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

fn activate_with(mem: &GuestMemoryMmap, d: &MockDriver, cfg: impl Fn(&mut BlockConfig)) -> Fixture {
    let image = image();
    let mut c = BlockConfig::new(image.as_path());
    cfg(&mut c);
    let blk = Block::new(&c).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
    let handler = blk.handler(mem.clone(), d.queue());
    let d = Inline::new(handler, interrupt.clone(), 1).unwrap();
    Fixture {
        blk,
        d,
        irq,
        interrupt,
        _image: image,
    }
}

fn activate(mem: &GuestMemoryMmap, d: &MockDriver) -> Fixture {
    activate_with(mem, d, |_| {})
}

fn guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn features_and_config_space() {
    let mem = test_memory();
    let d = MockDriver::new(&mem, 0, 16);
    let f = activate(&mem, &d);
    assert_eq!(f.blk.device_type(), 2);
    assert_eq!(f.blk.features(), VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX);
    let mut cap = [0u8; 8];
    f.blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut seg = [0u8; 4];
    f.blk.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    let mut past = [0xeeu8; 4];
    f.blk.read_config(22, &mut past);
    assert_eq!(
        past,
        [0, 0, 0xee, 0xee],
        "bytes past the config are untouched"
    );
    let ro = activate_with(&mem, &d, |c| c.read_only = true);
    assert_ne!(ro.blk.features() & VIRTIO_BLK_F_RO, 0);
}

#[test]
fn reads_sectors_into_guest_memory() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    put_header(&mem, VIRTIO_BLK_T_IN, 3);
    d.add(&read_chain(1024));
    let mut f = activate(&mem, &d);
    f.notify();
    assert_eq!(d.used(), vec![(0, 1025)]);
    assert_eq!(status(&mem), Status::Ok as u8);
    let data = guest(&mem, BUF_ADDR, 1024);
    assert_eq!(data[0], 3);
    assert_eq!(data[1], 4);
    assert_eq!(data[512], 4, "second sector starts at s + 0");
    assert_eq!(f.irq.read().unwrap(), 1);
}

#[test]
fn writes_reach_the_file_and_flush_succeeds() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    mem.write_slice(&[0x5a; 512], GuestAddress(BUF_ADDR))
        .unwrap();
    put_header(&mem, VIRTIO_BLK_T_OUT, 10);
    d.add(&write_chain(512));
    let mut f = activate(&mem, &d);
    f.notify();
    assert_eq!(d.used(), vec![(0, 1)]);
    assert_eq!(status(&mem), 0);
    let on_disk = std::fs::read(f._image.as_path()).unwrap();
    assert!(on_disk[10 * 512..11 * 512].iter().all(|&b| b == 0x5a));
    assert_eq!(on_disk[11 * 512], 11, "the next sector is untouched");
    put_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    d.add(&bare_chain());
    f.notify();
    assert_eq!(status(&mem), 0);
}

#[test]
fn data_split_over_many_segments() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    put_header(&mem, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![readable(HEADER_ADDR, 16)];
    for i in 0..4 {
        descs.push(writable(BUF_ADDR + i * 0x1000, 128));
    }
    descs.push(writable(STATUS_ADDR, 1));
    d.add(&descs);
    let mut f = activate(&mem, &d);
    f.notify();
    assert_eq!(d.used(), vec![(0, 513)]);
    assert_eq!(guest(&mem, BUF_ADDR + 0x3000, 2), vec![128, 129]);
}

#[test]
fn get_id_returns_the_serial() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    put_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    d.add(&read_chain(ID_LEN as u32));
    let mut f = activate_with(&mem, &d, |c| c.serial = Some("cocoon-disk".into()));
    f.notify();
    assert_eq!(d.used(), vec![(0, 21)]);
    let id = guest(&mem, BUF_ADDR, ID_LEN);
    assert_eq!(&id[..11], b"cocoon-disk");
    assert!(id[11..].iter().all(|&b| b == 0));
}

#[test]
fn refused_requests_get_a_status_and_the_device_keeps_going() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 64);
    let mut f = activate_with(&mem, &d, |c| c.read_only = true);
    let cases: [(u32, u64, Vec<RawDescriptor>, Status); 5] = [
        (VIRTIO_BLK_T_OUT, 0, write_chain(512), Status::IoErr), // read-only
        (VIRTIO_BLK_T_IN, SECTORS, read_chain(512), Status::IoErr), // past the end
        (
            VIRTIO_BLK_T_IN,
            SECTORS - 1,
            read_chain(1024),
            Status::IoErr,
        ), // straddles the end
        (VIRTIO_BLK_T_IN, 0, read_chain(100), Status::IoErr),   // not whole sectors
        (11, 0, bare_chain(), Status::Unsupported),             // DISCARD: not offered
    ];
    for (i, (t, sector, chain, want)) in cases.into_iter().enumerate() {
        put_header(&mem, t, sector);
        d.add(&chain);
        f.notify();
        assert_eq!(status(&mem), want as u8, "case {i}");
        assert_eq!(d.used()[i].1, 1, "case {i}: only the status is written");
    }
    assert!(!f.is_broken());
    // Reading a sector from the read-only disk still works.
    put_header(&mem, VIRTIO_BLK_T_IN, 1);
    d.add(&read_chain(512));
    f.notify();
    assert_eq!(status(&mem), 0);
    assert_eq!(f._image.as_file().metadata().unwrap().len(), SECTORS * 512);
}

/// A malformed chain: it comes back with length 0, the device stops, later
/// chains wait for a reset, nothing panics.
fn assert_breaks(descs: &[RawDescriptor], raw: bool, header: Option<(u32, u64)>) {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 256);
    if let Some((t, s)) = header {
        put_header(&mem, t, s);
    }
    if raw {
        d.add_raw(descs);
    } else {
        d.add(descs);
    }
    let mut f = activate(&mem, &d);
    f.notify();
    assert!(f.is_broken(), "{descs:?} was accepted");
    assert!(f.interrupt.needs_reset(), "DEVICE_NEEDS_RESET not raised");
    assert_eq!(d.used(), vec![(0, 0)]);
    put_header(&mem, VIRTIO_BLK_T_IN, 0);
    d.add(&read_chain(512));
    f.notify();
    assert_eq!(
        d.used().len(),
        1,
        "a broken device must not serve more chains"
    );
}

#[test]
fn header_too_short() {
    let descs = [readable(HEADER_ADDR, 8), writable(STATUS_ADDR, 1)];
    assert_breaks(&descs, false, Some((VIRTIO_BLK_T_IN, 0)));
}

#[test]
fn header_in_a_writable_buffer() {
    let descs = [writable(HEADER_ADDR, 16), writable(STATUS_ADDR, 1)];
    assert_breaks(&descs, false, Some((VIRTIO_BLK_T_IN, 0)));
}

#[test]
fn no_status_byte() {
    assert_breaks(
        &[readable(HEADER_ADDR, 16), readable(BUF_ADDR, 512)],
        false,
        Some((VIRTIO_BLK_T_OUT, 0)),
    );
}

#[test]
fn read_data_in_a_readable_buffer() {
    assert_breaks(&write_chain(512), false, Some((VIRTIO_BLK_T_IN, 0)));
}

#[test]
fn write_data_in_a_writable_buffer() {
    assert_breaks(&read_chain(512), false, Some((VIRTIO_BLK_T_OUT, 0)));
}

#[test]
fn readable_after_writable() {
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(STATUS_ADDR, 1),
        readable(BUF_ADDR, 512),
    ];
    assert_breaks(&descs, false, Some((VIRTIO_BLK_T_OUT, 0)));
}

#[test]
fn buffer_outside_guest_memory() {
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(MEM_SIZE - 256, 512),
        writable(STATUS_ADDR, 1),
    ];
    assert_breaks(&descs, false, Some((VIRTIO_BLK_T_IN, 0)));
    let descs = [readable(u64::MAX - 4, 16), writable(STATUS_ADDR, 1)];
    assert_breaks(&descs, false, None);
}

#[test]
fn descriptor_loop() {
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(HEADER_ADDR, 16, F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(STATUS_ADDR, 1, F_WRITE | F_NEXT, 0)),
    ];
    assert_breaks(&looped, true, Some((VIRTIO_BLK_T_IN, 0)));
}

#[test]
fn overlong_chain() {
    let mut descs = vec![readable(HEADER_ADDR, 16)];
    for i in 0..u64::from(SEG_MAX) + 1 {
        descs.push(writable(BUF_ADDR + i * 512, 512));
    }
    descs.push(writable(STATUS_ADDR, 1));
    assert_breaks(&descs, false, Some((VIRTIO_BLK_T_IN, 0)));
}

#[test]
fn oversized_request_is_an_io_error_not_a_crash() {
    // 17 MiB of data in one request exceeds MAX_DATA_BYTES (and the disk).
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 24 << 20)]).unwrap();
    let mut d = MockDriver::new(&mem, 0, 16);
    put_header(&mem, VIRTIO_BLK_T_IN, 0);
    d.add(&[
        readable(HEADER_ADDR, 16),
        writable(2 << 20, 17 << 20),
        writable(STATUS_ADDR, 1),
    ]);
    let mut f = activate(&mem, &d);
    f.notify();
    assert_eq!(status(&mem), Status::IoErr as u8);
    assert!(!f.is_broken());
}

/// The device itself: a kick on its queue event reaches the device thread,
/// which reads the sectors and interrupts; a reset stops the thread.
#[test]
fn the_device_thread_serves_kicks_until_reset() {
    let mem = test_memory();
    let mut d = MockDriver::new(&mem, 0, 16);
    put_header(&mem, VIRTIO_BLK_T_IN, 3);
    d.add(&read_chain(512));
    let image = image();
    let mut blk = Block::new(&BlockConfig::new(image.as_path())).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
    blk.activate(mem.clone(), vec![d.queue()], interrupt.clone())
        .unwrap();
    blk.queue_events()[0].write(1).unwrap();
    wait_until("the kick was not served", || !d.used().is_empty());
    assert_eq!(d.used(), vec![(0, 513)]);
    assert_eq!(status(&mem), Status::Ok as u8);
    assert_eq!(guest(&mem, BUF_ADDR, 2), vec![3, 4]);
    assert_eq!(irq.read().unwrap(), 1);
    blk.reset();
    put_header(&mem, VIRTIO_BLK_T_IN, 4);
    d.add(&read_chain(512));
    blk.queue_events()[0].write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(d.used().len(), 1, "served after the reset");
}
