//! virtio-net rx/tx paths against `MockSplitQueue` with a fake TAP, the
//! device's features and config, and a real TAP in a private network
//! namespace.

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::test_utils::*;
use super::*;
use crate::devices::virtio::test_chains::*;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};

const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x8000;

struct Fixture<'a> {
    rx: MockDriver<'a>,
    tx: MockDriver<'a>,
    q: NetQueues<FakeTap>,
    tap: FakeTap,
    irq: EventFd,
}

fn fixture(mem: &GuestMemoryMmap) -> Fixture<'_> {
    let rx = MockDriver::new(mem, RX_BASE, 16);
    let tx = MockDriver::new(mem, TX_BASE, 16);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
    let tap = FakeTap::default();
    let q = NetQueues::new(tap.clone(), mem.clone(), rx.queue(), tx.queue(), interrupt);
    Fixture {
        rx,
        tx,
        q,
        tap,
        irq,
    }
}

fn guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    mem.write_slice(bytes, GuestAddress(addr)).unwrap();
}

#[test]
fn tx_strips_the_header_and_sends_the_frame() {
    let mem = test_memory();
    let mut f = fixture(&mem);
    let fr = frame(60, 1);
    let bytes = with_header(&fr);
    put(&mem, DATA_ADDR, &bytes[..20]);
    put(&mem, DATA_ADDR + 0x1000, &bytes[20..]);
    f.tx.add(&[readable(DATA_ADDR, 20), readable(DATA_ADDR + 0x1000, 52)]);
    f.q.process_tx().unwrap();
    assert_eq!(f.tap.sent(), vec![fr]);
    assert_eq!(f.tx.used(), vec![(0, 0)]);
    assert_eq!(f.irq.read().unwrap(), 1);
}

#[test]
fn rx_prepends_a_header_and_fills_one_buffer() {
    let mem = test_memory();
    let mut f = fixture(&mem);
    let fr = frame(1514, 7);
    f.tap.push(&fr);
    f.rx.add(&[writable(DATA_ADDR, 1526)]);
    assert!(f.q.process_rx().unwrap(), "keep polling after delivering");
    assert_eq!(f.rx.used(), vec![(0, 1526)]);
    let got = guest(&mem, DATA_ADDR, 1526);
    assert_eq!(&got[..10], &[0; 10]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers = 1");
    assert_eq!(&got[12..], &fr[..]);
}

#[test]
fn rx_back_pressure_holds_one_frame_until_buffers_arrive() {
    let mem = test_memory();
    let mut f = fixture(&mem);
    f.tap.push(&frame(100, 1));
    f.tap.push(&frame(100, 2));
    assert!(
        !f.q.process_rx().unwrap(),
        "no rx buffer: stop polling the TAP"
    );
    assert!(f.q.has_pending());
    assert_eq!(f.tap.waiting(), 1, "only one frame is taken off the TAP");
    f.rx.add(&[writable(DATA_ADDR, 2048)]);
    f.rx.add(&[writable(DATA_ADDR + 0x1000, 2048)]);
    assert!(f.q.process_rx().unwrap());
    assert_eq!(f.rx.used().len(), 2);
    assert_eq!(
        guest(&mem, DATA_ADDR + 12 + 6, 1),
        vec![1u8.wrapping_add(6)]
    );
    assert_eq!(
        guest(&mem, DATA_ADDR + 0x1000 + 12 + 6, 1),
        vec![2u8.wrapping_add(6)]
    );
}

#[test]
fn rx_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let mem = test_memory();
    let mut f = fixture(&mem);
    f.tap.push(&frame(1000, 1));
    f.tap.push(&frame(100, 2));
    f.rx.add(&[writable(DATA_ADDR, 512)]);
    assert!(f.q.process_rx().unwrap());
    assert_eq!(
        f.rx.used(),
        vec![(0, 112)],
        "the small frame used the buffer"
    );
    assert!(!f.q.has_pending());
}

#[test]
fn oversized_frames_from_the_tap_are_bounded() {
    let mem = test_memory();
    let mut f = fixture(&mem);
    f.tap.push(&vec![0xab; MAX_FRAME_LEN + 1000]);
    f.rx.add(&[writable(DATA_ADDR, 128 * 1024)]);
    f.q.process_rx().unwrap();
    assert_eq!(f.rx.used(), vec![(0, (NET_HDR_LEN + MAX_FRAME_LEN) as u32)]);
}

#[test]
fn tap_read_errors_stop_the_device() {
    let mem = test_memory();
    let mut f = fixture(&mem);
    f.tap.0.lock().unwrap().read_error = Some(std::io::ErrorKind::Other);
    assert!(matches!(f.q.process_rx(), Err(NetQueueError::Backend(_))));
}

