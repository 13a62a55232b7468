//! The fs device against the real virtiofsd (installed by `make deps`), no
//! guest needed: the vhost-user handshake, the memfd memory table, the
//! rings, one FUSE_INIT answered through guest memory, and virtiofsd being
//! killed mid-way (reported, nothing hangs, requests then fail with EIO).
//! Needs root (virtiofsd does) and /proc: without them, or without
//! virtiofsd, every test fails saying so (it never skips).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_vmm::devices::virtio::fs::{Fs, FsConfig};
use cocoon_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use cocoon_vmm::vstate::memory::create_guest_ram;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const FUSE_INIT: u32 = 26;

fn virtiofsd() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd"));
    let path_hit = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("virtiofsd"))
            .find(|f| f.exists())
    });
    path_hit.or(home.filter(|h| h.exists()))
}

struct Backend {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let bin = virtiofsd()
            .expect("virtiofsd is not installed (on PATH or in ~/.cargo/bin): run `make deps`");
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "virtiofsd must run as root (these tests run as uid {euid})"
        );
        let dir = std::env::temp_dir().join(format!("cocoon-vfsd-{name}-{}", std::process::id()));
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("hello"), "hi").unwrap();
        let socket = dir.join("vfsd.sock");
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args([
                "--sandbox",
                "none",
                "--cache",
                "never",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start virtiofsd");
        let mut b = Backend { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !b.socket.exists() {
            assert!(
                b.child.try_wait().unwrap().is_none(),
                "virtiofsd exited at once"
            );
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Queue FUSE_INIT (header + fuse_init_in v7.31) with a 256-byte reply buffer.
fn add_init(
    mem: &vm_memory::GuestMemoryMmap,
    q: &MockSplitQueue<'_, vm_memory::GuestMemoryMmap>,
    first: u16,
    unique: u64,
    at: u64,
) {
    let mut req = [0u8; 56];
    req[0..4].copy_from_slice(&56u32.to_le_bytes());
    req[4..8].copy_from_slice(&FUSE_INIT.to_le_bytes());
    req[8..16].copy_from_slice(&unique.to_le_bytes());
    req[40..44].copy_from_slice(&7u32.to_le_bytes());
    req[44..48].copy_from_slice(&31u32.to_le_bytes());
    mem.write_slice(&req, GuestAddress(at)).unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let descs = [
        desc(at, 56, next, first + 1),
        desc(at + 0x100, 256, VRING_DESC_F_WRITE as u16, 0),
    ];
    q.add_desc_chains(&descs, first).unwrap();
}

fn reply_header(mem: &vm_memory::GuestMemoryMmap, at: u64) -> (u32, i32, u64) {
    let mut b = [0u8; 16];
    mem.read_slice(&mut b, GuestAddress(at)).unwrap();
    (
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        i32::from_le_bytes(b[4..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
    )
}

#[test]
fn virtiofsd_answers_fuse_init_and_its_death_is_reported() {
    let mut backend = Backend::start("init");
    let cfg = FsConfig::new("share", &backend.socket).unwrap();
    let mut fs = Fs::new(cfg).expect("handshake with virtiofsd");
    // virtiofsd 1.14 offers INDIRECT_DESC and EVENT_IDX; we pass both on.
    assert_eq!(fs.features(), (1 << 28) | (1 << 29));

    let ram = create_guest_ram(8 << 20).unwrap();
    let mem = ram.mem.clone();
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(0x10000), 64);
    let requests = MockSplitQueue::create(&mem, GuestAddress(0x20000), 64);
    let queues: Vec<Queue> = [&hiprio, &requests]
        .iter()
        .map(|q| {
            let mut q: Queue = q.create_queue().unwrap();
            q.set_ready(true);
            q
        })
        .collect();
    let irq_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(irq_evt.try_clone().unwrap()));
    fs.ack_features(1 << 32);
    fs.activate(mem.clone(), queues, irq).expect("activate");
    assert_eq!(fs.health().broken(), None);

    add_init(&mem, &requests, 0, 0x1234, 0x40000);
    fs.queue_events()[1].write(1).unwrap();
    wait_for("virtiofsd to answer FUSE_INIT", || {
        requests.used().idx().load() == 1
    });
    let (len, error, unique) = reply_header(&mem, 0x40100);
    assert_eq!((error, unique), (0, 0x1234), "FUSE_INIT failed");
    assert!(len > 16, "FUSE_INIT reply carries fuse_init_out");
    wait_for("the call eventfd", || irq_evt.read().is_ok());

    // Kill virtiofsd: the device is marked broken and the next request
    // fails with EIO instead of hanging.
    let start = Instant::now();
    backend.kill();
    let health = fs.health();
    wait_for("the death to be noticed", || health.broken().is_some());
    add_init(&mem, &requests, 2, 0x5678, 0x50000);
    fs.queue_events()[1].write(1).unwrap();
    wait_for("the request to fail", || requests.used().idx().load() == 2);
    assert_eq!(reply_header(&mem, 0x50100), (16, -5, 0x5678));
    fs.reset();
    drop(fs);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn dropping_the_device_ends_virtiofsd() {
    let mut backend = Backend::start("drop");
    let fs = Fs::new(FsConfig::new("share", &backend.socket).unwrap()).unwrap();
    drop(fs);
    // virtiofsd exits when its frontend disconnects.
    wait_for("virtiofsd to exit", || {
        backend.child.try_wait().unwrap().is_some()
    });
}

#[test]
fn more_request_queues_than_virtiofsd_serves_are_refused() {
    let backend = Backend::start("mq");
    let mut cfg = FsConfig::new("share", &backend.socket).unwrap();
    cfg.request_queues = 2;
    let err = Fs::new(cfg).unwrap_err().to_string();
    assert!(err.contains("backend serves 2"), "{err}");
}
