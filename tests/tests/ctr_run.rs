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

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Containerd, IMAGE, RUNTIME};

#[test]
fn ctr_run_exit_codes_stdout_stderr_stdin() {
    require_supported_vmm!();
    let c = Containerd::start("basic");
    let t = Instant::now();
    let (rc, out, _) = c.run("hello", &[], &["echo", "hello from a micro-VM"]);
    eprintln!("ctr run --rm echo: {:?}", t.elapsed());
    assert_eq!((rc, out.as_str()), (0, "hello from a micro-VM\n"));
    let (rc, out, err) = c.run(
        "codes",
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 42"],
    );
    assert_eq!(rc, 42, "{err}");
    assert_eq!(out, "out\n");
    assert!(err.contains("err\n"), "{err}");
    let (rc, out, _) = c.ctr_in(
        &["run", "--rm", "--runtime", RUNTIME, IMAGE, "stdin", "cat"],
        b"through stdin\n",
        Duration::from_secs(180),
    );
    assert_eq!((rc, out.as_str()), (0, "through stdin\n"));
    c.assert_clean();
}

#[test]
fn ctr_env_cwd_and_readonly_rootfs() {
    require_supported_vmm!();
    let c = Containerd::start("env");
    let (rc, out, err) = c.run(
        "env",
        &["--env", "GREETING=hi", "--cwd", "/tmp", "--read-only"],
        &[
            "sh",
            "-c",
            "echo $GREETING; pwd; touch /x 2>/dev/null || echo read-only",
        ],
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, "hi\n/tmp\nread-only\n");
    c.assert_clean();
}

#[test]
fn ctr_exec_ps_pause_resume_metrics_and_kill() {
    require_supported_vmm!();
    let c = Containerd::start("exec");
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
    let (rc, out, _) = c.ctr(&["task", "ps", "svc"]);
    assert_eq!(rc, 0);
    assert!(out.lines().count() >= 2, "{out}");
    assert_eq!(c.ctr(&["task", "pause", "svc"]).0, 0);
    assert!(c.ctr(&["task", "ls"]).1.contains("PAUSED"));
    assert_eq!(c.ctr(&["task", "resume", "svc"]).0, 0);
    assert!(c.ctr(&["task", "ls"]).1.contains("RUNNING"));
    let (rc, out, err) = c.ctr(&["task", "metrics", "svc"]);
    assert_eq!(rc, 0, "ctr task metrics: {err}");
    assert!(out.contains("pids.current"), "{out}");
    assert_eq!(c.ctr(&["task", "kill", "-s", "SIGKILL", "svc"]).0, 0);
    c.wait_stopped("after SIGKILL");
    c.remove("svc");
    std::thread::sleep(Duration::from_millis(500));
    c.assert_clean();
}

#[test]
fn ctr_many_containers_in_sequence_leave_nothing() {
    require_supported_vmm!();
    let c = Containerd::start("seq");
    for i in 0..5 {
        let (rc, out, _) = c.run(&format!("seq{i}"), &[], &["echo", &format!("run {i}")]);
        assert_eq!((rc, out), (0, format!("run {i}\n")));
    }
    c.assert_clean();
}

#[test]
fn ctr_killed_pod_gives_an_exit_and_a_clean_state() {
    require_supported_vmm!();
    let c = Containerd::start("kill");
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
    c.wait_stopped("after the pod was killed");
    c.remove("victim");
    std::thread::sleep(Duration::from_millis(500));
    c.assert_clean();
}

#[test]
fn ctr_killed_shim_is_cleaned_up_by_the_delete_command() {
    require_supported_vmm!();
    let c = Containerd::start("shimkill");
    c.run_detached("orphan");
    let pg = Command::new("pgrep")
        .args([
            "-f",
            "containerd-shim-cocoon-v2 -namespace cocoon -id orphan",
        ])
        .output()
        .unwrap();
    let shim: i32 = String::from_utf8_lossy(&pg.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("shim pid");
    // SAFETY: kill(2) on the pid pgrep gave us; no memory is involved.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    // containerd notices and runs `containerd-shim-cocoon-v2 delete`.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&c.run_dir)
        .map(|rd| rd.count() > 0)
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "delete did not clean the pod");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let c = Containerd::start("term");
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
    assert_eq!(out.recv().as_deref(), Ok("got-term"));
    std::thread::sleep(Duration::from_millis(500));
    c.assert_clean();
}

#[test]
fn ctr_run_t_gives_the_container_a_terminal() {
    require_supported_vmm!();
    let c = Containerd::start("tty");
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
    let c = Containerd::start("mem");
    // dd holds one block of `bs` in memory. Without a limit 64 MiB fits the
    // pod's VM; under a 32 MiB limit it is OOM-killed, 8 MiB still fits.
    let dd = |bs: &str| {
        format!("dd if=/dev/zero of=/dev/null bs={bs} count=1 2>/dev/null && echo done-{bs}")
    };
    let (rc, out, err) = c.run("nolimit", &[], &["sh", "-c", &dd("64M")]);
    assert_eq!((rc, out.as_str()), (0, "done-64M\n"), "{err}");
    let limit = ["--memory-limit", "33554432"];
    let (rc, out, err) = c.run("small", &limit, &["sh", "-c", &dd("8M")]);
    assert_eq!((rc, out.as_str()), (0, "done-8M\n"), "{err}");
    let (rc, out, err) = c.run(
        "big",
        &limit,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    assert_eq!(rc, 137, "64 MiB under a 32 MiB limit: {out} {err}");
    c.assert_clean();
}
