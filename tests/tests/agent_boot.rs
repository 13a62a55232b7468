//! Boots the guest kernel with cocoon-agent as PID 1 (build/agent-initrd.cpio)
//! in cocoon-vmm with a hybrid vsock device, talks to the agent over it
//! (`CONNECT 1024`), and shuts the VM down through DestroySandbox.
#![cfg(feature = "e2e")]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_agent_protocol::address::{connect_agent_retry, Address};
use cocoon_agent_protocol::agent::{CheckRequest, DestroySandboxRequest, VersionRequest};
use cocoon_e2e::Artifacts;

/// From the VMM's start to the agent answering (TCG in the test host is slow).
const ANSWER_DEADLINE: Duration = Duration::from_secs(180);
/// From DestroySandbox to the VMM's exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The VMM process; killed if the test ends before it exits.
struct Vmm {
    child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Vmm {
    fn start(cmd: &mut Command) -> Vmm {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let reader = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                String::from_utf8_lossy(&v).into_owned()
            })
        };
        let out = reader(Box::new(child.stdout.take().unwrap()));
        let err = reader(Box::new(child.stderr.take().unwrap()));
        Vmm {
            child,
            out: Some(out),
            err: Some(err),
        }
    }

    /// Waits up to `deadline` for the exit; kills the VMM after it. Returns
    /// the exit code (None if killed) and the console/stderr text.
    fn finish(&mut self, deadline: Duration) -> (Option<i32>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self
            .out
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (
            status.and_then(|s| s.code()),
            format!("status {status:?}\n--- console ---\n{out}\n--- stderr ---\n{err}"),
        )
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

#[test]
fn agent_boots_as_pid1_and_answers_over_hybrid_vsock() {
    let a = Artifacts::from_env();
    let dir = tempfile::Builder::new()
        .prefix("cocoon-agent-boot")
        .tempdir()
        .unwrap();
    let uds = dir.path().join("vsock.sock");
    let started = Instant::now();
    let mut vmm = Vmm::start(
        Command::new(&a.vmm)
            .arg("--kernel")
            .arg(&a.kernel)
            .arg("--initrd")
            .arg(&a.agent_initrd)
            .arg("--memory")
            .arg("256")
            .arg("--vsock")
            .arg(format!("cid=3,uds={}", uds.display()))
            .arg("--cmdline")
            .arg("quiet"),
    );

    let talked = talk(&uds, started, ANSWER_DEADLINE, true);
    let (code, log) = vmm.finish(if talked.is_ok() {
        EXIT_DEADLINE
    } else {
        Duration::ZERO
    });
    let (answered, version) = talked.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        code,
        Some(0),
        "DestroySandbox must end the VMM with 0:\n{log}"
    );
    // The agent logs to the console as PID 1.
    assert!(log.contains("agent listening"), "no agent log line:\n{log}");
    println!(
        "agent {version} answered {answered:?} after the VMM started; VM ended after {:?}",
        started.elapsed()
    );
}

/// Talks to the agent on `uds`: Check, Version; with `destroy`, also
/// DestroySandbox (which ends the VM). Returns how long the agent took to
/// answer from `started`, and its version.
fn talk(
    uds: &std::path::Path,
    started: Instant,
    deadline: Duration,
    destroy: bool,
) -> Result<(Duration, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = Address::HybridVsock {
            path: uds.to_owned(),
            port: 1024,
        };
        let client = connect_agent_retry(&addr, deadline)
            .await
            .map_err(|e| format!("the agent did not answer on {addr}: {e}"))?;
        let check = client
            .check(ctx(), &CheckRequest::new())
            .await
            .map_err(|e| format!("Check: {e:?}"))?;
        if !check.serving {
            return Err("Check: not serving".to_string());
        }
        let answered = started.elapsed();
        let v = client
            .version(ctx(), &VersionRequest::new())
            .await
            .map_err(|e| format!("Version: {e:?}"))?;
        if v.protocol_version != cocoon_agent_protocol::PROTOCOL_VERSION {
            return Err(format!("protocol version {}", v.protocol_version));
        }
        if destroy {
            client
                .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
                .await
                .map_err(|e| format!("DestroySandbox: {e:?}"))?;
        }
        Ok((answered, v.agent_version))
    })
}

