//! Test harness: a real agent process on Unix sockets, a busybox rootfs, and
//! cleanup of every cgroup and process the tests create.
#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as PStdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cocoon_agent_protocol::address::{connect_agent_retry, open_stream, Address, BoxConn};
use cocoon_agent_protocol::agent::*;
use cocoon_agent_protocol::agent_ttrpc::AgentClient;
use cocoon_agent_protocol::stream_header::{StreamHeader, StreamKind};
use oci_spec::runtime::Spec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "id", "pwd", "touch", "stty", "dd", "seq", "mkdir", "ls", "ps",
    "true", "false", "head", "env", "kill", "wc", "tr", "readlink", "hostname", "nc",
];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long one agent call may take (generous: under nested emulation a
/// container start takes seconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a call that waits for a process may block, and how long a
/// stream may take to reach its end.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(180);

/// A call context whose deadline is `CALL_TIMEOUT`: a call the agent never
/// answers fails the test instead of hanging it.
pub fn ctx() -> ttrpc::context::Context {
    ctx_for(CALL_TIMEOUT)
}

/// A call context with deadline `limit`.
pub fn ctx_for(limit: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(limit.as_nanos() as i64)
}

pub use cocoon_agent_protocol::deadline::bounded;

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub client: AgentClient,
    pub control: Address,
    pub streams: Address,
    pub cgroup_parent: String,
}

/// Every hierarchy a cgroup path may live in (v2 alone, or v1 per
/// controller on a hybrid host).
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.is_symlink())
                .collect()
        })
        .unwrap_or_default()
}

/// Directories of `rel` (and below) in every hierarchy, deepest first.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(p.to_path_buf());
    }
    for root in cgroup_roots() {
        let d = root.join(rel.trim_start_matches('/'));
        if d.is_dir() {
            walk(&d, &mut out);
        }
    }
    out
}

pub fn cgroup_exists(rel: &str) -> bool {
    !cgroup_dirs(rel).is_empty()
}

impl Agent {
    pub async fn start() -> Agent {
        Agent::start_in(None).await
    }

    /// An agent inside the network namespace at `netns` (a file such as
    /// `/var/run/netns/NAME`), as in a guest whose NIC it configures.
    pub async fn start_in_netns(netns: &Path) -> Agent {
        Agent::start_in(Some(netns)).await
    }

    async fn start_in(netns: Option<&Path>) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("cocoon-agent-test")
            .tempdir()
            .unwrap();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let cgroup_parent = format!("/cocoon-test-{}-{n}", std::process::id());
        let control = Address::Unix(dir.path().join("ctl.sock"));
        let streams = Address::Unix(dir.path().join("stream.sock"));
        std::fs::create_dir_all(dir.path().join("share")).unwrap();
        // The bench points this at the static release agent.
        let exe = std::env::var_os("COCOON_TEST_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cocoon-agent")));
        let mut cmd = Command::new(exe);
        if let Some(path) = netns {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let ns = std::fs::File::open(path).expect("open the network namespace");
            // SAFETY: setns(2) only, between fork and exec; `ns` is kept
            // open by the closure (close-on-exec, so the agent never has it).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("--listen")
            .arg(control.to_string())
            .arg("--stream-listen")
            .arg(streams.to_string())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .arg("--share-dir")
            .arg(dir.path().join("share"))
            .arg("--log")
            .arg(
                std::env::var("COCOON_TEST_AGENT_LOG")
                    .unwrap_or_else(|_| "warn,libcgroups=error".into()),
            )
            .stdin(PStdio::null())
            .spawn()
            .expect("spawn agent");
        let client = connect_agent_retry(&control, Duration::from_secs(10))
            .await
            .expect("agent answers");
        Agent {
            dir,
            child,
            client,
            control,
            streams,
            cgroup_parent,
        }
    }

    /// A fresh busybox rootfs for one container.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join("rootfs").join(name);
        if root.exists() {
            return root;
        }
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // Never link the host's /bin/busybox: a container may write to its
        // rootfs. Copy it once per agent, link that private copy.
        let private = self.dir.path().join("busybox");
        if !private.exists() {
            std::fs::copy("/bin/busybox", &private).unwrap();
        }
        std::fs::hard_link(&private, root.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        root
    }

    /// Default spec running `args` in a fresh rootfs.
    pub fn spec(&self, name: &str, args: &[&str]) -> Spec {
        let mut spec = Spec::default();
        let mut root = spec.root().clone().unwrap();
        root.set_path(self.rootfs(name));
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        let p = spec.process_mut().as_mut().unwrap();
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        spec
    }

    pub async fn create(
        &self,
        id: &str,
        spec: &Spec,
        stdio: (bool, bool, bool),
    ) -> ttrpc::Result<ProcessResponse> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.oci_spec_json = serde_json::to_vec(spec).unwrap();
        let mut s = Stdio::new();
        (s.stdin, s.stdout, s.stderr) = stdio;
        req.stdio = protobuf::MessageField::some(s);
        req.terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        bounded(
            &format!("CreateContainer {id}"),
            CALL_TIMEOUT,
            self.client.create_container(ctx(), &req),
        )
        .await
    }

    pub async fn start_c(&self, id: &str) -> ttrpc::Result<ProcessResponse> {
        let mut req = ContainerRequest::new();
        req.container_id = id.into();
        bounded(
            &format!("StartContainer {id}"),
            CALL_TIMEOUT,
            self.client.start_container(ctx(), &req),
        )
        .await
    }

    pub async fn wait(&self, id: &str, exec: &str) -> ttrpc::Result<WaitProcessResponse> {
        let mut req = ProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        bounded(
            &format!("WaitProcess {id}/{exec}"),
            WAIT_TIMEOUT,
            self.client.wait_process(ctx_for(WAIT_TIMEOUT), &req),
        )
        .await
    }

    pub async fn signal(&self, id: &str, exec: &str, sig: u32) -> ttrpc::Result<Empty> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec.into();
        req.signal = sig;
        bounded(
            &format!("SignalProcess {id}/{exec} {sig}"),
            CALL_TIMEOUT,
            self.client.signal_process(ctx(), &req),
        )
        .await
    }

    pub async fn remove(&self, id: &str) -> ttrpc::Result<Empty> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        bounded(
            &format!("RemoveContainer {id}"),
            CALL_TIMEOUT,
            self.client.remove_container(ctx(), &req),
        )
        .await
    }

    pub async fn stream(&self, id: &str, exec: &str, kind: StreamKind) -> BoxConn {
        let header = StreamHeader::new(kind, id, exec);
        tokio::time::timeout(CALL_TIMEOUT, open_stream(&self.streams, &header))
            .await
            .unwrap_or_else(|_| {
                panic!("attaching {kind:?} of {id}/{exec}: no answer within {CALL_TIMEOUT:?}")
            })
            .expect("stream attach")
    }

    /// Creates, attaches stdout+stderr, starts, waits; returns (status, out, err).
    pub async fn run(&self, id: &str, spec: &Spec) -> (i32, String, String) {
        self.create(id, spec, (false, true, true))
            .await
            .expect("create");
        let out = self.stream(id, "", StreamKind::Stdout).await;
        let err = self.stream(id, "", StreamKind::Stderr).await;
        self.start_c(id).await.expect("start");
        let (o, e) = tokio::join!(read_all(out), read_all(err));
        let status = self.wait(id, "").await.expect("wait").exit_status;
        self.remove(id).await.expect("remove");
        (status, o, e)
    }
}

