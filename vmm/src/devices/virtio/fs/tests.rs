//! The fs device against a fake vhost-user backend: the handshake,
//! activation and reset sequences, and a backend that dies.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Connection, GUEST_FEATURES};
use super::request::{FUSE_FORGET, FUSE_OUT_HEADER_LEN};
use super::test_utils::{add_fuse_request, FakeBackend, FakeOptions};
use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::device::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::{MmioTransport, VirtioDevice, VirtioInterrupt};
use crate::vstate::memory::{create_guest_ram, GuestRam};

const V1: u64 = 1 << 32;
const PF: u64 = 1 << 30;
const QSIZE: u16 = 16;

fn config() -> FsConfig {
    let mut c = FsConfig::new("share", "/nonexistent.sock").unwrap();
    c.queue_size = QSIZE;
    c
}

fn device(opts: FakeOptions) -> (Fs, FakeBackend) {
    let (fake, stream) = FakeBackend::spawn(opts);
    let conn = Connection::handshake(stream, 2).unwrap();
    (Fs::with_connection(config(), conn).unwrap(), fake)
}

struct Guest<'a> {
    queues: [MockSplitQueue<'a, GuestMemoryMmap>; 2],
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Guest {
            queues: [
                MockSplitQueue::create(mem, GuestAddress(0x10000), QSIZE),
                MockSplitQueue::create(mem, GuestAddress(0x20000), QSIZE),
            ],
        }
    }
    fn driver_queues(&self) -> Vec<Queue> {
        self.queues
            .iter()
            .map(|q| {
                let mut q: Queue = q.create_queue().unwrap();
                q.set_ready(true);
                q
            })
            .collect()
    }
}

fn interrupt() -> (Arc<VirtioInterrupt>, EventFd) {
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    (
        Arc::new(VirtioInterrupt::new(evt.try_clone().unwrap())),
        evt,
    )
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ram() -> GuestRam {
    create_guest_ram(4 << 20).unwrap()
}

#[test]
fn handshake_negotiates_what_we_need() {
    let (fs, fake) = device(FakeOptions::default());
    assert_eq!(
        fake.calls(),
        [
            "SET_OWNER",
            "GET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "SET_PROTOCOL_FEATURES",
            "GET_QUEUE_NUM"
        ]
    );
    let want = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE;
    assert_eq!(fake.state.lock().unwrap().acked_protocol, want.bits());
    assert_eq!(fs.features(), GUEST_FEATURES);
    assert_eq!(fs.device_type(), VIRTIO_ID_FS);
    assert_eq!(fs.queue_max_sizes(), &[QSIZE, QSIZE]);
    assert_eq!(fs.queue_events().len(), 2);
    assert!(fs.is_vhost_user());
    let mut tag = [0u8; 8];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag, b"share\0\0\0");
    let mut nrq = [0u8; 4];
    fs.read_config(36, &mut nrq);
    assert_eq!(nrq, [1, 0, 0, 0]);
}

#[test]
fn handshake_errors_are_named() {
    let err = |opts: FakeOptions, queues: usize| {
        let (_fake, stream) = FakeBackend::spawn(opts);
        Connection::handshake(stream, queues).unwrap_err()
    };
    let no_v1 = FakeOptions {
        features: PF,
        ..Default::default()
    };
    assert_eq!(err(no_v1, 2), FsError::MissingFeature("VIRTIO_F_VERSION_1"));
    let no_pf = FakeOptions {
        features: V1,
        ..Default::default()
    };
    assert_eq!(
        err(no_pf, 2),
        FsError::MissingFeature("VHOST_USER_F_PROTOCOL_FEATURES")
    );
    // virtiofsd 1.14 has 2 vrings: queues=2 (3 vrings) is refused up front.
    assert!(matches!(
        err(FakeOptions::default(), 3),
        FsError::TooFewQueues {
            requested: 2,
            backend: 2
        }
    ));
    let dies = FakeOptions {
        die_after: Some("SET_OWNER"),
        ..Default::default()
    };
    assert!(matches!(
        err(dies, 2),
        FsError::Vhost {
            request: "GET_FEATURES",
            ..
        }
    ));
}