fn assert_tx_breaks(descs: &[RawDescriptor], raw: bool) {
    let mem = test_memory();
    let mut f = fixture(&mem);
    if raw {
        f.tx.add_raw(descs);
    } else {
        f.tx.add(descs);
    }
    assert!(f.q.process_tx().is_err(), "{descs:?} was accepted");
    assert_eq!(f.tx.used(), vec![(0, 0)], "the chain is handed back");
    assert!(f.tap.sent().is_empty());
}

fn assert_rx_breaks(descs: &[RawDescriptor], raw: bool) {
    let mem = test_memory();
    let mut f = fixture(&mem);
    f.tap.push(&frame(60, 0));
    if raw {
        f.rx.add_raw(descs);
    } else {
        f.rx.add(descs);
    }
    assert!(f.q.process_rx().is_err(), "{descs:?} was accepted");
    assert_eq!(f.rx.used(), vec![(0, 0)]);
}

#[test]
fn tx_wrong_direction() {
    assert_tx_breaks(
        &[readable(DATA_ADDR, 12), writable(DATA_ADDR + 12, 60)],
        false,
    );
}

#[test]
fn rx_wrong_direction() {
    assert_rx_breaks(&[readable(DATA_ADDR, 2048)], false);
}

#[test]
fn tx_header_too_short() {
    assert_tx_breaks(&[readable(DATA_ADDR, 8)], false);
}

#[test]
fn tx_frame_over_the_limit() {
    assert_tx_breaks(
        &[readable(
            DATA_ADDR,
            (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32,
        )],
        false,
    );
}

#[test]
fn buffers_outside_guest_memory() {
    assert_tx_breaks(&[readable(MEM_SIZE - 4, 64)], false);
    assert_rx_breaks(&[writable(u64::MAX - 100, 2048)], false);
}

#[test]
fn descriptor_loops() {
    let looped = |flags| {
        [
            RawDescriptor::from(SplitDescriptor::new(DATA_ADDR, 64, flags | F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA_ADDR, 64, flags | F_NEXT, 0)),
        ]
    };
    assert_tx_breaks(&looped(0), true);
    assert_rx_breaks(&looped(F_WRITE), true);
}

#[test]
fn overlong_chains() {
    let mem = test_memory();
    let mut f = fixture(&mem);
    let mut rx = MockDriver::new(&mem, RX_BASE, 128);
    let many: Vec<_> = (0..MAX_DESCRIPTORS as u64 + 1)
        .map(|i| writable(DATA_ADDR + i * 64, 64))
        .collect();
    rx.add(&many);
    let irq = Arc::new(VirtioInterrupt::new(f.irq.try_clone().unwrap()));
    f.q = NetQueues::new(f.tap.clone(), mem.clone(), rx.queue(), f.tx.queue(), irq);
    f.tap.push(&frame(60, 0));
    assert!(matches!(
        f.q.process_rx(),
        Err(NetQueueError::Chain {
            source: crate::devices::virtio::checked_chain::ChainError::TooLong { .. },
            ..
        })
    ));
}

/// Runs `f` on a thread that has its own network namespace (network
/// namespaces are per thread), so the TAP never leaves it. Fails (never
/// skips) without root, /dev/net/tun or `ip`.
fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot unshare the network namespace (the tests run as root): {}",
                std::io::Error::last_os_error()
            );
        }
        let st = std::process::Command::new("ip")
            .args(["tuntap", "add", "ctap0", "mode", "tap"])
            .status();
        assert!(
            st.as_ref().is_ok_and(|s| s.success()),
            "cannot create a TAP with `ip tuntap add` (is /dev/net/tun there, iproute2 installed?): {st:?}"
        );
        f();
    })
    .join()
    .unwrap();
}

fn ip(args: &[&str]) {
    assert!(std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap()
        .success());
}

/// An AF_PACKET socket on `ifname` (in the caller's namespace).
fn packet_socket(ifname: &str) -> i32 {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain socket calls with valid arguments; results are checked.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        assert!(fd >= 0);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let rc = libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0);
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        fd
    }
}

