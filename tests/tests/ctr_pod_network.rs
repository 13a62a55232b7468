//! Pod networking end to end through `ctr`: a network namespace set up the
//! way CNI would (a veth with the pod's address, a default route and a
//! jumbo MTU, so that frames larger than 1500 bytes cross both ways; its
//! other end, the "node", in a second namespace of this test, so no packet
//! leaves the two), `ctr run --with-ns network:<it>`, and the pod's VM
//! answering at the pod's IP both ways; afterwards nothing of ours is left
//! in the namespace (no TAP, no qdisc on the veth), after a normal stop and
//! after a killed shim's `delete`. A pod asking for the host's network is
//! refused.
//!
//! VM backend only (the local backend has no pod networking).
#![cfg(feature = "e2e")]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Pods, IMAGE, RUNTIME};

const POD_IP: &str = "10.99.0.2";
const NODE_IP: &str = "10.99.0.1";
const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 18080;
const POD_MAC: &str = "02:42:0a:63:00:02";
/// What the pod serves, and what the node answers.
const POD_SAYS: &str = "pod-says-hi";
const NODE_SAYS: &str = "node-says-hi";
/// The veth's MTU: jumbo frames, which the guest receives only with
/// buffers sized for them (virtio-net's MTU feature).
const MTU: &str = "9000";
/// The last line of the pod's page (`seq 1 LAST`, ~100 KB).
const LAST: u32 = 20000;
/// The size of the node's answer.
const NODE_BYTES: usize = 100_000;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod's namespace (`eth0`, `POD_IP/24`, default via `NODE_IP`, as a
/// CNI bridge plugin leaves it) and the node's (`node0`, `NODE_IP/24`);
/// both deleted on drop.
struct Net {
    pod: String,
    node: String,
}

impl Net {
    fn new(tag: &str) -> Net {
        let pid = std::process::id();
        let net = Net {
            pod: format!("cocoon-e2e-pod-{tag}-{pid}"),
            node: format!("cocoon-e2e-node-{tag}-{pid}"),
        };
        for ns in [&net.pod, &net.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (pod, node) = (net.pod.as_str(), net.node.as_str());
        ip(&[
            "-n", pod, "link", "add", "eth0", "address", POD_MAC, "type", "veth", "peer", "name",
            "node0", "netns", node,
        ]);
        ip(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{POD_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", pod, "link", "set", "eth0", "mtu", MTU, "up"]);
        ip(&["-n", pod, "route", "add", "default", "via", NODE_IP]);
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "node0",
        ]);
        ip(&["-n", node, "link", "set", "node0", "mtu", MTU, "up"]);
        net
    }

    fn pod_path(&self) -> String {
        format!("/var/run/netns/{}", self.pod)
    }

    /// What cocoon would have left in the pod's namespace: a TAP, an
    /// ingress qdisc on eth0.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let links = ip(&["-n", &self.pod, "-o", "link", "show"]);
        if links.contains("tap0_cocoon") {
            left.push(format!("a TAP in the pod namespace: {links}"));
        }
        let out = Command::new("tc")
            .args(["-n", &self.pod, "qdisc", "show", "dev", "eth0"])
            .output()
            .expect("run tc");
        let qdiscs = String::from_utf8_lossy(&out.stdout);
        if qdiscs.contains("ingress") {
            left.push(format!("an ingress qdisc on eth0: {qdiscs}"));
        }
        left
    }

    /// Runs `f` on a thread inside the node's namespace.
    fn in_node<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/var/run/netns").join(&self.node);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the node thread")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// `GET /` at the pod from the node, retried until it answers with its
/// whole page (`POD_SAYS`, then `seq 1 LAST`; the VM boots meanwhile) or
/// `limit` passes; the last error.
fn pod_answers(net: &Net, limit: Duration) -> Result<String, String> {
    net.in_node(move || {
        let to: SocketAddr = format!("{POD_IP}:{POD_PORT}").parse().unwrap();
        let deadline = Instant::now() + limit;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            let got = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body)
            })();
            match got {
                Ok(body) if body.contains(POD_SAYS) && body.ends_with(&format!("\n{LAST}\n")) => {
                    return Ok(body)
                }
                Ok(body) => {
                    let end = &body[body.len().saturating_sub(200)..];
                    last = format!(
                        "an incomplete answer of {} bytes, ending {end:?}",
                        body.len()
                    );
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(last)
    })
}

