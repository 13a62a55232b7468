//! The VM backend: virtiofsd on the pod's share dir, `cocoon-vmm` with the
//! agent initrd, hybrid vsock to reach the agent.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use cocoon_agent_protocol::address::{connect_agent, Address};
use cocoon_agent_protocol::{DEFAULT_CONTROL_PORT, DEFAULT_STREAM_PORT};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tokio::process::Command;
use tokio::sync::watch;

use super::process::Supervised;
use super::{Backend, Endpoints, PodDir, SandboxError};
use crate::config::Config;

/// virtio-fs tag of every pod's share.
pub const SHARE_TAG: &str = "cocoonfs";
/// Guest CID (each VM has its own vsock device, so it can be constant).
pub const GUEST_CID: u32 = 3;
/// Console lines quoted in errors.
const CONSOLE_TAIL: usize = 20;

pub struct VmBackend {
    cfg: Config,
    pod: PodDir,
    virtiofsd: Option<Supervised>,
    vmm: Option<Supervised>,
    share_mounted: bool,
    dead_tx: watch::Sender<bool>,
}

impl VmBackend {
    pub fn new(cfg: Config, pod: PodDir) -> Self {
        VmBackend {
            cfg,
            pod,
            virtiofsd: None,
            vmm: None,
            share_mounted: false,
            dead_tx: watch::channel(false).0,
        }
    }

    fn log_file(&self, p: &Path) -> Result<std::fs::File, SandboxError> {
        std::fs::File::create(p).map_err(|source| SandboxError::Io {
            what: format!("creating {}", p.display()),
            source,
        })
    }

    /// The share dir becomes a shared mount point, so that container
    /// rootfs binds made after virtiofsd started propagate into its mount
    /// namespace (it makes its copy a slave).
    fn make_share_propagating(&mut self) -> Result<(), SandboxError> {
        let shared = self.pod.shared();
        let io = |what: &str, e: nix::Error| SandboxError::Io {
            what: format!("{what} {}", shared.display()),
            source: std::io::Error::from(e),
        };
        mount(
            Some(&shared),
            &shared,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io("bind-mounting", e))?;
        self.share_mounted = true;
        mount(
            None::<&str>,
            &shared,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| io("making shared", e))?;
        Ok(())
    }

    async fn start_virtiofsd(&mut self) -> Result<(), SandboxError> {
        let sock = self.pod.virtiofsd_socket();
        let log = self.log_file(&self.pod.virtiofsd_log())?;
        let mut cmd = Command::new(&self.cfg.virtiofsd);
        cmd.arg("--socket-path")
            .arg(&sock)
            .arg("--shared-dir")
            .arg(self.pod.shared())
            .args(&self.cfg.virtiofsd_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|source| SandboxError::Io {
                what: "virtiofsd log".into(),
                source,
            })?)
            .stderr(log);
        let p = Supervised::spawn("virtiofsd", cmd, &self.pod.pid_file("virtiofsd"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Some(status) = p.exit_status() {
                let log = std::fs::read_to_string(self.pod.virtiofsd_log()).unwrap_or_default();
                return Err(SandboxError::EarlyExit {
                    what: "virtiofsd".into(),
                    status: format!("{status}: {}", log.trim()),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                p.stop(Duration::from_secs(1)).await;
                return Err(SandboxError::Timeout("virtiofsd's socket".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.virtiofsd = Some(p);
        Ok(())
    }

    fn vmm_command(&self) -> Command {
        let mut cmd = Command::new(&self.cfg.vmm);
        let serial = if self.cfg.debug_console {
            format!("file:{}", self.pod.console_log().display())
        } else {
            "none".into()
        };
        let mut cmdline = String::from("quiet");
        if !self.cfg.kernel_params.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.cfg.kernel_params);
        }
        cmd.arg("--kernel")
            .arg(&self.cfg.kernel)
            .arg("--initrd")
            .arg(&self.cfg.initrd)
            .arg("--vcpus")
            .arg(self.cfg.vcpus.to_string())
            .arg("--memory")
            .arg(self.cfg.memory_mib.to_string())
            .arg("--cmdline")
            .arg(cmdline)
            .arg("--serial")
            .arg(serial)
            .arg("--vsock")
            .arg(format!(
                "cid={GUEST_CID},uds={}",
                self.pod.vsock().display()
            ))
            .arg("--fs")
            .arg(format!(
                "tag={SHARE_TAG},socket={}",
                self.pod.virtiofsd_socket().display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Retries `CONNECT 1024` until the agent answers a Check.
    async fn wait_for_agent(&self, control: &Address) -> Result<(), SandboxError> {
        let secs = self.cfg.agent_timeout_secs;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let vmm = self.vmm.as_ref().expect("vmm started");
        let mut last;
        loop {
            if let Some(status) = vmm.exit_status() {
                return Err(SandboxError::EarlyExit {
                    what: format!(
                        "cocoon-vmm; last guest console lines:\n{}\n",
                        self.pod.console_tail(CONSOLE_TAIL)
                    ),
                    status,
                });
            }
            match connect_agent(control).await {
                Ok(client) => {
                    let req = cocoon_agent_protocol::agent::CheckRequest::new();
                    let ctx = ttrpc::context::with_timeout(2_000_000_000);
                    match client.check(ctx, &req).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SandboxError::AgentTimeout {
                    secs,
                    cause: last,
                    console: self.pod.console_tail(CONSOLE_TAIL),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl Backend for VmBackend {
    async fn start(&mut self) -> Result<Endpoints, SandboxError> {
        self.make_share_propagating()?;
        self.start_virtiofsd().await?;
        let vmm = Supervised::spawn("cocoon-vmm", self.vmm_command(), &self.pod.pid_file("vmm"))?;
        let mut exited = vmm.exited();
        let dead_tx = self.dead_tx.clone();
        tokio::spawn(async move {
            let _ = exited.wait_for(|s| s.is_some()).await;
            let _ = dead_tx.send(true);
        });
        self.vmm = Some(vmm);
        let control = Address::HybridVsock {
            path: self.pod.vsock(),
            port: DEFAULT_CONTROL_PORT,
        };
        let streams = Address::HybridVsock {
            path: self.pod.vsock(),
            port: DEFAULT_STREAM_PORT,
        };
        if let Err(e) = self.wait_for_agent(&control).await {
            let _ = self.stop().await;
            return Err(e);
        }
        Ok(Endpoints {
            control,
            streams,
            share_tag: SHARE_TAG.into(),
        })
    }

    async fn stop(&mut self) -> Result<(), SandboxError> {
        // The agent's DestroySandbox reboots the guest (reboot=k), which
        // ends the VMM with 0; give it a moment before signalling.
        if let Some(v) = self.vmm.take() {
            if !v.wait_for(Duration::from_secs(2)).await {
                v.stop(Duration::from_secs(3)).await;
            } else {
                v.stop(Duration::ZERO).await;
            }
        }
        if let Some(v) = self.virtiofsd.take() {
            v.stop(Duration::from_secs(3)).await;
        }
        if self.share_mounted {
            let _ = umount2(&self.pod.shared(), MntFlags::MNT_DETACH);
            self.share_mounted = false;
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.vmm.as_ref().map(|p| p.pid).unwrap_or(0)
    }

    fn dead(&self) -> watch::Receiver<bool> {
        self.dead_tx.subscribe()
    }

    fn pod_dir(&self) -> &PodDir {
        &self.pod
    }
}