/// Reads a stream to its end (within `WAIT_TIMEOUT`: a stream the agent
/// never closes fails the test, with what had arrived).
pub async fn read_all(mut c: BoxConn) -> String {
    let mut v = Vec::new();
    let r = tokio::time::timeout(WAIT_TIMEOUT, c.read_to_end(&mut v)).await;
    match r {
        Ok(r) => {
            r.unwrap();
        }
        Err(_) => panic!(
            "a stream did not reach its end within {WAIT_TIMEOUT:?}; it had {:?}",
            String::from_utf8_lossy(&v)
        ),
    }
    String::from_utf8_lossy(&v).into_owned()
}

pub async fn write_all(c: &mut BoxConn, data: &[u8]) {
    tokio::time::timeout(CALL_TIMEOUT, c.write_all(data))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "writing {} bytes to a stream: stuck for {CALL_TIMEOUT:?}",
                data.len()
            )
        })
        .unwrap();
}

/// Reads from `c` until `needle` shows up (or panics after `t`).
pub async fn read_until(c: &mut BoxConn, needle: &str, t: Duration) -> String {
    let mut acc = Vec::new();
    let fut = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = c.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF before {needle:?}: {:?}",
                String::from_utf8_lossy(&acc)
            );
            acc.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&acc).contains(needle) {
                return;
            }
        }
    };
    if tokio::time::timeout(t, fut).await.is_err() {
        panic!(
            "timed out waiting for {needle:?}; got {:?}",
            String::from_utf8_lossy(&acc)
        );
    }
    String::from_utf8_lossy(&acc).into_owned()
}

/// A CreateSandbox request for `id` carrying what the shim sends with every
/// one: 64 bytes of host entropy, which the agent requires.
pub fn sandbox_request(id: &str) -> CreateSandboxRequest {
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = id.into();
    req.entropy = vec![0; 64];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("open /dev/urandom"),
        &mut req.entropy,
    )
    .expect("read /dev/urandom");
    req
}

impl Agent {
    pub async fn create_sandbox(
        &self,
        req: &CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        bounded(
            "CreateSandbox",
            CALL_TIMEOUT,
            self.client.create_sandbox(ctx(), req),
        )
        .await
    }
}

pub fn code_of(r: ttrpc::Error) -> (ttrpc::Code, String) {
    match r {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not an rpc status: {other:?}"),
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Whatever a failed test left: kill the processes in our cgroups,
        // stop the agent, remove the cgroups.
        for _ in 0..50 {
            let dirs = cgroup_dirs(&self.cgroup_parent);
            let mut alive = false;
            for d in &dirs {
                if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        alive = true;
                        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
                        let _ = std::fs::write(d.join("cgroup.freeze"), "0");
                        // SAFETY: plain kill(2) on a pid read from our own cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..50 {
            let dirs = cgroup_dirs(&self.cgroup_parent);
            if dirs.is_empty() {
                break;
            }
            for d in dirs {
                let _ = std::fs::remove_dir(&d);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
