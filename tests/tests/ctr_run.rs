//! End to end through containerd's `ctr`: our own containerd (tests/ctr/
//! containerd.sh), the busybox image built from busybox-static, and
//! `--runtime io.containerd.cocoon.v2`.
//!
//! `COCOON_E2E_BACKEND=vm` (default; inside the test host or on VT-x/AMD-V:
//! needs COCOON_VMM, COCOON_KERNEL, COCOON_AGENT_INITRD and virtiofsd) or
//! `local` (the agent on the host, no VM: runs on any root Linux host).
#![cfg(feature = "e2e")]

#[macro_use]
mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pods, IMAGE, RUNTIME};

/// One pod: stdin reaches the container and comes back on stdout, a line
/// on stderr stays apart, and the container's exit code is `ctr run`'s.
#[test]
fn ctr_run_exit_codes_stdout_stderr_stdin() {
    require_supported_vmm!();
    let c = Pods::shared(&["codes"]);
    let t = Instant::now();
    let (rc, out, err) = c.ctr_in(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "codes",
            "sh",
            "-c",
            "cat; echo err >&2; exit 42",
        ],
        b"through stdin\n",
        Duration::from_secs(180),
    );
    eprintln!("ctr run --rm: {:?}", t.elapsed());
    assert_eq!(rc, 42, "{err}");
    assert_eq!(out, "through stdin\n");
    assert!(err.contains("err\n"), "{err}");
    c.assert_clean();
}

/// What a container wrote into a volume is on the host, whole, when `ctr
/// run --rm` returns: the pod's teardown (which stops the VMM as soon as
/// the agent has answered DestroySandbox) loses nothing the guest wrote.
#[test]
fn ctr_writes_to_a_volume_are_on_the_host_when_run_returns() {
    require_supported_vmm!();
    let c = Pods::shared(&["volwrite"]);
    let vol = std::path::PathBuf::from(format!("/tmp/cocoon-e2e-volwrite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&vol);
    std::fs::create_dir_all(&vol).unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let (rc, out, err) = c.run(
        "volwrite",
        &["--mount", &mount],
        &[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/data/f bs=64k count=64 2>/dev/null && md5sum /data/f",
        ],
    );
    assert_eq!(rc, 0, "{out}{err}");
    let in_guest = out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let on_host = std::process::Command::new("md5sum")
        .arg(vol.join("f"))
        .output()
        .unwrap();
    let on_host = String::from_utf8_lossy(&on_host.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let len = std::fs::metadata(vol.join("f"))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&vol);
    assert_eq!(len, 64 * 64 * 1024, "the host has {len} bytes of the file");
    assert!(in_guest.len() == 32, "no md5sum from the guest: {out}{err}");
    assert_eq!(
        in_guest, on_host,
        "the host's file differs from the guest's"
    );
    c.assert_clean();
}

/// One pod: env, cwd and a read-only rootfs from `ctr run`'s flags, and
/// the container's kernel is the pod VM's (see `assert_guest_kernel`).
#[test]
fn ctr_env_cwd_readonly_rootfs_and_the_guest_kernel() {
    require_supported_vmm!();
    let c = Pods::shared(&["env"]);
    let (rc, out, err) = c.run(
        "env",
        &["--env", "GREETING=hi", "--cwd", "/tmp", "--read-only"],
        &[
            "sh",
            "-c",
            "echo $GREETING; pwd; touch /x 2>/dev/null || echo read-only; cat /proc/version",
        ],
    );
    assert_eq!(rc, 0, "{err}");
    let (head, version) = out
        .split_once("read-only\n")
        .unwrap_or_else(|| panic!("no read-only line in {out:?}"));
    assert_eq!(head, "hi\n/tmp\n");
    assert_guest_kernel(version.trim_end());
    c.assert_clean();
}

fn task_ps(c: &Pods, id: &str) -> Vec<u32> {
    let (rc, out, err) = c.ctr(&["task", "ps", id]);
    assert_eq!(rc, 0, "ctr task ps {id}: {err}");
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("PID"), "no header in {out:?}");
    lines
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("a row of `ctr task ps` without a PID: {l:?} in {out:?}"))
        })
        .collect()
}

