//! The local backend: `cocoon-agent` on the host over Unix sockets, no VM.
//! The agent uses the pod's private share tree directly, so storage, specs
//! and stdio take exactly the path they take with a VM.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use cocoon_agent_protocol::address::{connect, Address};
use tokio::process::Command;
use tokio::sync::watch;

use super::process::Supervised;
use super::{Backend, Endpoints, PodDir, SandboxError};

pub struct LocalBackend {
    agent: PathBuf,
    pod: PodDir,
    sandbox_id: String,
    timeout: Duration,
    proc: Option<Supervised>,
    dead_tx: watch::Sender<bool>,
    call_timeout: Duration,
}

impl LocalBackend {
    pub fn new(agent: PathBuf, pod: PodDir, sandbox_id: &str, timeout: Duration) -> Self {
        LocalBackend {
            agent,
            pod,
            sandbox_id: sandbox_id.to_string(),
            timeout,
            proc: None,
            dead_tx: watch::channel(false).0,
            call_timeout: Duration::from_secs(30),
        }
    }

    /// The deadline of this pod's agent calls.
    pub fn with_call_timeout(mut self, t: Duration) -> Self {
        self.call_timeout = t;
        self
    }
}

#[async_trait]
impl Backend for LocalBackend {
    async fn start(&mut self) -> Result<Endpoints, SandboxError> {
        let control = Address::Unix(self.pod.agent_control());
        let streams = Address::Unix(self.pod.agent_streams());
        let mut cmd = Command::new(&self.agent);
        cmd.arg("--listen")
            .arg(control.to_string())
            .arg("--stream-listen")
            .arg(streams.to_string())
            .arg("--state-dir")
            .arg(self.pod.agent_state())
            .arg("--share-dir")
            .arg(self.pod.private())
            .arg("--cgroup-parent")
            .arg(format!("/cocoon-{}", self.sandbox_id))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let proc = Supervised::spawn("cocoon-agent", cmd, &self.pod.pid_file("agent"))?;
        let mut exited = proc.exited();
        let dead_tx = self.dead_tx.clone();
        tokio::spawn(async move {
            let _ = exited.wait_for(|s| s.is_some()).await;
            let _ = dead_tx.send(true);
        });
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(status) = proc.exit_status() {
                return Err(SandboxError::EarlyExit {
                    what: "cocoon-agent".into(),
                    status: status.to_string(),
                });
            }
            if connect(&control).await.is_ok() && connect(&streams).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                proc.stop(Duration::from_secs(1)).await;
                return Err(SandboxError::Timeout("the local agent".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.proc = Some(proc);
        Ok(Endpoints {
            control,
            streams,
            share_tag: String::new(),
            interfaces: Vec::new(),
        })
    }

    async fn stop(&mut self) -> Result<(), SandboxError> {
        if let Some(p) = self.proc.take() {
            p.stop(Duration::from_secs(5)).await;
        }
        remove_cgroups(&format!("cocoon-{}", self.sandbox_id));
        Ok(())
    }

    fn share_flags(&self) -> crate::storage::ShareFlags {
        crate::storage::ShareFlags::Local
    }

    fn agent_call_timeout(&self) -> Duration {
        self.call_timeout
    }

    fn kill_now(&self) {
        if let Some(p) = &self.proc {
            p.kill_now();
        }
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.pid).unwrap_or(0)
    }

    fn dead(&self) -> watch::Receiver<bool> {
        self.dead_tx.subscribe()
    }

    fn pod_dir(&self) -> &PodDir {
        &self.pod
    }
}

/// Removes the agent's cgroup parent (and anything left below it) in
/// every hierarchy: v2 alone, or each v1 controller.
pub fn remove_cgroups(name: &str) {
    fn rm(p: &std::path::Path) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        // Without a VM nothing else ends the containers' processes when
        // the agent is gone; a frozen cgroup is thawed so SIGKILL lands.
        let _ = std::fs::write(p.join("freezer.state"), "THAWED");
        let _ = std::fs::write(p.join("cgroup.freeze"), "0");
        for _ in 0..50 {
            let procs = std::fs::read_to_string(p.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(p);
    }
    let base = std::path::Path::new("/sys/fs/cgroup");
    let mut roots = vec![base.to_path_buf()];
    if !base.join("cgroup.controllers").exists() {
        if let Ok(rd) = std::fs::read_dir(base) {
            roots.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir() && !p.is_symlink()),
            );
        }
    }
    for r in roots {
        let d = r.join(name);
        if d.is_dir() {
            rm(&d);
        }
    }
}
