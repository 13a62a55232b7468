//! The VM backend: virtiofsd on the pod's share dir, `cocoon-vmm` with the
//! agent initrd, hybrid vsock to reach the agent.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cocoon_agent_protocol::address::{connect_agent, Address};
use cocoon_agent_protocol::{DEFAULT_CONTROL_PORT, DEFAULT_STREAM_PORT};
use cocoon_vmm::exit::EXIT_SNAPSHOT_MEMORY;
use tokio::process::Command;
use tokio::sync::watch;

use super::cgroup::{pod_cgroup_path, spawn_into, PodCgroup};
use super::network::{self, PodNic};
use super::output::bounded_output;
use super::pod_dir::{log_tail, read_ring};
use super::port_forward::PortForwarder;
use super::process::{Ended, Supervised};
use super::vmm_jail;
use super::{Backend, Endpoints, PodDir, SandboxError};
use crate::config::Config;

/// How long the shim waits for a restored VMM's recorded working set.
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// How long a dead helper's last words may take to reach its log file.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The stderr copier's end-of-input signal ([`bounded_output`]).
type Drained = tokio::sync::oneshot::Receiver<()>;

/// virtio-fs tag of every pod's share.
pub const SHARE_TAG: &str = "cocoonfs";
/// Guest CID (each VM has its own vsock device, so it can be constant).
pub const GUEST_CID: u32 = 3;
/// Console lines quoted in errors.
const CONSOLE_TAIL: usize = 20;

/// Cap on the VMM's stderr file (start-up errors and panics only).
const STDERR_LIMIT: u64 = 64 << 10;
/// How long teardown waits for a pod cgroup to empty after `cgroup.kill`.
const KILL_LIMIT: Duration = Duration::from_secs(10);
/// Between connections to a starting VM's agent: a refused one costs
/// little (the VMM's socket is not there yet, or its guest answers with a
/// reset), a late answer costs the whole wait.
const AGENT_POLL: Duration = Duration::from_millis(10);

pub struct VmBackend {
    cfg: Config,
    pod: PodDir,
    /// The sandbox spec's `linux.cgroupsPath`, if any.
    cgroups_path: Option<String>,
    /// The pod's network namespace (CNI's), if it has one.
    netns: Option<std::path::PathBuf>,
    /// The pod's NIC until the VMM has its TAP.
    nic: Option<PodNic>,
    /// What the agent configures in the guest.
    interfaces: Vec<cocoon_netconf::InterfaceConfig>,
    /// CRI port forward into the pod (pods with a netns).
    port_forward: Option<PortForwarder>,
    cgroup: Option<PodCgroup>,
    virtiofsd: Option<Supervised>,
    /// virtiofsd's output is all in its log once this fires.
    virtiofsd_drained: Option<Drained>,
    vmm: Option<Supervised>,
    /// The jailed VMM's uid (`vmm_jail`).
    uid: Option<u32>,
    /// The template snapshot the VM is restored from (`template`).
    restore_from: Option<std::path::PathBuf>,
    /// A restore from the template failed: this pod's VM boots.
    boot_only: bool,
    /// Set before the shim itself stops the VMM: a later exit is expected.
    stopping: Arc<AtomicBool>,
    dead_tx: watch::Sender<bool>,
    /// Where the VM's start spent its time (logged once the agent answers).
    timing: StartTiming,
    /// The working set this restored VMM records (`--record-working-set`),
    /// for its template, which has none yet; asked for once.
    recording: Option<std::path::PathBuf>,
    recording_asked: AtomicBool,
}

/// The steps of a VM's start, for its log line.
#[derive(Debug, Default)]
struct StartTiming {
    /// Cgroup, jail, network and the template (built or found).
    prepare: Duration,
    /// Spawning virtiofsd (it comes up while the VMM starts).
    virtiofsd: Duration,
    /// When the VMM was spawned.
    vmm_spawned: Option<std::time::Instant>,
    /// Connections to the agent that did not answer a Check.
    failed_attempts: u32,
}