/// A VM snapshotted (SIGUSR1, `--snapshot-to`) while its agent listens is
/// restored (`--restore`) with a new vsock socket: the agent answers there
/// at once, without booting, and the old connection the template had open
/// is gone (the device announced a transport reset). The seccomp filters
/// are on (the default) in both VMMs.
#[test]
fn a_snapshot_of_a_ready_agent_restores_and_answers_on_a_new_socket() {
    let a = Artifacts::from_env();
    let dir = tempfile::Builder::new()
        .prefix("cocoon-agent-snapshot")
        .tempdir()
        .unwrap();
    let snap = dir.path().join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    let vmm_cmd = |uds: &std::path::Path| {
        let mut cmd = Command::new(&a.vmm);
        cmd.arg("--kernel")
            .arg(&a.kernel)
            .arg("--initrd")
            .arg(&a.agent_initrd)
            .arg("--memory")
            .arg("256")
            .arg("--vsock")
            .arg(format!("cid=3,uds={}", uds.display()))
            .arg("--log-level")
            .arg("info");
        cmd
    };

    let started = Instant::now();
    let first = dir.path().join("template.sock");
    let mut template = Vmm::start(
        vmm_cmd(&first)
            .arg("--cmdline")
            .arg("quiet init_on_free=1")
            .arg("--snapshot-to")
            .arg(&snap),
    );
    let booted = talk(&first, started, ANSWER_DEADLINE, false);
    if booted.is_ok() {
        // SAFETY: kill with the pid of our own child, which has not been
        // waited for (so the pid is still its).
        unsafe { libc::kill(template.child.id() as i32, libc::SIGUSR1) };
    }
    let (code, log) = template.finish(if booted.is_ok() {
        EXIT_DEADLINE
    } else {
        Duration::ZERO
    });
    let (booted, _) = booted.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        code,
        Some(0),
        "the template VMM must save and exit 0:\n{log}"
    );
    assert!(
        log.contains("snapshot taken"),
        "no snapshot log line:\n{log}"
    );
    assert!(
        log.contains("agent listening"),
        "no agent start in the template:\n{log}"
    );
    let image = std::fs::metadata(snap.join("memory")).unwrap();
    let on_disk = std::os::unix::fs::MetadataExt::blocks(&image) * 512;
    assert_eq!(image.len(), 256 << 20);
    assert!(
        on_disk < image.len() / 2,
        "the memory image holds {on_disk} bytes of a 256 MiB guest: not sparse"
    );

    let restored_at = Instant::now();
    let second = dir.path().join("restored.sock");
    let mut restored = Vmm::start(vmm_cmd(&second).arg("--restore").arg(&snap));
    let answered = talk(&second, restored_at, ANSWER_DEADLINE, true);
    let (code, log) = restored.finish(if answered.is_ok() {
        EXIT_DEADLINE
    } else {
        Duration::ZERO
    });
    let (answered, _) = answered.unwrap_or_else(|e| panic!("restored VM: {e}\n{log}"));
    assert_eq!(
        code,
        Some(0),
        "DestroySandbox must end the restored VMM with 0:\n{log}"
    );
    // The guest handled the vsock transport reset at once (its driver
    // re-posted the event buffer), before any new connection reached it.
    assert!(
        !log.contains("did not re-post its event buffer"),
        "the restored guest did not see the transport reset in time:\n{log}"
    );
    // The agent (PID 1) logs its start to the console: a restored VM
    // goes on from where its template was, it does not start again.
    assert!(
        !log.contains("agent listening"),
        "the restored VM started its agent again instead of resuming:\n{log}"
    );
    println!(
        "agent answered {booted:?} after a boot, {answered:?} after a restore; memory image {} KiB on disk",
        on_disk / 1024
    );
}