#[test]
fn tap_errors_are_specific() {
    in_private_netns(|| {
        assert!(matches!(Tap::open("nope0"), Err(TapError::Missing(_))));
        assert!(Tap::open("nope0")
            .unwrap_err()
            .to_string()
            .contains("ip tuntap add nope0 mode tap"));
        assert!(matches!(Tap::open("lo"), Err(TapError::NotTap(_))));
        let cfg: NetConfig = "tap=ctap0,mac=02:00:00:00:00:01".parse().unwrap();
        assert!(Net::new(&cfg).is_ok());
    });
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    in_private_netns(|| {
        ip(&["link", "set", "ctap0", "up"]);
        let cfg: NetConfig = "tap=ctap0,mac=02:00:00:00:00:01".parse().unwrap();
        let mut net = Net::new(&cfg).unwrap();
        assert_eq!(net.features(), VIRTIO_NET_F_MAC);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        let sock = packet_socket("ctap0");

        let mem = test_memory();
        let mut rx = MockDriver::new(&mem, RX_BASE, 16);
        let mut tx = MockDriver::new(&mem, TX_BASE, 16);
        let irq = EventFd::new(0).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
        net.activate(mem.clone(), vec![rx.queue(), tx.queue()], interrupt.clone())
            .unwrap();

        // Guest -> host: a frame with an unused EtherType (nothing answers it).
        let mut out = frame(64, 3);
        out[12..14].copy_from_slice(&[0x88, 0xb5]);
        put(&mem, DATA_ADDR, &with_header(&out));
        tx.add(&[readable(DATA_ADDR, (NET_HDR_LEN + out.len()) as u32)]);
        net.queue_events()[1].write(1).unwrap();
        let mut buf = [0u8; 2048];
        let got = loop {
            // SAFETY: buf is a valid writable buffer of its length.
            let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n > 0, "no frame from the guest on ctap0");
            if buf[12..14] == [0x88, 0xb5] {
                break buf[..n as usize].to_vec();
            }
        };
        assert_eq!(got, out);

        // Host -> guest, with back-pressure: the frame waits for a buffer.
        let mut inbound = frame(80, 9);
        inbound[12..14].copy_from_slice(&[0x88, 0xb5]);
        // SAFETY: inbound is a valid readable buffer of its length.
        let n = unsafe { libc::send(sock, inbound.as_ptr().cast(), inbound.len(), 0) };
        assert_eq!(n as usize, inbound.len());
        std::thread::sleep(std::time::Duration::from_millis(100));
        // The kernel may queue its own frames (IPv6 solicitations...) too:
        // offer several buffers and look for ours among them.
        for k in 0..12u64 {
            rx.add(&[writable(DATA_ADDR + 0x1_0000 + k * 0x1000, 2048)]);
        }
        net.queue_events()[0].write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = false;
        while std::time::Instant::now() < deadline && !seen {
            for (head, len) in rx.used() {
                let at = DATA_ADDR + 0x1_0000 + u64::from(head) * 0x1000;
                seen |= guest(&mem, at, len as usize).get(NET_HDR_LEN..) == Some(&inbound[..]);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(seen, "the host frame never reached the rx queue");
        assert!(!interrupt.needs_reset());
        net.reset();
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(sock) };
    });
}

/// A queue descriptor of TAP `name` opened with `flags` (as the shim opens
/// the pod's), owned by the caller as a raw fd.
fn open_tap_fd(name: &str, flags: libc::c_short) -> std::os::fd::RawFd {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54ca, req.as_mut_ptr()) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    file.into_raw_fd()
}

#[test]
fn a_tap_descriptor_is_taken_over_after_checks() {
    use std::os::fd::IntoRawFd;
    in_private_netns(|| {
        let fd = open_tap_fd("ctap1", 0x0002 | 0x1000);
        let cfg: NetConfig = format!("fd={fd},mac=02:00:00:00:00:01,mtu=9000")
            .parse()
            .unwrap();
        let net = Net::new(&cfg).unwrap();
        assert_eq!(net.features(), VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU);
        // The MTU sits at offset 10 of the config space, after the MAC,
        // status and max_virtqueue_pairs; reads past the end read nothing.
        let mut config = [0xffu8; 14];
        net.read_config(0, &mut config);
        assert_eq!(config[..6], [2, 0, 0, 0, 0, 1]);
        assert_eq!(config[6..12], [0, 0, 0, 0, 0x28, 0x23]);
        assert_eq!(config[12..], [0xff, 0xff]);
        let mut mtu = [0u8; 2];
        net.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 9000);
        net.read_config(u64::MAX, &mut mtu);
        // SAFETY: F_GETFL/F_GETFD read flags of the descriptor `net` owns.
        let (fl, fdfl) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        assert!(fl & libc::O_NONBLOCK != 0 && fdfl & libc::FD_CLOEXEC != 0);
        drop(net);

        // A number no open file has (other tests open and close files
        // concurrently, so a just-closed number could be reused).
        let e = Tap::from_fd(900_000).unwrap_err();
        assert!(matches!(e, TapError::FdNotOpen(_)), "{e}");
        assert!(
            e.to_string().contains("no such open file descriptor"),
            "{e}"
        );

        let not_tap = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let e = Tap::from_fd(not_tap).unwrap_err();
        assert!(matches!(e, TapError::FdNotTap(_)), "{e}");
        // A TAP with virtio headers, and a TUN: not what the device speaks.
        let vnet = open_tap_fd("ctap3", 0x0002 | 0x1000 | 0x4000);
        let e = Tap::from_fd(vnet).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"ctap3\" is not a single-queue TAP"),
            "{e}"
        );
        let tun = open_tap_fd("ctun0", 0x0001 | 0x1000);
        assert!(matches!(Tap::from_fd(tun), Err(TapError::FdFlags { .. })));
        // SAFETY: closing descriptors this test still owns (refused above).
        unsafe {
            libc::close(not_tap);
            libc::close(vnet);
            libc::close(tun);
        }
    });
}