/// Why a VMM that nobody stopped is gone: its status, and for `SIGSYS` the
/// line of its stderr that names the forbidden call.
pub fn describe_vmm_death(pid: u32, ended: &Ended, stderr: &str) -> String {
    if ended.signal() == Some(libc::SIGSYS) {
        let named = stderr
            .lines()
            .rev()
            .find(|l| l.contains("seccomp:"))
            .unwrap_or("its stderr names no call");
        format!(
            "cocoon-vmm (pid {pid}) was killed by SIGSYS: it made a system call outside its \
             seccomp allow-list ({}); vmm_seccomp = \"audit\" lists every such call in the \
             pod's vmm.log instead of killing",
            named.trim()
        )
    } else {
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "cocoon-vmm (pid {pid}) exited: {ended}; {}",
            tail.join(" | ")
        )
    }
}

/// Whether the VMM's end is one the shim did not cause and must report:
/// any end while the pod runs; while it stops, any signal but the SIGTERM
/// and SIGKILL the shim sends (a VMM killed by its seccomp filter as the
/// pod's teardown begins is still a VMM killed by its seccomp filter).
pub fn death_is_news(stopping: bool, ended: &Ended) -> bool {
    if !stopping {
        return true;
    }
    ended
        .signal()
        .is_some_and(|s| s != libc::SIGTERM && s != libc::SIGKILL)
}

impl VmBackend {
    pub fn new(cfg: Config, pod: PodDir) -> Self {
        VmBackend {
            cfg,
            pod,
            cgroups_path: None,
            netns: None,
            nic: None,
            interfaces: Vec::new(),
            port_forward: None,
            cgroup: None,
            virtiofsd: None,
            virtiofsd_drained: None,
            vmm: None,
            uid: None,
            restore_from: None,
            boot_only: false,
            stopping: Arc::new(AtomicBool::new(false)),
            dead_tx: watch::channel(false).0,
            timing: StartTiming::default(),
            recording: None,
            recording_asked: AtomicBool::new(false),
        }
    }

    /// The pod's processes go into this cgroup (the sandbox's
    /// `linux.cgroupsPath`) instead of `cocoon/<pod>`.
    pub fn with_cgroups_path(mut self, path: Option<String>) -> Self {
        self.cgroups_path = path.filter(|p| !p.is_empty());
        self
    }

    /// The pod's VM gets the interface CNI made in `netns` (see
    /// [`network`]).
    pub fn with_netns(mut self, netns: Option<std::path::PathBuf>) -> Self {
        self.netns = netns;
        self
    }

    /// Creates the pod cgroup and records it in the pod dir for teardown
    /// after a killed shim.
    fn create_cgroup(&mut self) -> Result<(), SandboxError> {
        let err = |e: super::cgroup::CgroupError| SandboxError::Cgroup(e.to_string());
        let id = self
            .pod
            .root()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rel = pod_cgroup_path(self.cgroups_path.as_deref(), &id).map_err(err)?;
        let cg = PodCgroup::create(&rel).map_err(err)?;
        cg.save(&self.pod.cgroup_record()).map_err(err)?;
        self.cgroup = Some(cg);
        Ok(())
    }

    fn join_cgroup(&self, cmd: &mut Command) -> Result<(), SandboxError> {
        if let Some(cg) = &self.cgroup {
            spawn_into(cmd, cg).map_err(|e| SandboxError::Cgroup(e.to_string()))?;
        }
        Ok(())
    }

