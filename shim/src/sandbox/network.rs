//! Pod networking on the host: the pod's VM answers at the pod's IP.
//!
//! containerd's CRI plugin makes the pod's network namespace and runs CNI
//! in it before the sandbox task starts; the sandbox spec names it
//! (`linux.namespaces[type=network].path`). Inside it the shim reads the
//! interface CNI made (its MAC, MTU, addresses and routes), creates the
//! TAP [`TAP_NAME`] and connects the two with a tc redirect both ways (an
//! ingress qdisc and a match-all filter with a mirred egress redirect on
//! each: no bridge of ours, any CNI plugin). `cocoon-vmm` gets the TAP as
//! an open descriptor (`--net fd=N,mac=<the CNI interface's MAC>`), and
//! the agent gets the configuration to apply to the guest's NIC, so the
//! guest answers as the pod, and the netns' own stack sees none of the
//! pod's traffic.
//!
//! What is created is recorded in `<pod>/network` first, and undone from
//! the record: by teardown, and by `delete` after a killed shim. The TAP
//! is not persistent, so it also goes when the VMM does. The namespace is
//! CNI's and containerd's, and is never deleted here.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use cocoon_netconf::link::{self, Link};
use cocoon_netconf::netns::{in_netns, NetnsError};
use cocoon_netconf::read::{read_pod_interface, ReadError};
use cocoon_netconf::tap::{self, TapError};
use cocoon_netconf::{tc, InterfaceConfig, Netlink, NetlinkError};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::PodDir;

/// The pod's TAP, in the pod's network namespace.
pub const TAP_NAME: &str = "tap0_cocoon";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("reading the pod's interface")]
    Read(#[from] ReadError),
    #[error("the pod's TAP")]
    Tap(#[from] TapError),
    #[error("connecting the TAP to {interface}")]
    Connect {
        interface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("the pod's network record {path}: {reason}")]
    Record { path: String, reason: String },
}

/// What the pod's first spec asks for its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetwork {
    /// A network namespace entry without a path (`ctr run`): the guest has
    /// loopback only.
    Isolated,
    /// The namespace CNI set up (CRI): the pod's interface goes to the VM.
    Netns(PathBuf),
    /// No network namespace entry: the host's network (CRI `hostNetwork`,
    /// `ctr run --net-host`), which a VM cannot share.
    Host,
}

impl PodNetwork {
    pub fn of(spec: &Spec) -> PodNetwork {
        let net = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|nss| {
                nss.iter()
                    .find(|ns| ns.typ() == LinuxNamespaceType::Network)
            });
        match net {
            None => PodNetwork::Host,
            Some(ns) => match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => PodNetwork::Netns(p.clone()),
                _ => PodNetwork::Isolated,
            },
        }
    }
}

/// The error for a pod that wants the host's network.
pub const HOST_NETWORK_UNSUPPORTED: &str = "host network is not supported by a VM runtime: \
     the pod's spec has no network namespace (hostNetwork: true, or ctr --net-host); \
     give the pod its own network namespace, or run it with another runtime";

/// What the shim created in the pod's namespace (`<pod>/network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The pod's namespace, as the spec named it.
    pub netns: PathBuf,
    /// The CNI interface, whose ingress qdisc is ours.
    pub interface: String,
    pub interface_index: u32,
    /// The TAP.
    pub tap: String,
}

