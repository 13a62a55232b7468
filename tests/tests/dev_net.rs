//! virtio-net end to end. Everything happens inside a network namespace this
//! test creates (`cocoon-e2e-<pid>`): the TAP, its address, a UDP echo
//! server and cocoon-vmm itself (`ip netns exec`), so no packet can leave
//! it. The guest configures eth0, checks its MAC and gets its datagram
//! echoed back. The namespace (and with it the TAP) is deleted afterwards.
#![cfg(feature = "e2e")]

use cocoon_e2e::{assert_devtest_passed, run_with_deadline, Artifacts};
use std::net::UdpSocket;
use std::os::unix::io::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TAP: &str = "ctap0";
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.2/24";
const PORT: u16 = 7777;
const MAC: &str = "02:c0:c0:00:00:2a";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A network namespace with a TAP, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let ns = Netns(format!("cocoon-e2e-{}", std::process::id()));
        let _ = ip(&["netns", "del", &ns.0]);
        ip(&["netns", "add", &ns.0]).unwrap();
        let n = ns.0.as_str();
        for cmd in [
            vec!["netns", "exec", n, "ip", "link", "set", "lo", "up"],
            vec![
                "netns", "exec", n, "ip", "tuntap", "add", TAP, "mode", "tap",
            ],
            vec![
                "netns",
                "exec",
                n,
                "ip",
                "addr",
                "add",
                "10.0.2.1/24",
                "dev",
                TAP,
            ],
            vec!["netns", "exec", n, "ip", "link", "set", TAP, "up"],
        ] {
            ip(&cmd).unwrap();
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "exec", &self.0, "ip", "link", "del", TAP]);
        let _ = ip(&["netns", "del", &self.0]);
    }
}

/// A UDP echo server on HOST_IP:PORT in `ns`, on its own thread (network
/// namespaces are per thread). Returns the stop flag, the echo count and
/// the thread.
fn udp_echo(
    ns: &str,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
    std::thread::JoinHandle<()>,
) {
    let path = format!("/var/run/netns/{ns}");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (s, c) = (stop.clone(), count.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we opened.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let sock = UdpSocket::bind((HOST_IP, PORT)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::SeqCst) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("udp echo server did not start");
    (stop, count, handle)
}

#[test]
fn guest_exchanges_udp_with_the_host_over_a_tap() {
    let a = Artifacts::from_env();
    let ns = Netns::new();
    let (stop, echoed, echo) = udp_echo(&ns.0);
    let cmdline = format!(
        "quiet cocoon.test=net cocoon.net.ip={GUEST_IP} cocoon.net.peer={HOST_IP} \
         cocoon.net.port={PORT} cocoon.net.mac={MAC}"
    );
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(&a.vmm)
        .args(a.devtest_args(&cmdline))
        .args(["--memory", "128"])
        .arg("--net")
        .arg(format!("tap={TAP},mac={MAC}"));
    let f = run_with_deadline(cmd, Duration::from_secs(180));
    stop.store(true, Ordering::SeqCst);
    echo.join().unwrap();
    assert_devtest_passed(&f, "net");
    assert!(
        echoed.load(Ordering::SeqCst) >= 1,
        "the host saw no datagram"
    );
}

#[test]
fn missing_tap_and_bad_mac_are_clear_errors() {
    let a = Artifacts::from_env();
    let ns = Netns::new();
    for (spec, want) in [
        ("tap=nope0", "does not exist"),
        ("tap=lo", "not a single-queue TAP"),
        ("tap=ctap0,mac=01:00:5e:00:00:01", "not a unicast MAC"),
    ] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0])
            .arg(&a.vmm)
            .arg("--kernel")
            .arg(&a.kernel)
            .arg("--net")
            .arg(spec);
        let f = run_with_deadline(cmd, Duration::from_secs(60));
        assert_eq!(f.status.code(), Some(1), "{spec}: {}", f.describe());
        assert!(f.stderr.contains(want), "{spec}: {}", f.describe());
    }
}
