//! Helpers shared by the `ctr` end-to-end tests (ctr_run.rs,
//! ctr_host_boundary.rs, ctr_vmm_jail.rs): our own containerd
//! (tests/ctr/containerd.sh), the busybox image built from busybox-static,
//! `--runtime io.containerd.cocoon.v2`.
//!
//! One containerd per test binary (`shared()`), started on first use: the
//! tests of a binary run one at a time (`--test-threads=1`), each with
//! container ids of its own, and each checks what it left by those ids
//! (`Pods`). Rust's test harness has no teardown after the last test and
//! never drops statics, so the shared containerd is stopped by an `atexit`
//! handler (libtest ends the process with `exit`, after passing and after
//! failing tests alike); one that a killed test binary could not stop is
//! stopped by the next binary's `shared()` (its owner's pid is gone).
// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "cocoon.local/busybox:latest";
pub const RUNTIME: &str = "io.containerd.cocoon.v2";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary of this workspace: in `COCOON_E2E_BIN_DIR` (make e2e sets it to
/// the profile it built), else in target/debug.
pub fn target_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("COCOON_E2E_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: cargo build -p {}",
        p.display(),
        name
    );
    p
}

/// The VM backend needs a cocoon-vmm with hybrid vsock and virtio-fs: a
/// VMM without them is a broken build, not a reason to skip.
pub fn assert_vmm_supported() {
    let backend = std::env::var("COCOON_E2E_BACKEND").unwrap_or_else(|_| "vm".into());
    if backend != "vm" {
        return;
    }
    let vmm = std::env::var("COCOON_VMM").expect("COCOON_VMM is not set: run `make e2e`");
    let help = Command::new(&vmm)
        .arg("--help")
        .output()
        .expect("run cocoon-vmm --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--vsock") && help.contains("--fs"),
        "{vmm} has no --vsock/--fs"
    );
}

macro_rules! require_supported_vmm {
    () => {
        common::assert_vmm_supported()
    };
}

pub struct Containerd {
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Containerd {
    pub fn start(tag: &str) -> Containerd {
        Containerd::start_with(tag, "")
    }

    /// `start` with extra lines for the shim's config file.
    pub fn start_with(tag: &str, extra_config: &str) -> Containerd {
        Containerd::start_mode(tag, extra_config, "start")
    }

    /// containerd with its CRI plugin (`containerd.sh start-cri`): the
    /// `cocoon` and `runc` runtime handlers, a CNI bridge network, the CRI
    /// test images in a registry of its own.
    pub fn start_cri(tag: &str) -> Containerd {
        Containerd::start_mode(tag, "", "start-cri")
    }

    fn start_mode(tag: &str, extra_config: &str, verb: &str) -> Containerd {
        let dir = PathBuf::from(format!("/tmp/cocoon-e2e-ctr-{}-{tag}", std::process::id()));
        let run_dir = PathBuf::from(format!("/run/cocoon-e2e-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let backend = std::env::var("COCOON_E2E_BACKEND").unwrap_or_else(|_| "vm".into());
        let mut cfg = format!(
            "backend = \"{backend}\"\nrun_dir = \"{}\"\nlog_level = \"debug\"\nagent_timeout_secs = 120\n",
            run_dir.display(),
        );
        if backend == "local" {
            let agent = target_bin("cocoon-agent");
            cfg.push_str(&format!("agent = \"{}\"\n", agent.display()));
        }
        if backend == "vm" {
            for (key, var) in [
                ("vmm", "COCOON_VMM"),
                ("kernel", "COCOON_KERNEL"),
                ("initrd", "COCOON_AGENT_INITRD"),
            ] {
                // The test's own setting wins.
                let own = format!("{key} =");
                if extra_config
                    .lines()
                    .any(|l| l.trim_start().starts_with(&own))
                {
                    continue;
                }
                let v = std::env::var(var)
                    .unwrap_or_else(|_| panic!("{var} is not set (make e2e sets it)"));
                cfg.push_str(&format!("{key} = \"{v}\"\n"));
            }
        }
        cfg.push_str(extra_config);
        let cfg_path = dir.join("cocoon.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let shim_dir = target_bin("containerd-shim-cocoon-v2")
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("PATH".to_string(), path),
            ("COCOON_CONFIG".to_string(), cfg_path.display().to_string()),
        ];
        let d = Containerd { dir, run_dir, env };
        let st = d.script(verb);
        assert!(
            st.status.success(),
            "containerd start: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        d
    }

    pub fn script(&self, verb: &str) -> Output {
        // Bounded: a containerd that never answers must fail the test, not
        // hang the session.
        Command::new("timeout")
            .arg("300")
            .arg(repo().join("tests/ctr/containerd.sh"))
            .arg(verb)
            .arg(&self.dir)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", "cocoon"])
            .args(args)
            .envs(self.env.iter().cloned());
        c
    }

    /// Runs ctr with a deadline; returns (exit code, stdout, stderr).
    pub fn ctr_in(&self, args: &[&str], stdin: &[u8], limit: Duration) -> (i32, String, String) {
        use std::io::Write;
        let mut child = self
            .ctr_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut i = child.stdin.take().unwrap();
        i.write_all(stdin).unwrap();
        drop(i);
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("ctr {args:?} took longer than {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ctr(&self, args: &[&str]) -> (i32, String, String) {
        self.ctr_in(args, b"", Duration::from_secs(180))
    }

    pub fn run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> (i32, String, String) {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.push(IMAGE);
        a.push(id);
        a.extend_from_slice(cmd);
        self.ctr(&a)
    }

    /// `ctr run -d ... ID sleep 1000`: a long-running container, detached.
    pub fn run_detached(&self, id: &str) {
        let (rc, _, err) = self.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "1000",
        ]);
        assert_eq!(rc, 0, "ctr run -d {id}: {err}");
    }

    /// The STATUS column of `ctr task ls` for task `id` (None: no such task).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let (rc, out, err) = self.ctr(&["task", "ls"]);
        assert_eq!(rc, 0, "ctr task ls: {err}");
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
        })
    }

