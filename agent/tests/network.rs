//! CreateSandbox configures the pod's interface: a real agent in a network
//! namespace of this test (as root), with a veth whose MAC the request
//! names standing in for the guest's virtio-net NIC; the result read back
//! with `ip`. Bad requests change nothing and name their problem.

mod common;

use std::path::PathBuf;
use std::process::Command;

use cocoon_agent_protocol::agent::{Interface, Route};
use common::*;

const MAC: &str = "02:42:0a:63:00:07";

/// A network namespace with `eth0` (MAC [`MAC`], down, no address) and its
/// veth peer `other0`; deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        Netns::with_mac("", MAC)
    }

    /// `eth0` with `mac`; `tag` tells this test's namespace from others'.
    fn with_mac(tag: &str, mac: &str) -> Netns {
        let ns = Netns(format!("cocoon-agent-net{tag}-{}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        ns.ip(&["netns", "add", &ns.0], false);
        ns.ip(
            &[
                "link", "add", "eth0", "address", mac, "type", "veth", "peer", "name", "other0",
            ],
            true,
        );
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }

    /// `ip [-n NS] ARGS`, required to succeed; its output.
    fn ip(&self, args: &[&str], inside: bool) -> String {
        let mut cmd = Command::new("ip");
        if inside {
            cmd.args(["-n", &self.0]);
        }
        let out = cmd.args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn route(dst: &str, gw: &str, metric: u32) -> Route {
    let mut r = Route::new();
    r.destination = dst.into();
    r.gateway = gw.into();
    r.metric = metric;
    r
}

fn interface() -> Interface {
    let mut i = Interface::new();
    i.mac = MAC.into();
    i.mtu = 1400;
    i.addresses = vec!["10.99.0.7/24".into(), "fd00:99::7/64".into()];
    // Given gateway first: the agent adds the link route it needs before it.
    i.routes = vec![
        route("0.0.0.0/0", "169.254.1.1", 0),
        route("169.254.1.1/32", "", 0),
        route("10.200.0.0/16", "10.99.0.1", 50),
        route("::/0", "fd00:99::1", 0),
    ];
    i
}

async fn create_sandbox(a: &Agent, interfaces: Vec<Interface>) -> ttrpc::Result<()> {
    let mut req = sandbox_request("net");
    req.interfaces = interfaces;
    a.create_sandbox(&req).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sandbox_configures_the_pod_interface() {
    let ns = Netns::new();
    let a = Agent::start_in_netns(&ns.path()).await;

    // Refused before anything is touched.
    let mut unknown = interface();
    unknown.mac = "02:42:0a:63:00:99".into();
    let (code, msg) = code_of(create_sandbox(&a, vec![unknown]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("no interface has MAC 02:42:0a:63:00:99") && msg.contains("eth0 "),
        "{msg}"
    );
    let mut bad = interface();
    bad.routes.push(route("10.1.2.3/8", "", 0));
    let (code, msg) = code_of(create_sandbox(&a, vec![bad]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("bits set past its prefix length"), "{msg}");
    let mut bad = interface();
    bad.addresses.push("10.99.0.8".into());
    let (_, msg) = code_of(create_sandbox(&a, vec![bad]).await.unwrap_err());
    assert!(
        msg.contains("\"10.99.0.8\" is not an address with a prefix length"),
        "{msg}"
    );
    let link = ns.ip(&["-o", "link", "show", "eth0"], true);
    assert!(!link.contains(",UP") && link.contains("mtu 1500"), "{link}");

    create_sandbox(&a, vec![interface()])
        .await
        .expect("CreateSandbox");
    let link = ns.ip(&["-o", "link", "show", "eth0"], true);
    assert!(link.contains(",UP") && link.contains("mtu 1400"), "{link}");
    let lo = ns.ip(&["-o", "link", "show", "lo"], true);
    assert!(lo.contains(",UP"), "{lo}");
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "eth0"], true);
    assert!(addrs.contains("inet 10.99.0.7/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd00:99::7/64"), "{addrs}");
    assert!(
        !addrs.contains("tentative"),
        "no duplicate detection: {addrs}"
    );
    let v4 = ns.ip(&["route", "show"], true);
    for want in [
        "default via 169.254.1.1 dev eth0",
        "169.254.1.1 dev eth0 scope link",
        "10.200.0.0/16 via 10.99.0.1 dev eth0 metric 50",
        "10.99.0.0/24 dev eth0 proto kernel scope link src 10.99.0.7",
    ] {
        assert!(v4.contains(want), "{want:?} not in:\n{v4}");
    }
    let v6 = ns.ip(&["-6", "route", "show"], true);
    assert!(v6.contains("default via fd00:99::1 dev eth0"), "{v6}");
}

/// A VM restored from a template: its NIC has the template's MAC; the
/// request names it as `device_mac`, and the agent gives it the pod's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sandbox_gives_a_restored_nic_the_pods_mac() {
    const TEMPLATE_MAC: &str = "02:63:6f:63:6f:6e";
    let ns = Netns::with_mac("-restored", TEMPLATE_MAC);
    let a = Agent::start_in_netns(&ns.path()).await;
    let mut bad = interface();
    bad.device_mac = "01:00:5e:00:00:01".into();
    let (code, msg) = code_of(create_sandbox(&a, vec![bad]).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("01:00:5e:00:00:01"), "{msg}");
    let mut i = interface();
    i.device_mac = TEMPLATE_MAC.into();
    create_sandbox(&a, vec![i]).await.expect("CreateSandbox");
    let link = ns.ip(&["-o", "link", "show", "eth0"], true);
    assert!(
        link.contains(&format!("link/ether {MAC}")) && link.contains(",UP"),
        "{link}"
    );
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "eth0"], true);
    assert!(addrs.contains("inet 10.99.0.7/24"), "{addrs}");
}