/// Polls `ctr task ps ID` until `cond` holds for its PIDs (60 s at most).
fn wait_ps(c: &Pods, id: &str, what: &str, cond: impl Fn(&[u32]) -> bool) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids = task_ps(c, id);
        if cond(&pids) {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: ctr task ps {id} gives {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Without a VM the PIDs are the host's: what runs there.
fn host_cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim()
        .to_string()
}

fn local_backend() -> bool {
    std::env::var("COCOON_E2E_BACKEND").as_deref() == Ok("local")
}

/// The lines a child writes, gathered by a thread as they come.
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn of(r: impl std::io::Read + Send + 'static) -> Lines {
        let got = Arc::new(Mutex::new(Vec::new()));
        let rx = lines_of(r);
        let sink = got.clone();
        std::thread::spawn(move || {
            for l in rx {
                sink.lock().unwrap().push(l);
            }
        });
        Lines(got)
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Polls until there are at least `n` lines (`limit` at most).
    fn wait_for(&self, n: usize, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: {} lines after {limit:?}, wanted {n}",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until no line came for `quiet` (60 s at most); the count.
    fn settled(&self, quiet: Duration, what: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = self.count();
        loop {
            std::thread::sleep(quiet);
            let m = self.count();
            if m == n {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still {m} lines and growing after 60 s"
            );
            n = m;
        }
    }
}

/// `METRIC VALUE` rows of `ctr task metrics` (cgroup v2 names).
fn metrics(c: &Pods, id: &str) -> std::collections::HashMap<String, u64> {
    let (rc, out, err) = c.ctr(&["task", "metrics", id]);
    assert_eq!(rc, 0, "ctr task metrics {id}: {err}");
    let m: std::collections::HashMap<String, u64> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (k, v) = (f.next()?, f.next()?);
            (k.contains('.') && f.next().is_none()).then_some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    for k in ["pids.current", "memory.usage", "cpu.usage_usec"] {
        assert!(m.contains_key(k), "no {k} in:\n{out}");
    }
    m
}

#[test]
fn ctr_exec_ps_pause_resume_metrics_and_kill() {
    require_supported_vmm!();
    let c = Pods::shared(&["svc"]);
    c.run_detached("svc");
    let (rc, out, err) = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo in-exec; exit 5",
    ]);
    assert_eq!((rc, out.as_str()), (5, "in-exec\n"), "{err}");

    // ps: the container's one process (its `sleep 1000`), then that one
    // and a detached exec's, then the first one alone again.
    let init = wait_ps(&c, "svc", "the container's init alone", |p| p.len() == 1)[0];
    assert!(init > 0);
    if local_backend() {
        assert_eq!(host_cmdline(init), "sleep 1000", "pid {init}");
    }
    let (rc, _, err) = c.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "e2",
        "svc",
        "sleep",
        "300",
    ]);
    assert_eq!(rc, 0, "ctr task exec -d: {err}");
    let two = wait_ps(&c, "svc", "init and the exec", |p| p.len() == 2);
    assert!(two.contains(&init), "{two:?} lost the init {init}");
    let exec = *two.iter().find(|p| **p != init).unwrap();
    if local_backend() {
        assert_eq!(host_cmdline(exec), "sleep 300", "pid {exec}");
    }
    let (rc, _, err) = c.ctr(&["task", "kill", "-s", "SIGKILL", "--exec-id", "e2", "svc"]);
    assert_eq!(rc, 0, "ctr task kill --exec-id e2: {err}");
    wait_ps(&c, "svc", "the init alone after the exec was killed", |p| {
        p == [init]
    });

    // pause/resume: a ticker exec (a numbered line every 100 ms) stops
    // while the task is paused and goes on after.
    let mut ticker = c
        .ctr_cmd(&[
            "task",
            "exec",
            "--exec-id",
            "tick",
            "svc",
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ticks = Lines::of(ticker.stdout.take().unwrap());
    ticks.wait_for(3, Duration::from_secs(120), "the ticker's first lines");
    let (rc, _, err) = c.ctr(&["task", "pause", "svc"]);
    assert_eq!(rc, 0, "ctr task pause: {err}");
    assert_eq!(c.task_status("svc").as_deref(), Some("PAUSED"));
    // Lines written before the freeze may still be on their way.
    let frozen = ticks.settled(
        Duration::from_secs(1),
        "the ticker kept running while paused",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        ticks.count(),
        frozen,
        "the ticker made progress while paused (2 s after it had settled)"
    );
    let (rc, _, err) = c.ctr(&["task", "resume", "svc"]);
    assert_eq!(rc, 0, "ctr task resume: {err}");
    assert_eq!(c.task_status("svc").as_deref(), Some("RUNNING"));
    ticks.wait_for(
        frozen + 5,
        Duration::from_secs(60),
        "the ticker after resume",
    );

    // metrics: the sleep and the ticker's shell at least; memory in use,
    // and less than the whole VM (256 MiB); CPU time spent.
    let m = metrics(&c, "svc");
    assert!(m["pids.current"] >= 2, "{m:?}");
    assert!(
        m["memory.usage"] > 0 && m["memory.usage"] < 256 << 20,
        "{m:?}"
    );
    assert!(m["cpu.usage_usec"] > 0, "{m:?}");

    assert_eq!(c.ctr(&["task", "kill", "-s", "SIGKILL", "svc"]).0, 0);
    // The exec ends with its container.
    let st = wait_child(
        &mut ticker,
        Duration::from_secs(60),
        "the ticker's ctr task exec did not end with its task",
    );
    assert!(!st.success(), "{st:?}");
    c.wait_stopped("svc", "after SIGKILL");
    c.remove("svc");
    c.assert_clean();
}

/// `seen`, a container's /proc/version, is the banner built into
/// COCOON_KERNEL, not this host's kernel. (The local backend has no VM:
/// there it is this host's kernel, as that backend says.)
fn assert_guest_kernel(seen: &str) {
    let host = std::fs::read_to_string("/proc/version").unwrap();
    let host = host.trim_end();
    if local_backend() {
        assert_eq!(seen, host, "the local backend runs on this host's kernel");
        return;
    }
    let kernel = std::env::var("COCOON_KERNEL").expect("COCOON_KERNEL is not set");
    let image = std::fs::read(&kernel).unwrap_or_else(|e| panic!("{kernel}: {e}"));
    // Every "Linux version N..." string, to its newline or NUL.
    let banners: Vec<String> = image
        .windows(15)
        .enumerate()
        .filter(|(_, w)| w.starts_with(b"Linux version ") && w[14].is_ascii_digit())
        .map(|(i, _)| {
            let rest = &image[i..];
            let end = rest
                .iter()
                .position(|b| *b == b'\n' || *b == 0)
                .unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .collect();
    assert!(!banners.is_empty(), "no Linux version banner in {kernel}");
    assert!(
        banners.iter().any(|b| b == seen),
        "the container's /proc/version {seen:?} is none of {kernel}'s banners {banners:?}"
    );
    assert_ne!(seen, host, "the container runs on this host's kernel");
}

#[test]
fn ctr_many_containers_in_sequence_leave_nothing() {
    require_supported_vmm!();
    let c = Pods::shared(&["seq0", "seq1", "seq2"]);
    for i in 0..3 {
        let (rc, out, _) = c.run(&format!("seq{i}"), &[], &["echo", &format!("run {i}")]);
        assert_eq!((rc, out), (0, format!("run {i}\n")));
    }
    c.assert_clean();
}

#[test]
fn ctr_killed_pod_gives_an_exit_and_a_clean_state() {
    require_supported_vmm!();
    let c = Pods::shared(&["victim"]);
    c.run_detached("victim");
    // The task pid is the pod's VMM (or local agent): kill it.
    let (_, out, _) = c.ctr(&["task", "ls"]);
    let pid: i32 = out
        .lines()
        .find(|l| l.starts_with("victim"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out}"));
    // SAFETY: kill(2) on a pid we just read; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    c.wait_stopped("victim", "after the pod was killed");
    c.remove("victim");
    c.assert_clean();
}

#[test]
fn ctr_killed_shim_is_cleaned_up_by_the_delete_command() {
    require_supported_vmm!();
    let c = Pods::shared(&["orphan"]);
    c.run_detached("orphan");
    // containerd notices and runs `containerd-shim-cocoon-v2 delete`.
    c.kill_shim_and_await_delete("orphan");
    let _ = c.ctr(&["task", "rm", "orphan"]);
    assert_eq!(c.ctr(&["container", "rm", "orphan"]).0, 0);
    c.assert_clean();
}

/// Waits for a child process, failing the test with `why` after `limit`.
fn wait_child(
    child: &mut std::process::Child,
    limit: Duration,
    why: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a child's pipe line by line in the background.
fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn ctr_task_kill_sigterm_reaches_the_container() {
    require_supported_vmm!();
    let c = Pods::shared(&["trapper"]);
    let mut run = c
        .ctr_cmd(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "trapper",
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(run.stdout.take().unwrap());
    // The trap is set once the container says so.
    let first = out.recv_timeout(Duration::from_secs(180));
    assert_eq!(first.as_deref(), Ok("ready"), "no ready line");
    let (rc, _, err) = c.ctr(&["task", "kill", "trapper"]);
    assert_eq!(rc, 0, "ctr task kill (SIGTERM): {err}");
    let status = wait_child(
        &mut run,
        Duration::from_secs(60),
        "SIGTERM did not end the task",
    );
    assert_eq!(status.code(), Some(7), "the trap's exit status");
    assert_eq!(
        out.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("got-term")
    );
    c.assert_clean();
}

#[test]
fn ctr_run_t_gives_the_container_a_terminal() {
    require_supported_vmm!();
    let c = Pods::shared(&["tty"]);
    // `ctr run -t` wants a terminal on its own stdin: give it a pty.
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into the given ints; the name, termios
    // and winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just returned by openpty and are owned here only.
    let (master, slave) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    let mut run = c
        .ctr_cmd(&[
            "run",
            "--rm",
            "-t",
            "--runtime",
            RUNTIME,
            IMAGE,
            "tty",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo tty-ok; tty; exit 3",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let out = lines_of(master);
    let status = wait_child(&mut run, Duration::from_secs(180), "ctr run -t did not end");
    // The pty's master reads EIO once the last slave fd is gone.
    let text: Vec<String> = out.iter().collect();
    let text = text.join("\n");
    assert_eq!(status.code(), Some(3), "{text}");
    assert!(text.contains("tty-ok"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    c.assert_clean();
}

#[test]
fn ctr_memory_limit_is_enforced_in_the_guest() {
    require_supported_vmm!();
    let c = Pods::shared(&["nolimit", "limited"]);
    // dd holds one block of `bs` in memory. Without a limit 64 MiB fits the
    // pod's VM; under a 32 MiB limit 8 MiB still fits, and 64 MiB gets the
    // container's init (dd, exec'd by the shell) OOM-killed: exit 137.
    let dd = |bs: &str| format!("dd if=/dev/zero of=/dev/null bs={bs} count=1 2>/dev/null");
    let (rc, out, err) = c.run(
        "nolimit",
        &[],
        &["sh", "-c", &format!("{} && echo done-64M", dd("64M"))],
    );
    assert_eq!((rc, out.as_str()), (0, "done-64M\n"), "{err}");
    let (rc, out, err) = c.run(
        "limited",
        &["--memory-limit", "33554432"],
        &[
            "sh",
            "-c",
            &format!("{} && echo done-8M; exec {}", dd("8M"), dd("64M")),
        ],
    );
    assert_eq!(
        (rc, out.as_str()),
        (137, "done-8M\n"),
        "8 MiB then 64 MiB under a 32 MiB limit: {err}"
    );
    c.assert_clean();
}
