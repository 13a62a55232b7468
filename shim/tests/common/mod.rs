//! Test harness: the task service served over ttrpc to a test client
//! exactly as containerd would reach it. The backend is the local one (a
//! real `cocoon-agent` on Unix sockets, no VM), or with
//! `COCOON_SHIM_TEST_BACKEND=vm` real micro-VMs (cocoon-vmm, virtiofsd and
//! the agent as the guest's PID 1; `COCOON_VMM`, `COCOON_KERNEL` and
//! `COCOON_AGENT_INITRD` name them): `make e2e` runs them so in the test host.
#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_shim::events::RecordedEvents;
use cocoon_shim::sandbox::local::LocalBackend;
use cocoon_shim::sandbox::{Backend, PodDir};
use cocoon_shim::task::TaskService;
use containerd_shim::ExitSignal;
use containerd_shim_protos::api::*;
use containerd_shim_protos::shim_async::{create_task, TaskClient};
use oci_spec::runtime::Spec;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "tty", "stty", "touch", "true", "false", "env", "pwd", "ls", "dd",
];

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// The agent binary: `COCOON_AGENT_BIN`, or `cocoon-agent` next to the
/// test's target dir (`cargo build -p cocoon-agent` first).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("COCOON_AGENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("cocoon-agent");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p cocoon-agent` first",
        p.display()
    );
    p
}

/// True when the tests run against real micro-VMs.
pub fn vm_backend() -> bool {
    std::env::var("COCOON_SHIM_TEST_BACKEND").as_deref() == Ok("vm")
}

/// How long one task API call may take: a VM boots within `create`, and
/// under nested emulation that takes seconds.
pub fn op_timeout() -> Duration {
    if vm_backend() {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(30)
    }
}