    /// Start virtiofsd on a listening socket the shim binds and hands it
    /// (`--fd`): the VMM can connect at once, its connection waits in the
    /// backlog until virtiofsd is up, so the two start side by side. A
    /// virtiofsd that dies is reported with its own words when the VMM
    /// fails to reach it ([`VmBackend::virtiofsd_failure`]).
    fn start_virtiofsd(&mut self) -> Result<(), SandboxError> {
        let sock = self.pod.virtiofsd_socket();
        // A failed start's (the pod then boots instead of restoring).
        let _ = std::fs::remove_file(&sock);
        let listener =
            std::os::unix::net::UnixListener::bind(&sock).map_err(|source| SandboxError::Io {
                what: format!("binding virtiofsd's socket {}", sock.display()),
                source,
            })?;
        // Root's alone: the VMM connects before it jails itself.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| SandboxError::Io {
                what: format!("chmod {}", sock.display()),
                source,
            },
        )?;
        let log = bounded_output(&self.pod.virtiofsd_log(), self.cfg.vmm_log_limit_bytes)?;
        let mut cmd = Command::new(&self.cfg.virtiofsd);
        let fd = super::process::inherit_fd(
            &mut cmd,
            std::sync::Arc::new(std::os::fd::OwnedFd::from(listener)),
        );
        cmd.arg("--fd")
            .arg(fd.to_string())
            .arg("--shared-dir")
            .arg(self.pod.shared())
            .args(&self.cfg.virtiofsd_args)
            .stdin(Stdio::null())
            .stdout(log.stdout)
            .stderr(log.stderr);
        self.join_cgroup(&mut cmd)?;
        let p = Supervised::spawn("virtiofsd", cmd, &self.pod.pid_file("virtiofsd"))?;
        self.virtiofsd = Some(p);
        self.virtiofsd_drained = Some(log.drained);
        Ok(())
    }

    /// If virtiofsd has exited: the error naming its status and last
    /// words (all it printed is in its log once its output is drained).
    async fn virtiofsd_failure(&mut self) -> Option<SandboxError> {
        let status = self.virtiofsd.as_ref()?.exit_status()?;
        if let Some(drained) = self.virtiofsd_drained.take() {
            let _ = tokio::time::timeout(DRAIN_WAIT, drained).await;
        }
        Some(SandboxError::EarlyExit {
            what: "virtiofsd".into(),
            status: format!("{status}: {}", log_tail(&self.pod.virtiofsd_log()).trim()),
        })
    }

    /// The VMM's command line, and the signal that its stderr is all in
    /// the pod's `vmm-stderr` file (both the monitor and the VMM are gone).
    fn vmm_command(&self) -> Result<(Command, Drained, Option<std::path::PathBuf>), SandboxError> {
        let mut recording = None;
        let mut cmd = Command::new(&self.cfg.vmm);
        let stderr = bounded_output(&self.pod.vmm_stderr(), STDERR_LIMIT)?;
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
            .arg("--console-limit")
            .arg(self.cfg.console_limit_bytes.to_string())
            .arg("--log-file")
            .arg(self.pod.vmm_log())
            .arg("--log-limit")
            .arg(self.cfg.vmm_log_limit_bytes.to_string())
            .arg("--seccomp")
            .arg(&self.cfg.vmm_seccomp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A panic or a start-up error, kept for the error message;
            // everything else goes to the bounded --log-file.
            .stderr(stderr.stderr);
        if let Some(nic) = &self.nic {
            let fd =
                std::sync::Arc::new(nic.tap.try_clone().map_err(|source| SandboxError::Io {
                    what: "duplicating the TAP descriptor".into(),
                    source,
                })?);
            let raw = super::process::inherit_fd(&mut cmd, fd);
            // A restored VM's NIC is the template's (its MAC, no MTU
            // feature: the agent gives it the pod's MAC and MTU); a booted
            // one gets the pod's MAC and its MTU, validated to fit (at most
            // 65535): the guest sizes its receive buffers by it.
            let (mac, mtu) = match self.restore_from {
                Some(_) => (super::template::TEMPLATE_MAC, None),
                None => (nic.config.mac.0, u16::try_from(nic.config.mtu).ok()),
            };
            let spec = cocoon_vmm::devices::virtio::net::NetConfig {
                tap: cocoon_vmm::devices::virtio::net::TapSource::Fd(raw),
                mac: Some(cocoon_vmm::devices::virtio::net::MacAddr(mac)),
                mtu,
            };
            cmd.arg("--net").arg(spec.to_string());
        }
        if let Some(snapshot) = &self.restore_from {
            cmd.arg("--restore")
                .arg(snapshot)
                .arg("--restore-memory")
                .arg(&self.cfg.template_memory);
            if !self.cfg.template_share_text {
                cmd.arg("--no-shared-text");
            }
            if self.cfg.template_memory == "lazy" {
                // The template's working set once a pod recorded one; until
                // then this pod records it (see `container_created`).
                let ws = super::template::working_set(snapshot);
                if ws.is_file() {
                    tracing::info!(
                        pod = %self.pod.root().display(),
                        "the pod's VM loads the template's working set first"
                    );
                    cmd.arg("--working-set").arg(ws);
                } else {
                    cmd.arg("--record-working-set").arg(self.pod.working_set());
                    recording = Some(self.pod.working_set());
                }
            }
        }
        if let Some(uid) = self.uid {
            cmd.arg("--jail")
                .arg(self.pod.jail())
                .arg("--jail-uid")
                .arg(uid.to_string())
                .arg("--jail-gid")
                .arg(uid.to_string());
        }
        self.join_cgroup(&mut cmd)?;
        Ok((cmd, stderr.drained, recording))
    }

    async fn start_processes(&mut self) -> Result<(), SandboxError> {
        let began = std::time::Instant::now();
        self.create_cgroup()?;
        if self.cfg.vmm_jail {
            let uid = vmm_jail::allocate(
                &self.cfg.run_dir,
                &self.pod,
                self.cfg.vmm_uid_first,
                self.cfg.vmm_uid_count,
            )?;
            self.uid = Some(uid);
        }
        vmm_jail::prepare_dir(&self.pod, self.uid)?;
        if let Some(netns) = self.netns.clone() {
            let pod = self.pod.clone();
            let nic = tokio::task::spawn_blocking(move || network::setup(&pod, &netns))
                .await
                .map_err(|e| SandboxError::Io {
                    what: "setting up the pod's network".into(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            self.nic = Some(nic);
        }
        // A pod with a NIC restores from a template with one (the agent
        // gives it the pod's MAC and MTU), unless its MTU is above what
        // the template's receive buffers hold: that pod boots.
        let nic_fits = self
            .nic
            .as_ref()
            .is_none_or(|n| n.config.mtu <= super::template::TEMPLATE_NIC_MAX_MTU);
        if self.cfg.template && nic_fits && !self.boot_only {
            let with_nic = self.nic.is_some();
            match super::template::ensure(&self.cfg, self.cgroup.as_ref(), with_nic).await {
                Ok(snapshot) => {
                    tracing::info!(
                        pod = %self.pod.root().display(),
                        template = %snapshot.display(),
                        "the pod's VM starts from a template"
                    );
                    self.restore_from = Some(snapshot);
                }
                Err(e) => tracing::warn!(
                    pod = %self.pod.root().display(),
                    "no template VM, booting the pod's VM instead: {e}"
                ),
            }
        }
        let virtiofsd = std::time::Instant::now();
        self.timing.prepare = began.elapsed();
        self.start_virtiofsd()?;
        self.timing.virtiofsd = virtiofsd.elapsed();
        let (cmd, drained, recording) = self.vmm_command()?;
        self.recording = recording;
        self.recording_asked.store(false, Ordering::SeqCst);
        self.timing.vmm_spawned = Some(std::time::Instant::now());
        let vmm = Supervised::spawn("cocoon-vmm", cmd, &self.pod.pid_file("vmm"))?;
        // The VMM has its copy: with the shim's closed, the TAP lives as
        // long as the VMM.
        let restored = self.restore_from.is_some();
        let config = self.nic.take().map(|n| {
            let mut c = n.config;
            if restored {
                c.device_mac = Some(cocoon_netconf::Mac(super::template::TEMPLATE_MAC));
            }
            c
        });
        let mut exited = vmm.exited();
        let dead_tx = self.dead_tx.clone();
        let template = self.restore_from.clone();
        let (stopping, stderr, pod, pid) = (
            self.stopping.clone(),
            self.pod.vmm_stderr(),
            self.pod.root().display().to_string(),
            vmm.pid,
        );
        tokio::spawn(async move {
            let _ = exited.wait_for(|s| s.is_some()).await;
            let status = exited
                .borrow()
                .clone()
                .unwrap_or_else(|| Ended::WaitFailed("its supervisor stopped watching".into()));
            if let Some(snapshot) = template.filter(|_| status.code() == Some(EXIT_SNAPSHOT_MEMORY))
            {
                // A page of the template's memory image failed its check
                // as the guest touched it: no later pod may use it.
                super::template::discard(&snapshot);
            }
            if death_is_news(stopping.load(Ordering::SeqCst), &status) {
                // What the VMM and its monitor wrote as they died (the
                // seccomp handler's line) is in the file once the pipe is
                // drained; bounded, should a descendant keep it open.
                let _ = tokio::time::timeout(DRAIN_WAIT, drained).await;
                let why = describe_vmm_death(pid, &status, &log_tail(&stderr));
                tracing::error!(%pod, "the pod's VM is gone: {why}");
            }
            let _ = dead_tx.send(true);
        });
        self.vmm = Some(vmm);
        self.interfaces = config.into_iter().collect();
        Ok(())
    }

    /// `vmm_seccomp = "audit"`: the VMM's audit lines, from its log, into
    /// the shim's (the pod dir and the log go next).
    fn report_audit(&self) {
        let text = read_ring(&self.pod.vmm_log());
        let pod = self.pod.root().display().to_string();
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some(at) = line.find("seccomp audit:") {
                tracing::warn!(%pod, "cocoon-vmm {}", &line[at..]);
            }
        }
    }

    /// Retries `CONNECT 1024` every [`AGENT_POLL`] until the agent
    /// answers a Check.
    async fn wait_for_agent(&mut self, control: &Address) -> Result<(), SandboxError> {
        let secs = self.cfg.agent_timeout_secs;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let vmm = self.vmm.as_ref().expect("vmm started");
        let mut last;
        loop {
            if let Some(status) = vmm.exit_status() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // The VMM could not reach a virtiofsd that died: its words.
                if let Some(e) = self.virtiofsd_failure().await {
                    return Err(e);
                }
                let stderr = log_tail(&self.pod.vmm_stderr());
                return Err(SandboxError::EarlyExit {
                    what: format!(
                        "cocoon-vmm ({}); last guest console lines:\n{}\n",
                        stderr.trim(),
                        self.pod.console_tail(CONSOLE_TAIL)
                    ),
                    status: status.to_string(),
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
            self.timing.failed_attempts += 1;
            tracing::debug!(pod = %self.pod.root().display(), "the agent does not answer yet: {last}");
            if tokio::time::Instant::now() >= deadline {
                return Err(SandboxError::AgentTimeout {
                    secs,
                    cause: last,
                    console: self.pod.console_tail(CONSOLE_TAIL),
                });
            }
            tokio::time::sleep(AGENT_POLL).await;
        }
    }
}

impl VmBackend {
    /// Start the pod's processes and wait for its agent; on failure
    /// everything started is stopped again.
    async fn start_once(&mut self) -> Result<Endpoints, SandboxError> {
        if let Err(e) = self.start_processes().await {
            let _ = self.stop().await;
            return Err(e);
        }
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
        let t = std::mem::take(&mut self.timing);
        tracing::info!(
            pod = %self.pod.root().display(),
            restored = self.restore_from.is_some(),
            prepare_ms = t.prepare.as_millis() as u64,
            virtiofsd_ms = t.virtiofsd.as_millis() as u64,
            vmm_to_agent_ms = t.vmm_spawned.map_or(0, |s| s.elapsed().as_millis() as u64),
            failed_attempts = t.failed_attempts,
            "the pod's agent answers"
        );
        if let Some(netns) = &self.netns {
            match PortForwarder::start(netns, streams.clone(), &self.pod.id()) {
                Ok(f) => self.port_forward = Some(f),
                Err(e) => {
                    let _ = self.stop().await;
                    return Err(e.into());
                }
            }
        }
        Ok(Endpoints {
            control,
            streams,
            share_tag: SHARE_TAG.into(),
            interfaces: self.interfaces.clone(),
        })
    }
}

#[async_trait]
impl Backend for VmBackend {
    async fn start(&mut self) -> Result<Endpoints, SandboxError> {
        match self.start_once().await {
            Err(e) if self.restore_from.is_some() => {
                // The template is removed (the next pod builds it again)
                // and this pod boots: a bad template costs time, never a
                // pod.
                let snapshot = self.restore_from.take().expect("checked above");
                super::template::discard(&snapshot);
                tracing::warn!(
                    pod = %self.pod.root().display(),
                    "the pod's VM did not start from its template, booting it instead: {e}"
                );
                self.boot_only = true;
                // The failed VMM's watcher has the old ones: its exit is
                // neither this VM's death nor unexpected.
                self.stopping = Arc::new(AtomicBool::new(false));
                self.dead_tx = watch::channel(false).0;
                self.start_once().await
            }
            r => r,
        }
    }

    async fn stop(&mut self) -> Result<(), SandboxError> {
        // Nothing of the guest is kept: once DestroySandbox has answered
        // (its containers are gone and the guest has synced the share) or
        // failed, the VMM is stopped at once rather than waiting for the
        // guest's own restart (reboot=k), which in the nested test host
        // costs a few hundred milliseconds of every pod's teardown.
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(f) = self.port_forward.take() {
            let _ = tokio::task::spawn_blocking(move || f.stop()).await;
        }
        if let Some(v) = self.vmm.take() {
            v.stop(Duration::from_secs(3)).await;
        }
        if let Some(v) = self.virtiofsd.take() {
            v.stop(Duration::from_secs(3)).await;
        }
        // The VMM is gone (the TAP with it, unless it lingers: then it is
        // deleted here); the CNI interface's qdisc goes.
        self.nic = None;
        let pod = self.pod.clone();
        let _ = tokio::task::spawn_blocking(move || network::teardown(&pod)).await;
        if self.cfg.vmm_seccomp == "audit" {
            self.report_audit();
        }
        // Whatever they forked, or whatever did not stop: gone with the
        // cgroup.
        if let Some(cg) = self.cgroup.take() {
            let r = tokio::task::spawn_blocking(move || cg.destroy(KILL_LIMIT)).await;
            match r {
                Ok(Ok(())) => {
                    let _ = std::fs::remove_file(self.pod.cgroup_record());
                    // Nothing runs as the uid any more.
                    vmm_jail::release(&self.cfg.run_dir, &self.pod);
                }
                Ok(Err(e)) => return Err(SandboxError::Cgroup(e.to_string())),
                Err(e) => return Err(SandboxError::Cgroup(e.to_string())),
            }
        }
        Ok(())
    }

    fn agent_call_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.agent_call_timeout_secs)
    }

    fn kill_now(&self) {
        if let Some(cg) = &self.cgroup {
            let _ = std::fs::write(cg.path.join("cgroup.kill"), "1");
        }
        if let Some(v) = &self.vmm {
            v.kill_now();
        }
    }

    fn pid(&self) -> u32 {
        self.vmm.as_ref().map(|p| p.pid).unwrap_or(0)
    }

    fn dead(&self) -> watch::Receiver<bool> {
        self.dead_tx.subscribe()
    }

    fn container_created(&self) {
        let (Some(recorded), Some(snapshot), Some(vmm)) = (
            self.recording.clone(),
            self.restore_from.clone(),
            self.vmm.as_ref(),
        ) else {
            return;
        };
        if self.recording_asked.swap(true, Ordering::SeqCst) {
            return;
        }
        // The VMM (through its jail's monitor) writes the pages it loaded
        // so far; its page loader takes the signal before any later fault.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vmm.pid as i32),
            nix::sys::signal::Signal::SIGUSR2,
        );
        let pod = self.pod.root().display().to_string();
        tokio::spawn(async move {
            let began = std::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match super::template::install_working_set(&snapshot, &recorded) {
                    Ok(pages) => {
                        tracing::info!(
                            %pod,
                            pages,
                            took_ms = began.elapsed().as_millis() as u64,
                            "the template's working set is recorded"
                        );
                        break;
                    }
                    Err(e) if began.elapsed() > RECORD_WAIT => {
                        tracing::warn!(%pod, "no working set recorded for the template: {e}");
                        break;
                    }
                    Err(_) => {}
                }
            }
        });
    }

    fn pod_dir(&self) -> &PodDir {
        &self.pod
    }
}

