//! Against the real kernel, as root, in network namespaces of their own
//! (`ip netns add`, deleted on drop): the guest side's configuration read
//! back by the host side's reader, the reader's refusals, and the tc
//! redirect moving frames between a veth and a TAP both ways.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cocoon_netconf::netns::in_netns;
use cocoon_netconf::read::{read_pod_interface, ReadError};
use cocoon_netconf::{apply, link, tap, tc, Cidr, InterfaceConfig, Mac, Netlink, Route};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of this test, deleted (with what is in it) on drop.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = format!(
            "cocoon-nc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        Ns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }

    fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", &self.0];
        a.extend_from_slice(args);
        ip(&a);
    }

    /// Runs `f` with a netlink socket inside this namespace.
    fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut Netlink) -> T + Send + 'static) -> T {
        in_netns(&self.path(), move || {
            let mut nl = Netlink::open().expect("netlink socket");
            f(&mut nl)
        })
        .expect("in the namespace")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Two namespaces joined by a veth pair: `eth0` (MAC `mac`, down, no
/// address) in the pod's, `peer` in the other.
fn pod_and_peer(mac: &str) -> (Ns, Ns) {
    let (pod, peer) = (Ns::new(), Ns::new());
    ip(&[
        "link", "add", "ccn-a", "netns", &pod.0, "type", "veth", "peer", "name", "ccn-b", "netns",
        &peer.0,
    ]);
    pod.ip(&["link", "set", "ccn-a", "name", "eth0"]);
    pod.ip(&["link", "set", "eth0", "address", mac]);
    peer.ip(&["link", "set", "ccn-b", "name", "peer"]);
    (pod, peer)
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn route(dst: &str, gw: Option<&str>, metric: u32) -> Route {
    Route {
        destination: cidr(dst),
        gateway: gw.map(|g| g.parse().unwrap()),
        onlink: false,
        metric,
    }
}

fn sorted(mut c: InterfaceConfig) -> InterfaceConfig {
    c.addresses.sort_by_key(|a| a.to_string());
    c.routes.sort_by_key(|r| {
        (
            r.destination.to_string(),
            r.metric,
            format!("{:?}", r.gateway),
        )
    });
    c
}

#[test]
fn applied_configuration_reads_back_the_same() {
    let (pod, _peer) = pod_and_peer("02:42:0a:63:00:02");
    let cfg = InterfaceConfig {
        mac: "02:42:0a:63:00:02".parse().unwrap(),
        device_mac: None,
        mtu: 1400,
        addresses: vec![cidr("10.99.0.2/24"), cidr("fd00:99::2/64")],
        routes: vec![
            // Calico's shape: a gateway outside every subnet, reached
            // through a link route that must go in first.
            route("0.0.0.0/0", Some("169.254.1.1"), 0),
            route("169.254.1.1/32", None, 0),
            route("10.200.0.0/16", Some("10.99.0.1"), 50),
            route("::/0", Some("fd00:99::1"), 1024),
        ],
    };
    let c = cfg.clone();
    let applied = pod.with(move |nl| apply::apply(nl, &c).map(|l| l.name));
    assert_eq!(applied.unwrap(), "eth0");
    // Again: replace semantics, nothing changes, no error.
    let c = cfg.clone();
    pod.with(move |nl| apply::apply(nl, &c)).unwrap();
    let read = pod.with(|nl| read_pod_interface(nl, &[])).unwrap();
    assert_eq!(read.link.name, "eth0");
    assert!(read.link.up);
    assert_eq!(sorted(read.config), sorted(cfg));
    // Loopback came up too.
    let lo = pod.with(|nl| link::links(nl).unwrap());
    assert!(lo.iter().any(|l| l.loopback && l.up), "{lo:?}");
}

/// A VM restored from a template: its NIC has the template's MAC, and is
/// given the pod's before it is configured; a second call finds it by the
/// pod's MAC.
#[test]
fn a_nic_with_the_template_mac_is_given_the_pods() {
    let (pod, _peer) = pod_and_peer("02:63:6f:63:6f:6e");
    let cfg = InterfaceConfig {
        mac: "02:42:0a:63:00:07".parse().unwrap(),
        device_mac: Some("02:63:6f:63:6f:6e".parse().unwrap()),
        mtu: 1450,
        addresses: vec![cidr("10.99.0.7/24")],
        routes: vec![route("0.0.0.0/0", Some("10.99.0.1"), 0)],
    };
    for _ in 0..2 {
        let c = cfg.clone();
        let link = pod.with(move |nl| apply::apply(nl, &c)).unwrap();
        assert_eq!(link.name, "eth0");
        assert_eq!(link.mac, Some(cfg.mac));
    }
    let read = pod.with(|nl| read_pod_interface(nl, &[])).unwrap();
    assert_eq!(read.link.mac, Some(cfg.mac));
    assert!(read.link.up);
    assert_eq!(read.config.mtu, 1450);
    assert_eq!(read.config.addresses, cfg.addresses);
    // Neither MAC anywhere: refused, naming the pod's MAC.
    let other = InterfaceConfig {
        mac: "02:42:0a:63:00:08".parse().unwrap(),
        device_mac: Some("02:00:00:00:00:99".parse().unwrap()),
        ..cfg
    };
    let e = pod.with(move |nl| apply::apply(nl, &other)).unwrap_err();
    assert!(
        e.to_string()
            .contains("no interface has MAC 02:42:0a:63:00:08"),
        "{e}"
    );
}

#[test]
fn apply_refuses_a_mac_nobody_has_and_bad_input() {
    let (pod, _peer) = pod_and_peer("02:42:0a:63:00:03");
    let mut cfg = InterfaceConfig {
        mac: "02:42:0a:63:00:09".parse().unwrap(),
        device_mac: None,
        mtu: 1500,
        addresses: vec![cidr("10.99.0.3/24")],
        routes: vec![],
    };
    let c = cfg.clone();
    let e = pod.with(move |nl| apply::apply(nl, &c)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("no interface has MAC 02:42:0a:63:00:09")
            && msg.contains("eth0 02:42:0a:63:00:03"),
        "{msg}"
    );
    cfg.mac = "02:42:0a:63:00:03".parse().unwrap();
    cfg.routes = vec![route("10.98.0.1/24", None, 0)];
    let c = cfg.clone();
    let e = pod.with(move |nl| apply::apply(nl, &c)).unwrap_err();
    assert!(
        e.to_string().contains("invalid interface configuration"),
        "{e}"
    );
    // Nothing was changed by the refused request.
    let read = pod.with(|nl| link::links(nl).unwrap());
    assert!(read.iter().any(|l| l.name == "eth0" && !l.up), "{read:?}");
}

#[test]
fn the_reader_takes_what_cni_made_and_names_what_it_cannot() {
    let (pod, _peer) = pod_and_peer("02:42:0a:63:00:04");
    pod.ip(&["link", "set", "eth0", "mtu", "1450", "up"]);
    pod.ip(&["addr", "add", "10.99.0.4/24", "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", "10.99.0.1"]);
    let read = pod.with(|nl| read_pod_interface(nl, &[])).unwrap();
    assert_eq!(
        read.config,
        InterfaceConfig {
            mac: Mac([2, 0x42, 0x0a, 0x63, 0, 4]),
            device_mac: None,
            mtu: 1450,
            // The kernel's own subnet route and the link-local IPv6
            // address are not the host's to pass on.
            addresses: vec![cidr("10.99.0.4/24")],
            routes: vec![route("0.0.0.0/0", Some("10.99.0.1"), 0)],
        }
    );

    // Only loopback: CNI did nothing.
    let empty = Ns::new();
    let e = empty.with(|nl| read_pod_interface(nl, &[])).unwrap_err();
    assert!(matches!(e, ReadError::NoInterface(_)), "{e}");
    assert!(e.to_string().contains("was CNI run"), "{e}");

    // Two interfaces: which one is the pod's?
    pod.ip(&[
        "link", "add", "extra0", "type", "veth", "peer", "name", "extra1",
    ]);
    let e = pod.with(|nl| read_pod_interface(nl, &[])).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("3 interfaces besides loopback") && msg.contains("extra0"),
        "{msg}"
    );
    pod.ip(&["link", "del", "extra0"]);

    // A TAP (not what CNI makes) is refused by kind; ours is skipped by name.
    let tap_ns = Ns::new();
    let fd = tap_ns.with(|_| tap::create("tap9").unwrap());
    let e = tap_ns.with(|nl| read_pod_interface(nl, &[])).unwrap_err();
    assert!(
        e.to_string().contains("interface tap9 is of kind tun"),
        "{e}"
    );
    let e = tap_ns
        .with(|nl| read_pod_interface(nl, &["tap9"]))
        .unwrap_err();
    assert!(matches!(e, ReadError::NoInterface(_)), "{e}");
    drop(fd);
}

/// A frame: broadcast destination, `src`, an unused EtherType, `tag`.
fn frame(src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend(std::iter::repeat_n(tag, 50));
    f
}

/// A raw packet socket on `ifname` of the calling thread's namespace.
fn packet_socket(ifname: &str) -> OwnedFd {
    use std::os::fd::FromRawFd;
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain socket/bind/setsockopt calls with valid arguments; the
    // new fd is owned by the returned OwnedFd.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let rc = libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        OwnedFd::from_raw_fd(fd)
    }
}

