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

/// A call context whose deadline is `op_timeout()`: a task call that
/// never returns fails the test instead of hanging it.
pub fn ctx() -> ttrpc::context::Context {
    ctx_for(op_timeout())
}

/// A call context with deadline `limit`.
pub fn ctx_for(limit: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(limit.as_nanos() as i64)
}

/// How long a `Wait` (which blocks until the process exits) may take, and
/// how long a process's output may take to reach its end: generous, but
/// bounded.
pub fn wait_timeout() -> Duration {
    op_timeout() * 2
}

pub use cocoon_agent_protocol::deadline::bounded;

/// `bounded` with the ordinary deadline, `op_timeout()`.
pub async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = ttrpc::Result<T>>,
) -> ttrpc::Result<T> {
    bounded(what, op_timeout(), f).await
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
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            ttrpc::r#async::Client::connect(&sock),
        )
        .await
        .expect("connecting to the task service: no answer within 10 s")
        .unwrap();
        let client = TaskClient::new(client);
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
        call(&format!("Create {id}"), self.client.create(ctx(), &req)).await
    }

    pub async fn start_task(&self, id: &str, exec_id: &str) -> ttrpc::Result<StartResponse> {
        let req = StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        call(
            &format!("Start {id}/{exec_id}"),
            self.client.start(ctx(), &req),
        )
        .await
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<WaitResponse> {
        let req = WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        bounded(
            &format!("Wait {id}/{exec_id}"),
            wait_timeout(),
            self.client.wait(ctx_for(wait_timeout()), &req),
        )
        .await
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> ttrpc::Result<StateResponse> {
        let req = StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        call(
            &format!("State {id}/{exec_id}"),
            self.client.state(ctx(), &req),
        )
        .await
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<Empty> {
        let req = KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        call(
            &format!("Kill {id}/{exec_id} {signal}"),
            self.client.kill(ctx(), &req),
        )
        .await
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<DeleteResponse> {
        let req = DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        call(
            &format!("Delete {id}/{exec_id}"),
            self.client.delete(ctx(), &req),
        )
        .await
    }

    pub async fn shutdown(&self) {
        call(
            "Shutdown",
            self.client.shutdown(ctx(), &ShutdownRequest::default()),
        )
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
        let (out, err) = (ro.text().await, re.text().await);
        self.delete(id, "").await.expect("delete");
        (w.exit_status, out, err)
    }

    /// Processes of this harness (other than the test itself): those whose
    /// root or working directory is below the test dir (containers of the
    /// local backend, jailed VMMs) or whose command line names it (agents,
    /// VMMs, virtiofsd). (pid, command line)
    pub fn our_processes(&self) -> Vec<(i32, String)> {
        let dir = self.dir.path();
        let me = std::process::id() as i32;
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let p = e.path();
                let cmd = std::fs::read(p.join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
                // Zombies are gone but for their parent's wait.
                let zombie = stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z'));
                let below =
                    |l: &str| std::fs::read_link(p.join(l)).is_ok_and(|t| t.starts_with(dir));
                let ours = below("root") || below("cwd") || cmd.contains(&*dir.to_string_lossy());
                (pid != me && !zombie && ours).then_some((pid, cmd))
            })
            .collect()
    }

    /// Nothing left: no pod dirs, no mounts under the test dir, and (within
    /// 10 s) no processes of ours.
    pub fn assert_clean(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.our_processes();
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "processes left: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// A process as /proc shows it: (pid, start time in ticks, command line).
/// The start time tells a process from a later one with a reused pid.
pub type Proc = (i32, u64, String);

/// `pid`'s (ppid, start time, zombie) from /proc/PID/stat.
fn stat_of(pid: i32) -> Option<(i32, u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let f: Vec<&str> = rest.split(' ').collect();
    // After the command: state, ppid, ... starttime (field 22 of the line).
    Some((
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
        f[0] == "Z",
    ))
}

/// `pid` and all its descendants, living (not zombies).
pub fn process_tree(pid: i32) -> Vec<Proc> {
    let all: Vec<(i32, i32, u64, bool)> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let p: i32 = e.file_name().to_str()?.parse().ok()?;
                    let (ppid, start, zombie) = stat_of(p)?;
                    Some((p, ppid, start, zombie))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|a| a.1 == parent).map(|a| a.0));
        i += 1;
    }
    all.iter()
        .filter(|a| tree.contains(&a.0) && !a.3)
        .map(|a| {
            let cmd = std::fs::read(format!("/proc/{}/cmdline", a.0)).unwrap_or_default();
            (
                a.0,
                a.2,
                String::from_utf8_lossy(&cmd)
                    .replace('\0', " ")
                    .trim()
                    .to_string(),
            )
        })
        .collect()
}

/// True while that process (not a later one with its pid) lives.
pub fn alive(p: &Proc) -> bool {
    stat_of(p.0).is_some_and(|(_, start, zombie)| start == p.1 && !zombie)
}

/// Polls until none of `procs` is alive; fails naming them after `limit`.
pub fn assert_gone(procs: &[Proc], limit: Duration, why: &str) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left: Vec<&Proc> = procs.iter().filter(|p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: still alive after {limit:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Belt and braces for failing tests: end what the pods left running
        // (without a VM, the containers' processes in the agents' cgroups),
        // then detach anything still mounted.
        if let Ok(rd) = std::fs::read_dir(self.run_dir()) {
            for pod in rd.flatten() {
                if !vm_backend() {
                    cocoon_shim::sandbox::local::remove_cgroups(&format!(
                        "cocoon-{}",
                        pod.file_name().to_string_lossy()
                    ));
                }
            }
        }
        for (pid, _) in self.our_processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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

/// A FIFO read to EOF in the background (the shim holds the write end
/// until the process's output is drained).
pub struct Reader {
    path: String,
    task: tokio::task::JoinHandle<()>,
    got: Arc<std::sync::Mutex<Vec<u8>>>,
}

pub fn reader(path: &str) -> Reader {
    let mut rx = pipe::OpenOptions::new().open_receiver(path).unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 16384];
        while let Ok(n @ 1..) = rx.read(&mut buf).await {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Reader {
        path: path.to_string(),
        task,
        got,
    }
}

impl Reader {
    /// What has arrived so far.
    pub fn so_far(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }

    /// Everything written to the FIFO, once its writer closed it; fails
    /// the test (with what had arrived) if that takes over `wait_timeout()`.
    pub async fn text(self) -> String {
        let limit = wait_timeout();
        match tokio::time::timeout(limit, self.task).await {
            Ok(r) => r.unwrap(),
            Err(_) => panic!(
                "{}: no EOF within {limit:?} (the shim never closed it); it had {:?}",
                self.path,
                String::from_utf8_lossy(&self.got.lock().unwrap())
            ),
        }
        let v = std::mem::take(&mut *self.got.lock().unwrap());
        String::from_utf8_lossy(&v).into_owned()
    }
}

pub fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        _ => ttrpc::Code::UNKNOWN,
    }
}