/// An HTTP server on the node answering every request with `NODE_SAYS`
/// until the flag is set.
fn node_server(net: &Net) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = PathBuf::from("/var/run/netns").join(&net.node);
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we own.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let l = TcpListener::bind((NODE_IP, NODE_PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !s.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf);
                    let body = format!("{}{NODE_SAYS}\n", "x".repeat(NODE_BYTES));
                    let _ = c.write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the node's server did not start");
    (stop, handle)
}

/// `ctr run -d --with-ns network:<pod ns>` of a container serving a page
/// of `POD_SAYS` and `seq 1 LAST` on `POD_PORT`.
fn run_server(c: &Pods, net: &Net, id: &str) {
    let with_ns = format!("network:{}", net.pod_path());
    c.run_detached_with(
        id,
        &["--with-ns", &with_ns],
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /tmp/w && {{ echo {POD_SAYS}; seq 1 {LAST}; }} >/tmp/w/index.html && exec httpd -f -p {POD_PORT} -h /tmp/w"
            ),
        ],
    );
}

fn assert_nothing_left(net: &Net, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = net.leftovers();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: {}", left.join("; "));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ctr_pod_network_answers_at_the_pod_ip_both_ways() {
    require_supported_vmm!();
    let c = Pods::shared(&["podnet"]);
    let net = Net::new("a");
    let (stop, server) = node_server(&net);
    let t0 = Instant::now();
    run_server(&c, &net, "podnet");
    // node -> pod: the pod's IP answers, from the VM.
    let body = pod_answers(&net, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("the pod at {POD_IP}:{POD_PORT} never answered: {e}"));
    eprintln!(
        "the pod answered {:.1} s after ctr run ({} bytes)",
        t0.elapsed().as_secs_f64(),
        body.len()
    );
    // The guest's NIC has the veth's MTU.
    let (rc, out, err) = c.exec("podnet", "mtu0", &["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!((rc, out.trim()), (0, MTU), "the guest eth0's MTU: {err}");
    // pod -> node: the container reaches the node through its default
    // route.
    let url = format!("http://{NODE_IP}:{NODE_PORT}/");
    // Into a file: ctr's output is read only once it exits (common's
    // ctr_in), so it must stay under a pipe's 64 KiB.
    // (No -T: this busybox's wget crashes with it.)
    let script =
        format!("wget -q -O /tmp/node {url} && wc -c </tmp/node && grep -c {NODE_SAYS} /tmp/node");
    let (rc, out, err) = c.exec("podnet", "wget0", &["sh", "-c", &script]);
    let want = format!("{}\n1\n", NODE_BYTES + NODE_SAYS.len() + 1);
    assert_eq!(
        (rc, out.as_str()),
        (0, want.as_str()),
        "{script} in the pod: {err}"
    );
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();

    let (rc, _, err) = c.ctr(&["task", "kill", "-s", "SIGKILL", "podnet"]);
    assert_eq!(rc, 0, "ctr task kill: {err}");
    c.wait_stopped("podnet", "after SIGKILL");
    c.remove("podnet");
    c.assert_clean();
    assert_nothing_left(&net, "after the pod was deleted");
    // The namespace and CNI's interface are not ours: still there, as they
    // were.
    let addrs = ip(&["-n", &net.pod, "-o", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("{POD_IP}/24")), "{addrs}");
}

#[test]
fn ctr_pod_network_is_undone_by_the_delete_command_after_a_killed_shim() {
    require_supported_vmm!();
    let c = Pods::shared(&["podnet-orphan"]);
    let net = Net::new("b");
    run_server(&c, &net, "podnet-orphan");
    pod_answers(&net, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("the pod never answered: {e}"));
    assert!(!net.leftovers().is_empty(), "the TAP and qdisc are there");
    // containerd notices and runs `containerd-shim-cocoon-v2 delete`.
    c.kill_shim_and_await_delete("podnet-orphan");
    assert_nothing_left(&net, "after delete");
    let _ = c.ctr(&["task", "rm", "podnet-orphan"]);
    assert_eq!(c.ctr(&["container", "rm", "podnet-orphan"]).0, 0);
    c.assert_clean();
}

#[test]
fn ctr_host_network_is_refused() {
    require_supported_vmm!();
    let c = Pods::shared(&["hostnet"]);
    let (rc, _, err) = c.ctr(&[
        "run",
        "--rm",
        "--net-host",
        "--runtime",
        RUNTIME,
        IMAGE,
        "hostnet",
        "true",
    ]);
    assert_ne!(rc, 0, "a pod on the host's network ran");
    assert!(
        err.contains("host network is not supported by a VM runtime"),
        "{err}"
    );
    let _ = c.ctr(&["container", "rm", "hostnet"]);
    c.assert_clean();
}
