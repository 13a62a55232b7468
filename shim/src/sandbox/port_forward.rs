//! CRI port forward for a VM pod.
//!
//! containerd's CRI `PortForward` enters the pod's network namespace (the
//! CNI netns) and dials `localhost:<port>` there. In a VM pod nothing
//! listens in that namespace: the pod's processes are in the guest. So the
//! shim keeps one listener on `127.0.0.1` in the netns and an iptables rule
//! there that redirects every TCP connection to `127.0.0.1` onto it; each
//! accepted connection's original port (`SO_ORIGINAL_DST`) is opened in the
//! guest as an agent port-forward stream (`127.0.0.1:<port>` in the pod's
//! network namespace there) and the bytes are copied both ways.
//!
//! The rule lives in the CNI netns: it is deleted when the pod stops, and
//! goes with the netns after a killed shim (containerd removes the netns
//! with the pod).

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cocoon_agent_protocol::address::{open_stream, Address};
use cocoon_agent_protocol::stream_header::StreamHeader;

#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error("opening the pod's network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on 127.0.0.1 in the pod's network namespace {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running iptables in the pod's network namespace (is iptables installed?)")]
    IptablesSpawn(#[source] std::io::Error),
    #[error("iptables {args} in the pod's network namespace failed: {stderr}")]
    Iptables { args: String, stderr: String },
}

/// How long an accepted connection waits for the guest's port.
const GUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Marks our rule, so that it is never confused with CNI's.
const RULE_COMMENT: &str = "cocoon-port-forward";

/// A running port forwarder; [`PortForwarder::stop`] removes its rule.
pub struct PortForwarder {
    netns: PathBuf,
    port: u16,
    accept: tokio::task::JoinHandle<()>,
}