fn record_err(path: &Path, reason: impl ToString) -> NetworkError {
    NetworkError::Record {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn write_record(pod: &PodDir, rec: &NetworkRecord) -> Result<(), NetworkError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = pod.network_record();
    let json = serde_json::to_vec(rec).map_err(|e| record_err(&path, e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| record_err(&path, e))?;
    f.write_all(&json).map_err(|e| record_err(&path, e))
}

fn read_record(pod: &PodDir) -> Option<NetworkRecord> {
    let bytes = std::fs::read(pod.network_record()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The pod's NIC: the TAP's queue for the VMM and what the agent applies.
#[derive(Debug)]
pub struct PodNic {
    pub tap: OwnedFd,
    pub config: InterfaceConfig,
}

/// Sets up the pod's network in `netns` (see the module header). Blocking:
/// call it off the async runtime. On error, what it made is undone.
pub fn setup(pod: &PodDir, netns: &Path) -> Result<PodNic, NetworkError> {
    let pod = pod.clone();
    let path = netns.to_path_buf();
    in_netns(netns, move || {
        let mut nl = Netlink::open().map_err(|source| NetworkError::Connect {
            interface: "the pod's interface".into(),
            source,
        })?;
        let found = read_pod_interface(&mut nl, &[TAP_NAME])?;
        write_record(
            &pod,
            &NetworkRecord {
                netns: path,
                interface: found.link.name.clone(),
                interface_index: found.link.index,
                tap: TAP_NAME.into(),
            },
        )?;
        // From here on, a failure undoes only what this call made, and
        // the record goes (an existing TAP or qdisc is someone else's).
        let fail = |nl: &mut Netlink, qdisc: bool, e: NetworkError| {
            if qdisc {
                if let Err(e) = tc::remove_ingress_qdisc(nl, &found.link) {
                    tracing::warn!(error = %crate::task::rpc_error::chain(&e), "pod network setup: undoing");
                }
            }
            let _ = std::fs::remove_file(pod.network_record());
            e
        };
        let tap = match tap::create(TAP_NAME) {
            Ok(t) => t,
            Err(e) => return Err(fail(&mut nl, false, e.into())),
        };
        let mut qdisc = false;
        if let Err(source) = connect(&mut nl, &found.link, found.config.mtu, &mut qdisc) {
            // Dropping the only descriptor of the TAP deletes it.
            drop(tap);
            let e = NetworkError::Connect {
                interface: found.link.name.clone(),
                source,
            };
            return Err(fail(&mut nl, qdisc, e));
        }
        tracing::info!(
            interface = %found.link.name,
            mac = %found.config.mac,
            tap = TAP_NAME,
            "pod network connected"
        );
        Ok(PodNic {
            tap,
            config: found.config,
        })
    })?
}

/// Brings the TAP up with the interface's MTU and redirects both ways
/// (`cni_qdisc` turns true once the CNI interface has our qdisc).
fn connect(
    nl: &mut Netlink,
    cni: &Link,
    mtu: u32,
    cni_qdisc: &mut bool,
) -> Result<(), NetlinkError> {
    let tap = link::links(nl)?
        .into_iter()
        .find(|l| l.name == TAP_NAME)
        .ok_or_else(|| NetlinkError::Decode {
            what: "listing interfaces".into(),
            reason: format!("{TAP_NAME} is not there right after its creation"),
        })?;
    link::set_up(nl, &tap, Some(mtu))?;
    tc::add_ingress_qdisc(nl, cni)?;
    *cni_qdisc = true;
    tc::add_ingress_qdisc(nl, &tap)?;
    tc::add_redirect(nl, cni, &tap)?;
    tc::add_redirect(nl, &tap, cni)
}

/// Removes the TAP (if it is still there) and the ingress qdisc of the
/// CNI interface (if it is still the same interface); logs what fails.
fn undo(nl: &mut Netlink, interface: &str, index: u32, tap_name: &str) {
    let links = match link::links(nl) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %crate::task::rpc_error::chain(&e), "pod network teardown");
            return;
        }
    };
    for l in &links {
        let result = if l.name == tap_name && l.kind.as_deref() == Some("tun") {
            link::delete(nl, l)
        } else if l.name == interface && l.index == index {
            tc::remove_ingress_qdisc(nl, l).map(|_| ())
        } else {
            continue;
        };
        if let Err(e) = result {
            tracing::warn!(interface = %l.name, error = %crate::task::rpc_error::chain(&e), "pod network teardown");
        }
    }
}

/// Undoes [`setup`] from `<pod>/network`, also after a killed shim; a
/// namespace that is gone took everything with it. Blocking.
pub fn teardown(pod: &PodDir) {
    let Some(rec) = read_record(pod) else {
        return;
    };
    let r = rec.clone();
    let done = in_netns(&rec.netns, move || {
        let mut nl = Netlink::open()?;
        undo(&mut nl, &r.interface, r.interface_index, &r.tap);
        Ok::<(), NetlinkError>(())
    });
    match done {
        Ok(Ok(())) => {}
        Err(e) if e.is_gone() => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::task::rpc_error::chain(&e), "pod network teardown")
        }
        Err(e) => {
            tracing::warn!(error = %crate::task::rpc_error::chain(&e), "pod network teardown")
        }
    }
    let _ = std::fs::remove_file(pod.network_record());
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};

    fn spec_with(nss: Option<Vec<(LinuxNamespaceType, Option<&str>)>>) -> Spec {
        let mut spec = Spec::default();
        let mut linux = LinuxBuilder::default().build().unwrap();
        linux.set_namespaces(nss.map(|v| {
            v.into_iter()
                .map(|(typ, path)| {
                    let mut b = LinuxNamespaceBuilder::default().typ(typ);
                    if let Some(p) = path {
                        b = b.path(p);
                    }
                    b.build().unwrap()
                })
                .collect()
        }));
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn the_spec_decides_the_pod_network() {
        use LinuxNamespaceType::*;
        assert_eq!(PodNetwork::of(&Spec::default()), PodNetwork::Isolated);
        assert_eq!(
            PodNetwork::of(&spec_with(Some(vec![
                (Pid, None),
                (Network, Some("/var/run/netns/cni-1"))
            ]))),
            PodNetwork::Netns("/var/run/netns/cni-1".into())
        );
        assert_eq!(
            PodNetwork::of(&spec_with(Some(vec![(Network, None)]))),
            PodNetwork::Isolated
        );
        assert_eq!(
            PodNetwork::of(&spec_with(Some(vec![(Pid, None), (Mount, None)]))),
            PodNetwork::Host
        );
        assert_eq!(PodNetwork::of(&spec_with(None)), PodNetwork::Host);
        let mut no_linux = Spec::default();
        no_linux.set_linux(None);
        assert_eq!(PodNetwork::of(&no_linux), PodNetwork::Host);
    }

    #[test]
    fn the_record_round_trips_and_teardown_without_one_does_nothing() {
        let run = tempfile::tempdir().unwrap();
        let pod = PodDir::new(run.path(), "p");
        std::fs::create_dir(pod.root()).unwrap();
        teardown(&pod);
        let rec = NetworkRecord {
            netns: "/var/run/netns/cni-x".into(),
            interface: "eth0".into(),
            interface_index: 2,
            tap: TAP_NAME.into(),
        };
        write_record(&pod, &rec).unwrap();
        assert_eq!(read_record(&pod), Some(rec));
        // Its namespace is gone: nothing to undo, and the record goes.
        teardown(&pod);
        assert!(!pod.network_record().exists());
    }

    /// A network namespace (`ip netns add`), deleted on drop.
    struct Ns(String);

    impl Ns {
        fn new(tag: &str) -> Ns {
            let ns = Ns(format!("cocoon-shim-{tag}-{}", std::process::id()));
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns.0])
                .output();
            ns.ip(&["netns", "add", &ns.0], false);
            ns
        }

        fn path(&self) -> PathBuf {
            PathBuf::from("/var/run/netns").join(&self.0)
        }

        fn ip(&self, args: &[&str], inside: bool) -> String {
            let mut cmd = std::process::Command::new("ip");
            if inside {
                cmd.args(["-n", &self.0]);
            }
            let out = cmd.args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        fn tc_ingress(&self, dev: &str) -> bool {
            let out = std::process::Command::new("tc")
                .args(["-n", &self.0, "qdisc", "show", "dev", dev])
                .output()
                .expect("run tc");
            String::from_utf8_lossy(&out.stdout).contains("ingress")
        }

        fn has_link(&self, name: &str) -> bool {
            self.ip(&["-o", "link", "show"], true)
                .contains(&format!(": {name}:"))
        }
    }

    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .output();
        }
    }

    #[test]
    fn setup_connects_the_cni_interface_and_teardown_undoes_it() {
        let run = tempfile::tempdir().unwrap();
        let pod = PodDir::new(run.path(), "p");
        std::fs::create_dir(pod.root()).unwrap();
        let ns = Ns::new("net");
        ns.ip(
            &[
                "link",
                "add",
                "eth0",
                "address",
                "02:42:0a:63:00:02",
                "mtu",
                "1450",
                "type",
                "veth",
                "peer",
                "name",
                "cni-peer",
                "netns",
                "1",
            ],
            true,
        );
        ns.ip(&["link", "set", "eth0", "up"], true);
        ns.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"], true);
        ns.ip(&["route", "add", "default", "via", "10.99.0.1"], true);

        let nic = setup(&pod, &ns.path()).unwrap();
        assert_eq!(nic.config.mac.to_string(), "02:42:0a:63:00:02");
        assert_eq!(nic.config.mtu, 1450);
        assert_eq!(nic.config.addresses[0].to_string(), "10.99.0.2/24");
        assert_eq!(nic.config.routes.len(), 1);
        assert!(ns.has_link(TAP_NAME));
        assert!(ns
            .ip(&["-o", "link", "show", TAP_NAME], true)
            .contains("mtu 1450"));
        assert!(ns.tc_ingress("eth0") && ns.tc_ingress(TAP_NAME));
        let rec = read_record(&pod).unwrap();
        assert_eq!(
            (rec.interface.as_str(), rec.tap.as_str()),
            ("eth0", TAP_NAME)
        );

        // A second pod in the same namespace: refused, the first intact,
        // and no record of its own left.
        let other = PodDir::new(run.path(), "q");
        std::fs::create_dir(other.root()).unwrap();
        let e = setup(&other, &ns.path()).unwrap_err();
        assert!(
            crate::task::rpc_error::chain(&e).contains("tap0_cocoon already exists"),
            "{e}"
        );
        assert!(!other.network_record().exists());
        assert!(ns.tc_ingress("eth0") && ns.has_link(TAP_NAME));

        // The VMM still holds the TAP (a kill -9'd shim's delete): both go.
        teardown(&pod);
        assert!(!ns.has_link(TAP_NAME), "the TAP is deleted");
        assert!(!ns.tc_ingress("eth0"), "the qdisc is removed");
        assert!(!pod.network_record().exists());
        drop(nic);
        // The interface, its address and route are CNI's: untouched.
        assert!(ns
            .ip(&["-o", "addr", "show", "eth0"], true)
            .contains("10.99.0.2/24"));
        assert!(ns
            .ip(&["route", "show"], true)
            .contains("default via 10.99.0.1"));

        // Set up again, the TAP gone with its descriptor (a VMM that
        // died): teardown removes the qdisc.
        let nic = setup(&pod, &ns.path()).unwrap();
        drop(nic);
        assert!(!ns.has_link(TAP_NAME));
        teardown(&pod);
        assert!(!ns.tc_ingress("eth0"));
    }

    #[test]
    fn setup_names_what_it_cannot_use_and_leaves_nothing() {
        let run = tempfile::tempdir().unwrap();
        let pod = PodDir::new(run.path(), "p");
        std::fs::create_dir(pod.root()).unwrap();
        let peer = Ns::new("peer2");
        let ns = Ns::new("empty");
        let e = crate::task::rpc_error::chain(&setup(&pod, &ns.path()).unwrap_err());
        assert!(e.contains("has no interface but loopback"), "{e}");
        assert!(!pod.network_record().exists());
        // Someone else's ingress qdisc is never taken over, nor removed.
        ns.ip(
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", &peer.0,
            ],
            true,
        );
        let out = std::process::Command::new("tc")
            .args(["-n", &ns.0, "qdisc", "add", "dev", "eth0", "ingress"])
            .status()
            .unwrap();
        assert!(out.success());
        let e = crate::task::rpc_error::chain(&setup(&pod, &ns.path()).unwrap_err());
        assert!(
            e.contains("adding an ingress qdisc to eth0") && e.contains("exists"),
            "{e}"
        );
        assert!(ns.tc_ingress("eth0"), "the other qdisc stays");
        assert!(!ns.has_link(TAP_NAME) && !pod.network_record().exists());
        // Not a namespace at all.
        let plain = run.path().join("not-a-netns");
        std::fs::write(&plain, "").unwrap();
        let e = setup(&pod, &plain).unwrap_err().to_string();
        assert!(e.contains("is not a network namespace"), "{e}");
    }
}