#[cfg(test)]
mod tests {
    use super::{death_is_news, describe_vmm_death, Ended};
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn ended(raw: i32) -> Ended {
        Ended::from(ExitStatus::from_raw(raw))
    }

    #[test]
    fn ends_keep_the_code_or_signal_and_read_like_exit_status() {
        for raw in [6 << 8, 0, 9, 15, 31 | 0x80] {
            let status = ExitStatus::from_raw(raw);
            let e = Ended::from(status);
            assert_eq!(e.code(), status.code(), "{status}");
            assert_eq!(e.signal(), status.signal(), "{status}");
            assert_eq!(e.to_string(), status.to_string());
        }
        assert_eq!(Ended::WaitFailed("EINTR".into()).code(), None);
        assert_eq!(Ended::WaitFailed("EINTR".into()).signal(), None);
    }

    #[test]
    fn a_death_the_shim_did_not_cause_is_reported_even_while_stopping() {
        let (sigsys, sigterm, sigkill) = (ended(31), ended(15), ended(9));
        let (core, clean) = (ended(31 | 0x80), ended(0));
        let failed = Ended::WaitFailed("ECHILD".into());
        for status in [&sigsys, &sigterm, &sigkill, &core, &clean, &failed] {
            assert!(death_is_news(false, status), "{status}");
        }
        assert!(death_is_news(true, &sigsys), "{sigsys}");
        assert!(death_is_news(true, &core), "{core}");
        for status in [&sigterm, &sigkill, &clean, &failed] {
            assert!(!death_is_news(true, status), "{status}");
        }
    }

    #[test]
    fn a_sigsys_death_names_the_call() {
        let stderr = "noise\ncocoon-vmm: seccomp: the vcpu thread made system call 110 (getppid), which its allow-list lacks: killed with SIGSYS\ncocoon-vmm: the jailed VMM was killed by SIGSYS\n";
        let why = describe_vmm_death(42, &ended(31 | 0x80), stderr);
        assert!(
            why.contains("cocoon-vmm (pid 42) was killed by SIGSYS"),
            "{why}"
        );
        assert!(why.contains("system call 110 (getppid)"), "{why}");
        assert!(why.contains("vmm_seccomp = \"audit\""), "{why}");
        let why = describe_vmm_death(7, &ended(4 << 8), "a\nb\nc\nkvm failed\n");
        assert_eq!(
            why,
            "cocoon-vmm (pid 7) exited: exit status: 4; b | c | kvm failed"
        );
    }
}