#[test]
fn missing_and_refusing_sockets_are_named() {
    let dir = std::env::temp_dir().join(format!("cocoon-fs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.sock");
    assert_eq!(
        Connection::connect(&missing, 2).unwrap_err(),
        FsError::SocketMissing(missing.clone())
    );
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let err = Connection::connect(&stale, 2).unwrap_err();
    assert_eq!(err, FsError::SocketRefused(stale.clone()));
    assert!(err.to_string().contains("is virtiofsd running"));
    let mut cfg = config();
    cfg.socket = missing;
    assert!(Fs::new(cfg)
        .unwrap_err()
        .to_string()
        .contains("--socket-path"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn activation_and_reset_sequences() {
    let ram = ram();
    let guest = Guest::new(&ram.mem);
    let (mut fs, fake) = device(FakeOptions::default());
    let (irq, irq_evt) = interrupt();
    fs.ack_features(V1 | (1 << 29));
    fs.activate(ram.mem.clone(), guest.driver_queues(), irq)
        .unwrap();
    let calls = fake.calls();
    let per_queue = [
        "SET_VRING_NUM",
        "SET_VRING_ADDR",
        "SET_VRING_BASE",
        "SET_VRING_CALL",
        "SET_VRING_KICK",
    ];
    let mut want = vec!["SET_FEATURES", "SET_MEM_TABLE"];
    want.extend(per_queue);
    want.extend(per_queue);
    want.extend(["SET_VRING_ENABLE", "SET_VRING_ENABLE"]);
    assert_eq!(&calls[5..], &want[..]);
    assert_eq!(fs.started_queues(), &[0, 1]);
    {
        let s = fake.state.lock().unwrap();
        assert_eq!(s.acked_features, V1 | (1 << 29) | PF);
        let host = |a: u64| ram.mem.get_host_address(GuestAddress(a)).unwrap() as u64;
        assert_eq!(s.regions, vec![(0, 4 << 20, host(0), 0)]);
        // The backend got our memfd itself.
        let (a, b) = (
            s.mem_files[0].metadata().unwrap(),
            ram.memfd.metadata().unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        let v1 = &s.vrings[&1];
        assert_eq!(v1.num, u32::from(QSIZE));
        let q = &guest.queues[1];
        assert_eq!(
            v1.addrs,
            (
                host(q.desc_table_addr().0),
                host(q.used_addr().0),
                host(q.avail_addr().0)
            )
        );
        assert!(v1.enabled && s.vrings[&0].enabled);
        // A kick reaches the backend's kick fd; its call raises our irq.
        fs.queue_events()[1].write(1).unwrap();
        let mut buf = [0u8; 8];
        v1.kick.as_ref().unwrap().read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 1);
        let call = v1.call.as_ref().unwrap();
        // SAFETY: writing 8 bytes from a valid buffer to an eventfd we hold.
        let n = unsafe { libc::write(call.as_raw_fd(), 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(irq_evt.read().unwrap(), 1);
    }
    fs.reset();
    let calls = fake.calls();
    assert_eq!(
        &calls[calls.len() - 5..],
        [
            "SET_VRING_ENABLE",
            "GET_VRING_BASE",
            "SET_VRING_ENABLE",
            "GET_VRING_BASE",
            "RESET_DEVICE"
        ]
    );
    assert!(fs.started_queues().is_empty());
    assert!(!fake.state.lock().unwrap().vrings[&0].enabled);
    assert_eq!(fs.health().broken(), None);
    // A second activation after reset works the same way.
    let (irq, _evt) = interrupt();
    fs.activate(ram.mem.clone(), guest.driver_queues(), irq)
        .unwrap();
    assert_eq!(fs.started_queues(), &[0, 1]);
}

fn read_reply(mem: &GuestMemoryMmap, addr: u64) -> (u32, i32, u64) {
    let mut b = [0u8; FUSE_OUT_HEADER_LEN];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    (
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        i32::from_le_bytes(b[4..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
    )
}

#[test]
fn a_backend_that_dies_is_reported_and_requests_fail_with_eio() {
    let ram = ram();
    let mem = ram.mem.clone();
    let guest = Guest::new(&mem);
    let (mut fs, mut fake) = device(FakeOptions::default());
    let (irq, irq_evt) = interrupt();
    fs.ack_features(V1);
    fs.activate(mem.clone(), guest.driver_queues(), irq)
        .unwrap();
    // Two requests the backend never answers, and a forget on hiprio.
    let rq = &guest.queues[1];
    add_fuse_request(rq, &mem, 0, (1, 7), 0x30000, (0x31000, 64));
    add_fuse_request(rq, &mem, 2, (3, 8), 0x32000, (0x33000, 16));
    add_fuse_request(
        &guest.queues[0],
        &mem,
        0,
        (FUSE_FORGET, 9),
        0x34000,
        (0x35000, 0),
    );
    let start = Instant::now();
    fake.kill();
    let health = fs.health();
    wait_for("the device to be marked broken", || {
        health.broken().is_some()
    });
    assert!(health.broken().unwrap().contains("virtiofsd closed"));
    wait_for("the pending requests to fail", || {
        rq.used().idx().load() == 2
    });
    assert_eq!(read_reply(&mem, 0x31000), (16, -5, 7));
    assert_eq!(read_reply(&mem, 0x33000), (16, -5, 8));
    wait_for("the forget to complete", || {
        guest.queues[0].used().idx().load() == 1
    });
    assert!(irq_evt.read().unwrap() >= 1);
    // A new request after the death is failed too (kick through queue_notify).
    add_fuse_request(rq, &mem, 4, (4, 10), 0x36000, (0x37000, 32));
    fs.queue_events()[1].write(1).unwrap();
    wait_for("the late request to fail", || rq.used().idx().load() == 3);
    assert_eq!(read_reply(&mem, 0x37000), (16, -5, 10));
    // Reset and drop neither hang nor talk to the dead backend.
    fs.reset();
    drop(fs);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_backend_that_dies_during_activation_is_reported() {
    let ram = ram();
    let mem = ram.mem.clone();
    let guest = Guest::new(&mem);
    let opts = FakeOptions {
        die_after: Some("SET_MEM_TABLE"),
        ..Default::default()
    };
    let (mut fs, _fake) = device(opts);
    let (irq, _evt) = interrupt();
    let rq = &guest.queues[1];
    add_fuse_request(rq, &mem, 0, (26, 1), 0x30000, (0x31000, 80)); // FUSE_INIT
    fs.ack_features(V1);
    // Activation succeeds (the guest must not hang), the device is broken.
    fs.activate(mem.clone(), guest.driver_queues(), irq)
        .unwrap();
    let reason = fs.health().broken().unwrap();
    assert!(reason.contains("SET_VRING_NUM"), "{reason}");
    wait_for("FUSE_INIT to fail", || rq.used().idx().load() == 1);
    assert_eq!(read_reply(&mem, 0x31000), (16, -5, 1));
    fs.reset();
}

#[test]
fn interrupt_status_reports_used_rings_for_vhost_user() {
    let ram = ram();
    let (fs, _fake) = device(FakeOptions::default());
    let (irq, _evt) = interrupt();
    let mut mmio = MmioTransport::new(Box::new(fs), ram.mem.clone(), irq.clone());
    let read = |mmio: &mut MmioTransport| {
        let mut b = [0u8; 4];
        mmio.read(0, regs::INTERRUPT_STATUS, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(read(&mut mmio), VIRTIO_MMIO_INT_VRING);
    irq.signal_config_change();
    assert_eq!(read(&mut mmio), VIRTIO_MMIO_INT_CONFIG);
    irq.signal_used_queue();
    assert_eq!(
        read(&mut mmio),
        VIRTIO_MMIO_INT_CONFIG | VIRTIO_MMIO_INT_VRING
    );
    let mut id = [0u8; 4];
    mmio.read(0, regs::DEVICE_ID, &mut id);
    assert_eq!(u32::from_le_bytes(id), 26);
}