fn vm_config(run_dir: &Path, call_timeout: Duration) -> cocoon_shim::config::Config {
    let var = |v: &str| -> PathBuf {
        std::env::var_os(v)
            .unwrap_or_else(|| panic!("{v} is not set (the VM backend needs it)"))
            .into()
    };
    cocoon_shim::config::Config {
        vmm: var("COCOON_VMM"),
        kernel: var("COCOON_KERNEL"),
        initrd: var("COCOON_AGENT_INITRD"),
        run_dir: run_dir.to_path_buf(),
        agent_timeout_secs: 150,
        agent_call_timeout_secs: call_timeout.as_secs().max(1),
        ..Default::default()
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub client: TaskClient,
    pub events: Arc<RecordedEvents>,
    pub exit: Arc<ExitSignal>,
    server: ttrpc::r#async::Server,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with_call_timeout(Duration::from_secs(60)).await
    }

    /// A harness whose pods give up on an agent call after `call_timeout`.
    pub async fn start_with_call_timeout(call_timeout: Duration) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("COCOON_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let dir = tempfile::Builder::new()
            .prefix("cocoon-shim-test")
            .tempdir()
            .unwrap();
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let events = Arc::new(RecordedEvents::default());
        let exit = Arc::new(ExitSignal::default());
        let factory: cocoon_shim::task::BackendFactory = if vm_backend() {
            let cfg = vm_config(&run_dir, call_timeout);
            Arc::new(move |p: &cocoon_shim::task::PodParams| {
                let b: Box<dyn Backend> = Box::new(
                    cocoon_shim::sandbox::vm::VmBackend::new(
                        cfg.clone(),
                        PodDir::new(&cfg.run_dir, p.sandbox_id),
                    )
                    .with_cgroups_path(p.cgroups_path.map(str::to_string)),
                );
                Ok(b)
            })
        } else {
            let agent = agent_bin();
            Arc::new(move |p: &cocoon_shim::task::PodParams| {
                let sid = p.sandbox_id;
                let b: Box<dyn Backend> = Box::new(
                    LocalBackend::new(
                        agent.clone(),
                        PodDir::new(&run_dir, sid),
                        sid,
                        Duration::from_secs(10),
                    )
                    .with_call_timeout(call_timeout),
                );
                Ok(b)
            })
        };
        let svc = TaskService::new(events.clone(), factory, exit.clone());
        let sock = format!("unix://{}", dir.path().join("shim.sock").display());
        let task: Box<dyn containerd_shim_protos::shim_async::Task + Send + Sync> = Box::new(svc);
        let mut server = ttrpc::r#async::Server::new()
            .bind(&sock)
            .unwrap()
            .register_service(create_task(Arc::from(task)));
        server.start().await.unwrap();
        let client = TaskClient::new(ttrpc::r#async::Client::connect(&sock).await.unwrap());
        Harness {
            dir,
            client,
            events,
            exit,
            server,
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A bundle with a busybox rootfs and `config.json` running `args`.
    pub fn bundle(&self, id: &str, args: &[&str], edit: impl FnOnce(&mut Spec)) -> PathBuf {
        let bundle = self.dir.path().join("bundles").join(id);
        let root = bundle.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut spec = Spec::default();
        let mut r = spec.root().clone().unwrap();
        r.set_path("rootfs".into());
        r.set_readonly(Some(false));
        spec.set_root(Some(r));
        let p = spec.process_mut().as_mut().unwrap();
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        edit(&mut spec);
        spec.save(bundle.join("config.json")).unwrap();
        bundle
    }

    pub fn fifo(&self, name: &str) -> String {
        let p = self.dir.path().join("fifos").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p.display().to_string()
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdio: (&str, &str, &str),
        terminal: bool,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            stdin: stdio.0.into(),
            stdout: stdio.1.into(),
            stderr: stdio.2.into(),
            terminal,
            ..Default::default()
        };
        self.client.create(ctx(), &req).await
    }

    pub async fn start_task(&self, id: &str, exec_id: &str) -> ttrpc::Result<StartResponse> {
        let req = StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client.start(ctx(), &req).await
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<WaitResponse> {
        let req = WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client.wait(ctx(), &req).await
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> ttrpc::Result<StateResponse> {
        let req = StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client.state(ctx(), &req).await
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<Empty> {
        let req = KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        self.client.kill(ctx(), &req).await
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<DeleteResponse> {
        let req = DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client.delete(ctx(), &req).await
    }

    pub async fn shutdown(&self) {
        self.client
            .shutdown(ctx(), &ShutdownRequest::default())
            .await
            .unwrap();
    }

    /// Runs `args` to completion; returns (exit status, stdout, stderr).
    pub async fn run(
        &self,
        id: &str,
        args: &[&str],
        edit: impl FnOnce(&mut Spec),
    ) -> (u32, String, String) {
        let bundle = self.bundle(id, args, edit);
        let (o, e) = (
            self.fifo(&format!("{id}.out")),
            self.fifo(&format!("{id}.err")),
        );
        self.create(id, &bundle, ("", &o, &e), false)
            .await
            .expect("create");
        let (ro, re) = (reader(&o), reader(&e));
        self.start_task(id, "").await.expect("start");
        let w = self.wait(id, "").await.expect("wait");
        let (out, err) = (ro.await.unwrap(), re.await.unwrap());
        self.delete(id, "").await.expect("delete");
        (w.exit_status, out, err)
    }

    /// Nothing left: no pod dirs, no mounts under the test dir.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.run_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "pod dirs left: {left:?}");
        assert!(
            !cocoon_shim::storage::has_mounts_below(self.dir.path()),
            "mounts left under {}",
            self.dir.path().display()
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Belt and braces for failing tests: detach anything still mounted.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in info.lines() {
            if let Some(mp) = l.split(' ').nth(4) {
                if Path::new(mp).starts_with(self.dir.path()) {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = &self.server;
    }
}

/// Reads a FIFO to EOF in the background (the shim holds the write end
/// until the process's output is drained).
pub fn reader(path: &str) -> tokio::task::JoinHandle<String> {
    let mut rx = pipe::OpenOptions::new().open_receiver(path).unwrap();
    tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = rx.read_to_end(&mut v).await;
        String::from_utf8_lossy(&v).into_owned()
    })
}

pub fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        _ => ttrpc::Code::UNKNOWN,
    }
}