    /// Polls `ctr task ls` until task `id` is STOPPED (60 s at most).
    pub fn wait_stopped(&self, id: &str, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.task_status(id);
            if st.as_deref() == Some("STOPPED") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is not STOPPED ({st:?}) after 60 s: {why}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr task rm` and `ctr container rm`, both required to succeed.
    pub fn remove(&self, id: &str) {
        let (rc, _, err) = self.ctr(&["task", "rm", id]);
        assert_eq!(rc, 0, "ctr task rm {id}: {err}");
        let (rc, _, err) = self.ctr(&["container", "rm", id]);
        assert_eq!(rc, 0, "ctr container rm {id}: {err}");
    }
}

/// Cleanup and leftover checks that never panic: they run from `Drop`
/// guards, also after a failed assertion.
impl Containerd {
    /// `ctr run -d ... EXTRA IMAGE ID CMD...`, required to succeed.
    pub fn run_detached_with(&self, id: &str, extra: &[&str], cmd: &[&str]) {
        let mut a = vec!["run", "-d", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.push(IMAGE);
        a.push(id);
        a.extend_from_slice(cmd);
        let (rc, _, err) = self.ctr(&a);
        assert_eq!(rc, 0, "ctr run -d {id}: {err}");
    }

    /// `ctr task exec --exec-id EXEC_ID ID CMD...`: (exit code, stdout, stderr).
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> (i32, String, String) {
        let mut a = vec!["task", "exec", "--exec-id", exec_id, id];
        a.extend_from_slice(cmd);
        self.ctr(&a)
    }

    /// ctr bounded by `timeout 60`, never panicking: (exit code, stdout).
    pub fn ctr_quiet(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("timeout")
            .args(["60", "ctr", "--address"])
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", "cocoon"])
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            ),
            Err(_) => (-1, String::new()),
        }
    }

    /// The pids of this containerd's shim serving `id` (a pod id): its
    /// command line names the binary, `-id ID` and our `-address`.
    pub fn shim_pids(&self, id: &str) -> Vec<i32> {
        let sock = self.dir.join("containerd.sock").display().to_string();
        processes()
            .into_iter()
            .filter(|(_, args)| {
                args.first()
                    .is_some_and(|a| a.ends_with("containerd-shim-cocoon-v2"))
                    && args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
                    && args.windows(2).any(|w| w[0] == "-address" && w[1] == sock)
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// What is left of pod (or container) `id`, empty when clean: its pod
    /// dir, mounts at or below it, processes naming it (VMM, virtiofsd), a
    /// shim serving it, a VMM uid claimed for it, and the container itself
    /// in containerd.
    pub fn leftovers_of(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let pod = self.run_dir.join(id);
        if pod.exists() {
            left.push(format!("pod dir {}", pod.display()));
        }
        for m in mount_points() {
            if m.starts_with(&pod) {
                left.push(format!("mount {}", m.display()));
            }
        }
        let p = pod.display().to_string();
        for (pid, args) in processes() {
            if pid as u32 != std::process::id() && args.iter().any(|a| names_path(a, &p)) {
                left.push(format!("process {pid}: {}", args.join(" ")));
            }
        }
        for pid in self.shim_pids(id) {
            left.push(format!("shim {pid} serving {id}"));
        }
        if let Ok(rd) = std::fs::read_dir(self.run_dir.join("vmm-uids")) {
            for e in rd.flatten() {
                if std::fs::read_link(e.path()).is_ok_and(|t| t == pod) {
                    left.push(format!("VMM uid claim {}", e.path().display()));
                }
            }
        }
        let (rc, ls) = self.ctr_quiet(&["container", "ls", "-q"]);
        if rc != 0 {
            left.push(format!("ctr container ls failed ({rc})"));
        } else if ls.split_whitespace().any(|c| c == id) {
            left.push(format!("container {id} in containerd"));
        }
        left
    }

    /// Best effort, bounded, never panics: SIGKILLs and removes task and
    /// container `id`, kills the processes that name its pod dir and the
    /// shim serving it, unmounts what is left below the pod dir, and removes
    /// it when nothing is mounted there any more.
    pub fn force_cleanup_of(&self, id: &str) {
        self.ctr_quiet(&["task", "rm", "-f", id]);
        self.ctr_quiet(&["container", "rm", id]);
        let pod = self.run_dir.join(id);
        let p = pod.display().to_string();
        let shims = self.shim_pids(id);
        for (pid, args) in processes() {
            let ours = args.iter().any(|a| names_path(a, &p)) || shims.contains(&pid);
            if ours && pid as u32 != std::process::id() {
                // SAFETY: kill(2) on a pid read from /proc; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let mut below: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&pod))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in &below {
            umount_detach(m);
        }
        if !mount_points().iter().any(|m| m.starts_with(&pod)) {
            let _ = std::fs::remove_dir_all(&pod);
        }
    }

    /// Best effort, bounded, never panics: SIGKILLs and removes every task
    /// and container, kills the processes that name our run dir and our
    /// shims, unmounts what is left under the run dir, and removes it when
    /// nothing is mounted there any more.
    /// SIGKILLs the one shim serving `id` and waits (60 s) until
    /// containerd, noticing, has run `containerd-shim-cocoon-v2 delete` and
    /// the pod directory is gone.
    pub fn kill_shim_and_await_delete(&self, id: &str) {
        let shims = self.shim_pids(id);
        assert_eq!(shims.len(), 1, "the shims serving {id}: {shims:?}");
        // SAFETY: kill(2) on our shim's pid; no memory is involved.
        unsafe { libc::kill(shims[0], libc::SIGKILL) };
        let pod = self.run_dir.join(id);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pod.exists() {
            assert!(
                Instant::now() < deadline,
                "delete did not clean the pod {}",
                pod.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn force_cleanup(&self) {
        let (_, ls) = self.ctr_quiet(&["container", "ls", "-q"]);
        let ids: Vec<&str> = ls.split_whitespace().collect();
        for id in &ids {
            self.ctr_quiet(&["task", "rm", "-f", id]);
            self.ctr_quiet(&["container", "rm", id]);
        }
        let run = self.run_dir.display().to_string();
        let sock = self.dir.join("containerd.sock").display().to_string();
        for (pid, args) in processes() {
            let ours = args.iter().any(|a| a.contains(&run))
                || (args
                    .first()
                    .is_some_and(|a| a.ends_with("containerd-shim-cocoon-v2"))
                    && args.contains(&sock));
            if ours && pid as u32 != std::process::id() {
                // SAFETY: kill(2) on a pid read from /proc; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let mut below: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&self.run_dir))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in &below {
            umount_detach(m);
        }
        if !mount_points().iter().any(|m| m.starts_with(&self.run_dir)) {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// True when `arg` names `path` or something below it: `path` followed by
/// the end, `/`, or a character that cannot continue a file name component
/// here (`,`, `:`, `=`, space) — so `/run/x/seq1` is not found in
/// `/run/x/seq10`.
fn names_path(arg: &str, path: &str) -> bool {
    arg.match_indices(path).any(|(i, _)| {
        matches!(
            arg[i + path.len()..].chars().next(),
            None | Some('/' | ',' | ':' | '=' | ' ')
        )
    })
}

static SHARED: OnceLock<Containerd> = OnceLock::new();

/// The test binary's containerd (default shim configuration), started on
/// first use and stopped when the binary exits.
pub fn shared() -> &'static Containerd {
    SHARED.get_or_init(|| {
        stop_stale();
        let c = Containerd::start("shared");
        // SAFETY: registers a plain `extern "C" fn()` that never unwinds.
        let rc = unsafe { libc::atexit(stop_shared) };
        assert_eq!(rc, 0, "atexit");
        c
    })
}

extern "C" fn stop_shared() {
    if let Some(c) = SHARED.get() {
        stop_at_exit(c, false);
    }
}

static SHARED_CRI: OnceLock<Containerd> = OnceLock::new();

/// The test binary's CRI-mode containerd (`containerd.sh start-cri`),
/// started on first use and stopped when the binary exits.
pub fn shared_cri() -> &'static Containerd {
    SHARED_CRI.get_or_init(|| {
        let c = Containerd::start_cri("cri");
        // SAFETY: registers a plain `extern "C" fn()` that never unwinds.
        let rc = unsafe { libc::atexit(stop_shared_cri) };
        assert_eq!(rc, 0, "atexit");
        c
    })
}

extern "C" fn stop_shared_cri() {
    if let Some(c) = SHARED_CRI.get() {
        stop_at_exit(c, true);
    }
}

/// Stops a shared containerd as the binary exits, never unwinding. In CRI
/// mode `containerd.sh stop` goes first: it removes the pods through CRI,
/// which needs containerd; else the leftovers go first.
fn stop_at_exit(c: &Containerd, cri: bool) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if cri {
            let _ = c.script("stop");
            c.force_cleanup();
        } else {
            c.force_cleanup();
            let _ = c.script("stop");
        }
        let _ = std::fs::remove_dir(&c.run_dir);
    }));
}

/// Stops what an earlier test binary that died without its `atexit` (a
/// SIGKILL, a timeout) left: containerds in `/tmp/cocoon-e2e-ctr-PID-TAG`
/// whose PID is gone, their pods and shims.
fn stop_stale() {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("cocoon-e2e-ctr-") else {
            continue;
        };
        let Some((pid, tag)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("stopping the containerd a dead test binary left in {name}");
        let c = Containerd {
            dir: e.path(),
            run_dir: PathBuf::from(format!("/run/cocoon-e2e-{pid}-{tag}")),
            env: Vec::new(),
        };
        c.force_cleanup();
        // Dropping it stops containerd and removes its dirs.
    }
}

/// One test's share of a containerd: the container ids (each its own pod,
/// or a pod's members) that it owns. `assert_clean` checks those only;
/// dropping it (after a failed assertion too) removes them, so that a
/// failed test leaves nothing to the next one.
pub struct Pods<'a> {
    c: &'a Containerd,
    ids: Vec<String>,
    log_from: usize,
}

impl Pods<'static> {
    /// Ids `ids` of the binary's shared containerd.
    pub fn shared(ids: &[&str]) -> Pods<'static> {
        Pods::on(shared(), ids)
    }
}

impl<'a> Pods<'a> {
    /// Ids `ids` of containerd `c`; none of them may exist yet.
    pub fn on(c: &'a Containerd, ids: &[&str]) -> Pods<'a> {
        let (rc, ls, err) = c.ctr(&["container", "ls", "-q"]);
        assert_eq!(rc, 0, "ctr container ls: {err}");
        for id in ids {
            assert!(
                !ls.split_whitespace().any(|c| c == *id) && !c.run_dir.join(id).exists(),
                "container id {id} is in use already (ids must differ between tests)"
            );
        }
        Pods {
            c,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            log_from: c.log().len(),
        }
    }

    /// What is left of this test's containers and pods, empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        self.ids
            .iter()
            .flat_map(|id| self.c.leftovers_of(id))
            .collect()
    }

    /// Polls until nothing of this test's containers and pods is left
    /// (pod dirs, mounts, VMMs and virtiofsds, shims, uid claims, the
    /// containers in containerd); fails after `limit` with what is.
    pub fn assert_clean_within(&self, limit: Duration, why: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{why}: still there after {limit:?}:\n  {}",
                left.join("\n  ")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `assert_clean_within` 30 s (a pod's teardown ends a VM).
    pub fn assert_clean(&self) {
        self.assert_clean_within(Duration::from_secs(30), "left behind")
    }

    /// containerd's log (with the shims') since this test began.
    pub fn log(&self) -> String {
        let log = self.c.log();
        log.get(self.log_from..).unwrap_or(&log).to_string()
    }

    /// Removes this test's containers and pods (best effort, never panics).
    pub fn cleanup(&self) {
        for id in &self.ids {
            self.c.force_cleanup_of(id);
        }
    }
}

impl std::ops::Deref for Pods<'_> {
    type Target = Containerd;
    fn deref(&self) -> &Containerd {
        self.c
    }
}

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `umount2(path, MNT_DETACH)`, errors ignored.
pub fn umount_detach(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// Every mount point of our mount namespace (/proc/self/mountinfo, in
/// order, duplicates kept: a mount stacked on another shows up twice).
pub fn mount_points() -> Vec<PathBuf> {
    cocoon_shim::storage::mount_points()
}

/// Every process with its arguments (/proc/PID/cmdline).
pub fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!args.is_empty()).then_some((pid, args))
        })
        .collect()
}

impl Containerd {
    /// containerd's log, where the shims' logs go too.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir(&self.run_dir);
    }
}