/// Reads from `fd` until a frame equal to `want` arrives (5 s at most).
fn expect_frame(mut read_one: impl FnMut(&mut [u8]) -> isize, want: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let n = read_one(&mut buf);
        if n > 0 && &buf[..n as usize] == want {
            return;
        }
        if n <= 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("{what}: the frame never arrived");
}

#[test]
fn tc_redirect_moves_frames_both_ways_and_is_removed() {
    let (pod, peer) = pod_and_peer("02:42:0a:63:00:05");
    pod.ip(&["link", "set", "eth0", "up"]);
    peer.ip(&["link", "set", "peer", "up"]);
    // The TAP and the redirect, as the shim makes them.
    let tap_fd = pod.with(|nl| {
        let fd = tap::create("tap0_cocoon").unwrap();
        let all = link::links(nl).unwrap();
        let eth0 = all.iter().find(|l| l.name == "eth0").unwrap().clone();
        let tap = all
            .iter()
            .find(|l| l.name == "tap0_cocoon")
            .unwrap()
            .clone();
        link::set_up(nl, &tap, Some(eth0.mtu)).unwrap();
        tc::redirect_both_ways(nl, &eth0, &tap).unwrap();
        // A second redirect would take over someone's qdisc: refused.
        let e = tc::add_ingress_qdisc(nl, &eth0).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        fd
    });
    let mut tap_file = std::fs::File::from(tap_fd);
    // SAFETY: O_NONBLOCK on the fd the file owns.
    unsafe { libc::fcntl(tap_file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };

    // peer -> eth0 -> (redirect) -> TAP.
    let inbound = frame([2, 0, 0, 0, 0, 0x0b], 7);
    let f = inbound.clone();
    peer.with(move |_| {
        let s = packet_socket("peer");
        // SAFETY: sending a buffer we own on a socket we own.
        let n = unsafe { libc::send(s.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n as usize, f.len());
    });
    expect_frame(
        |buf| match tap_file.read(buf) {
            Ok(n) => n as isize,
            Err(_) => -1,
        },
        &inbound,
        "peer to TAP",
    );

    // TAP -> (redirect) -> eth0 -> peer.
    let outbound = frame([2, 0x42, 0x0a, 0x63, 0, 5], 9);
    let want = outbound.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = std::thread::spawn({
        let path = peer.path();
        move || {
            in_netns(&path, move || {
                let s = packet_socket("peer");
                ready_tx.send(()).unwrap();
                expect_frame(
                    // SAFETY: receiving into a buffer we own.
                    |buf| unsafe {
                        libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    },
                    &want,
                    "TAP to peer",
                );
            })
            .unwrap()
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    for _ in 0..3 {
        tap_file.write_all(&outbound).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    listener.join().expect("the frame reached the peer");

    // Removal: gone from eth0; the TAP goes with its last descriptor.
    let removed = pod.with(|nl| {
        let eth0 = link::links(nl)
            .unwrap()
            .into_iter()
            .find(|l| l.name == "eth0")
            .unwrap();
        let first = tc::remove_ingress_qdisc(nl, &eth0).unwrap();
        let second = tc::remove_ingress_qdisc(nl, &eth0).unwrap();
        (first, second, tc::has_ingress_qdisc(nl, &eth0).unwrap())
    });
    assert_eq!(removed, (true, false, false));
    drop(tap_file);
    // The kernel unregisters the TAP after the close returns: wait for it.
    let start = Instant::now();
    loop {
        let names: Vec<String> = pod.with(|nl| {
            link::links(nl)
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect()
        });
        if !names.iter().any(|n| n == "tap0_cocoon") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the TAP outlived its last descriptor: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