fn rule_args(op: &str, port: u16) -> Vec<String> {
    [
        "-w",
        "-t",
        "nat",
        op,
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1/32",
        "-m",
        "comment",
        "--comment",
        RULE_COMMENT,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port.to_string(),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Runs iptables with `args` in the network namespace `netns`.
fn iptables_in(netns: &Path, args: &[String]) -> Result<(), PortForwardError> {
    let ns = std::fs::File::open(netns).map_err(|source| PortForwardError::Netns {
        path: netns.to_path_buf(),
        source,
    })?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("iptables");
    cmd.args(args);
    // SAFETY: setns is a plain system call, async-signal-safe; the closure
    // allocates nothing and `ns` outlives the spawn.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(PortForwardError::IptablesSpawn)?;
    drop(ns);
    if !out.status.success() {
        return Err(PortForwardError::Iptables {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A listener on an ephemeral port of 127.0.0.1 in `netns` (bound from a
/// thread that entered the namespace; the socket stays in it).
fn listen_in(netns: &Path) -> Result<std::net::TcpListener, PortForwardError> {
    let ns = std::fs::File::open(netns).map_err(|source| PortForwardError::Netns {
        path: netns.to_path_buf(),
        source,
    })?;
    let listen_err = |source| PortForwardError::Listen {
        path: netns.to_path_buf(),
        source,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| listen_err(e.into()))?;
            let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .map_err(listen_err)?;
            l.set_nonblocking(true).map_err(listen_err)?;
            Ok(l)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(listen_err(std::io::Error::other(
                "the thread that entered the namespace panicked",
            )))
        })
    })
}

/// The port a redirected connection was addressed to.
fn original_port(conn: &tokio::net::TcpStream) -> std::io::Result<u16> {
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes of the sizes given;
    // the fd is the live socket `conn` owns.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}

async fn serve_one(mut conn: tokio::net::TcpStream, streams: Address, sandbox_id: String) {
    let port = match original_port(&conn) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "port forward: no original destination");
            return;
        }
    };
    let header = StreamHeader::port_forward(&sandbox_id, port);
    let guest = tokio::time::timeout(GUEST_CONNECT_TIMEOUT, open_stream(&streams, &header)).await;
    let mut guest = match guest {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            tracing::info!(port, "port forward: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(port, "port forward: the guest did not answer");
            return;
        }
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut guest).await {
        tracing::debug!(port, error = %e, "port forward ended");
    }
}

impl PortForwarder {
    /// Listens in `netns` and redirects its loopback TCP connections to the
    /// pod whose sandbox container is `sandbox_id`, over the agent's
    /// `streams` address. Needs a tokio runtime.
    pub fn start(
        netns: &Path,
        streams: Address,
        sandbox_id: &str,
    ) -> Result<PortForwarder, PortForwardError> {
        let listener = listen_in(netns)?;
        let port = listener
            .local_addr()
            .map_err(|source| PortForwardError::Listen {
                path: netns.to_path_buf(),
                source,
            })?
            .port();
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| {
            PortForwardError::Listen {
                path: netns.to_path_buf(),
                source,
            }
        })?;
        iptables_in(netns, &rule_args("-I", port))?;
        let sandbox_id = sandbox_id.to_string();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        tokio::spawn(serve_one(conn, streams.clone(), sandbox_id.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "port forward: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(PortForwarder {
            netns: netns.to_path_buf(),
            port,
            accept,
        })
    }

    /// Stops accepting and deletes the rule (a netns already gone has none).
    pub fn stop(self) {
        self.accept.abort();
        if self.netns.exists() {
            if let Err(e) = iptables_in(&self.netns, &rule_args("-D", self.port)) {
                tracing::warn!("port forward: removing the rule: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_agent_protocol::stream_header::{AttachStatus, StreamKind};
    use std::io::{Read, Write};
    use tokio::io::AsyncWriteExt;

    /// A network namespace of the test's own (`ip netns`), deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new(tag: &str) -> Netns {
            let name = format!("cocoon-pf-{tag}-{}", std::process::id());
            let ip = |args: &[&str]| {
                let st = Command::new("ip").args(args).status().expect("ip");
                assert!(st.success(), "ip {args:?}");
            };
            ip(&["netns", "add", &name]);
            let ns = Netns(name);
            ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
            ns
        }

        fn path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.0)
        }

        fn rules(&self) -> String {
            run_in(&self.path(), || {
                let out = Command::new("iptables-save")
                    .args(["-t", "nat"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
        }
    }

    /// Runs `f` on a thread inside the network namespace `path`.
    fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(path).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// An agent stream endpoint that answers port-forward headers for pod
    /// `pod1` by reading "hello" and writing "port <n>", and refuses any
    /// other pod.
    fn fake_agent(dir: &Path) -> Address {
        let path = dir.join("streams.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let h = StreamHeader::read(&mut c).await.unwrap();
                    assert_eq!(h.kind, StreamKind::PortForward);
                    if h.container_id != "pod1" {
                        let _ = c.write_all(&[AttachStatus::NoSuchProcess.to_byte()]).await;
                        return;
                    }
                    let port = h.forward_port().unwrap();
                    let _ = c.write_all(&[AttachStatus::Ok.to_byte()]).await;
                    // What the client sent came through.
                    let mut hello = [0u8; 5];
                    tokio::io::AsyncReadExt::read_exact(&mut c, &mut hello)
                        .await
                        .unwrap();
                    assert_eq!(&hello, b"hello");
                    let _ = c.write_all(format!("port {port}\n").as_bytes()).await;
                });
            }
        });
        Address::Unix(path)
    }

    /// Connects to 127.0.0.1:`port` in the namespace `path`, sends a
    /// line and reads the answer to its end.
    async fn ask(path: PathBuf, port: u16) -> std::io::Result<String> {
        tokio::task::spawn_blocking(move || {
            run_in(&path, || {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
                c.set_read_timeout(Some(Duration::from_secs(20)))?;
                c.write_all(b"hello")?;
                let mut s = String::new();
                c.read_to_string(&mut s)?;
                Ok(s)
            })
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_connections_in_the_netns_reach_the_pod_port() {
        let dir = tempfile::tempdir().unwrap();
        let streams = fake_agent(dir.path());
        let ns = Netns::new("ok");
        let fwd = PortForwarder::start(&ns.path(), streams, "pod1").unwrap();
        assert!(ns.rules().contains(RULE_COMMENT));
        for port in [80, 4321] {
            let got = ask(ns.path(), port).await.unwrap();
            assert_eq!(got, format!("port {port}\n"));
        }
        fwd.stop();
        assert!(!ns.rules().contains(RULE_COMMENT), "the rule outlived stop");
        // Without the rule nothing in the netns answers.
        let after = ask(ns.path(), 4321).await;
        assert!(after.is_err(), "{after:?}");
    }

    #[test]
    fn a_missing_netns_is_named() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let e = PortForwarder::start(
            Path::new("/run/netns/cocoon-no-such-netns"),
            Address::Unix("/nonexistent".into()),
            "pod1",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("cocoon-no-such-netns"), "{e}");
    }
}
