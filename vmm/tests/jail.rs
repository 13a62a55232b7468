//! The `cocoon-vmm` binary jailed and filtered, on this machine's
//! /dev/kvm with a tiny 64-bit ELF "kernel" (no Linux needed): what
//! `/proc` shows of the running VMM and its monitor, the jail's root, the
//! cleanup when the monitor dies, and the death by `SIGSYS` of a VMM that
//! makes a forbidden system call (the debug build's console trigger).
//! Needs root (as `make test` runs): a non-root run fails, it does not skip.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UID: u32 = 64_123;
const GID: u32 = 64_124;
const LOAD: u64 = 0x10_0000;

fn vmm() -> &'static str {
    env!("CARGO_BIN_EXE_cocoon-vmm")
}

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the jail tests need root (make test runs them as root)"
    );
}

/// 64-bit code: `msg` out of COM1 with `rep outsb`, then spin forever.
fn payload(msg: &[u8]) -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x09, 0x00, 0x00, 0x00, // lea rsi, [rip + 9]
        0xb9, // mov ecx, len
    ];
    code.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    code.extend_from_slice(&[0xf3, 0x6e]); // rep outsb
    code.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    code.extend_from_slice(msg);
    code
}

/// A minimal ELF64 executable loading `code` at 1 MiB, entry there.
fn elf(code: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [
        0x1000,
        LOAD,
        LOAD,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.resize(0x1000, 0);
    f.extend_from_slice(code);
    f
}

struct Setup {
    _tmp: tempfile::TempDir,
    kernel: PathBuf,
    jail: PathBuf,
}

fn setup(msg: &[u8]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("vmlinux");
    std::fs::write(&kernel, elf(&payload(msg))).unwrap();
    let jail = tmp.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    std::os::unix::fs::chown(&jail, Some(UID), Some(GID)).unwrap();
    std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The temp dir itself is 0700 root; the jail is reached as root first.
    Setup {
        _tmp: tmp,
        kernel,
        jail,
    }
}

/// Kills the monitor (and so the VMM) if a test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(s: &Setup, extra: &[&str]) -> Child {
    let j = s.jail.display();
    Command::new(vmm())
        .arg("--allow-slow-kvm")
        .arg("--kernel")
        .arg(&s.kernel)
        .args(["--memory", "32"])
        .arg("--serial")
        .arg(format!("file:{j}/console.log"))
        .arg("--log-file")
        .arg(format!("{j}/vmm.log"))
        .args(["--log-level", "info"])
        .arg("--vsock")
        .arg(format!("cid=3,uds={j}/v.sock"))
        .arg("--jail")
        .arg(&s.jail)
        .args([
            "--jail-uid",
            &UID.to_string(),
            "--jail-gid",
            &GID.to_string(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn status_field(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// The jailed VMM: the monitor's only child.
fn jailed_child(monitor: u32, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        let kids = std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children"))
            .unwrap_or_default();
        if let Some(pid) = kids.split_whitespace().next() {
            let pid: i32 = pid.parse().unwrap();
            // Up once the vCPU exists and every thread has its filter.
            let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let vcpu = threads.iter().any(|t| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                    .is_ok_and(|c| c.starts_with("vcpu-"))
            });
            // (In audit mode the audit thread is the one left unfiltered.)
            let filtered = threads.iter().all(|t| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).is_ok_and(|s| {
                    s.contains("\nSeccomp:\t2\n") || s.starts_with("Name:\tseccomp-audit\n")
                })
            });
            if vcpu && filtered {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no jailed VMM under monitor {monitor}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            panic!("cocoon-vmm did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_jailed_vmm_runs_unprivileged_filtered_and_alone() {
    assert_root();
    let s = setup(b"ready\n");
    let mut monitor = Running(start(&s, &[]));
    let pid = jailed_child(monitor.0.id(), Duration::from_secs(30));
    for (who, p) in [("VMM", pid), ("monitor", monitor.0.id() as i32)] {
        let ids = |f| status_field(p, f).unwrap();
        assert_eq!(ids("Uid"), format!("{UID}\t{UID}\t{UID}\t{UID}"), "{who}");
        assert_eq!(ids("Gid"), format!("{GID}\t{GID}\t{GID}\t{GID}"), "{who}");
        assert_eq!(ids("Groups"), "", "{who}");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(ids(cap), "0000000000000000", "{who} {cap}");
        }
        assert_eq!(ids("NoNewPrivs"), "1", "{who}");
        assert_eq!(ids("Seccomp"), "2", "{who}");
    }
    // Every thread runs under a filter of its own kind.
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().file_name();
        let t = t.to_string_lossy();
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
        assert!(
            status.contains("\nSeccomp:\t2\n"),
            "thread {t} of the VMM is not filtered:\n{status}"
        );
    }
    // PID 1 of its own PID namespace, and its own mount, net, IPC, UTS.
    let nspid = status_field(pid, "NSpid").unwrap();
    assert!(nspid.ends_with("\t1"), "NSpid {nspid}");
    for kind in ["pid", "mnt", "net", "ipc", "uts"] {
        assert_ne!(ns(&pid.to_string(), kind), ns("self", kind), "{kind}");
    }
    // Its root is the jail: the kernel bound in, its own files, nothing else.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert_eq!(
        entries(&root),
        ["console.log", "kernel", "v.sock", "vmm.log"],
        "the jail's root"
    );
    assert!(!root.join("etc/hostname").exists());
    assert!(!root.join("dev/kvm").exists());
    // The files it made are in the host's jail dir, owned by its uid.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let console = std::fs::read_to_string(s.jail.join("console.log")).unwrap();
        if console == "ready\n" {
            break;
        }
        assert!(Instant::now() < deadline, "console: {console:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(s.jail.join("v.sock")).unwrap().uid(), UID);
    // Asked to stop, the monitor kills the VMM and reaps it before it goes
    // itself (so it can tell how the VMM ended: a VMM dying of SIGSYS as
    // its pod is stopped still reads as SIGSYS); it dies of what it was sent.
    // A blocking wait, to look at the VMM the moment the monitor is gone;
    // a watchdog kills a monitor that does not go within 10 s, and only
    // while it is not reaped (the pid could be reused after).
    let mpid = monitor.0.id() as i32;
    let (reaped_tx, reaped_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if reaped_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            // SAFETY: signalling the child we started, not yet reaped.
            unsafe { libc::kill(mpid, libc::SIGKILL) };
        }
    });
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(mpid, libc::SIGTERM) };
    let st = monitor.0.wait().unwrap();
    let _ = reaped_tx.send(());
    watchdog.join().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the VMM (pid {pid}) was still there when its monitor had ended: {:?}",
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
    );
}

/// The console trigger exists in debug builds only (`make test` builds those).
#[cfg(debug_assertions)]
#[test]
fn a_forbidden_system_call_kills_the_vmm_with_sigsys_and_names_the_call() {
    assert_root();
    for jailed in [true, false] {
        let s = setup(b"boot\ncocoon-test:sigsys\n");
        let mut child = Running(if jailed {
            start(&s, &[])
        } else {
            Command::new(vmm())
                .arg("--allow-slow-kvm")
                .arg("--kernel")
                .arg(&s.kernel)
                .args(["--memory", "32", "--serial", "none"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        });
        let st = wait_exit(&mut child.0, Duration::from_secs(30));
        let err = stderr_of(&mut child.0);
        assert_eq!(
            st.signal(),
            Some(libc::SIGSYS),
            "jailed={jailed} {st:?}: {err}"
        );
        assert!(
            err.contains(
                "the vcpu thread made system call 110 (getppid), which its allow-list lacks"
            ),
            "jailed={jailed}: {err}"
        );
        if jailed {
            assert!(err.contains("killed by SIGSYS"), "{err}");
        }
    }
}

#[cfg(debug_assertions)]
#[test]
fn audit_mode_lets_the_call_run_and_logs_it() {
    assert_root();
    let s = setup(b"cocoon-test:sigsys\n");
    let monitor = Running(start(&s, &["--seccomp", "audit"]));
    let pid = jailed_child(monitor.0.id(), Duration::from_secs(30));
    let log = s.jail.join("vmm.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("seccomp audit: a vcpu thread made getppid (110), which its list lacks") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "audit mode killed the VMM"
    );
}

#[test]
fn bad_jail_settings_are_named() {
    assert_root();
    let s = setup(b"");
    let run = |args: &[&str]| {
        let out = Command::new(vmm())
            .arg("--allow-slow-kvm")
            .arg("--kernel")
            .arg(&s.kernel)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let j = s.jail.display().to_string();
    let (code, err) = run(&["--jail", &j, "--jail-uid", "0", "--jail-gid", "5"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("must not be 0"), "{err}");
    let (code, err) = run(&["--jail", &j, "--jail-uid", "5"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--jail-gid"), "{err}");
    let (code, err) = run(&[
        "--jail",
        &format!("{j}/missing"),
        "--jail-uid",
        "5",
        "--jail-gid",
        "5",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("missing") && err.contains("jail directory"),
        "{err}"
    );
    let (code, err) = run(&[
        "--jail",
        &j,
        "--jail-uid",
        "5",
        "--jail-gid",
        "5",
        "--log-file",
        "/tmp/elsewhere.log",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("/tmp/elsewhere.log is not inside the jail directory"),
        "{err}"
    );
    let (code, err) = run(&["--seccomp", "lax"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not enforce, audit or off"), "{err}");
    let out = Command::new(vmm())
        .args(["--seccomp", "off", "--kernel", "/nonexistent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARNING: --seccomp off"), "{err}");
}

/// 64-bit code: `msg` out of COM1, then a `.` after every busy loop,
/// forever.
fn ticking_payload(msg: &[u8]) -> Vec<u8> {
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x15, 0x00, 0x00, 0x00, // lea rsi, [rip + 21] (msg)
        0xb9, // mov ecx, len
    ];
    code.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    code.extend_from_slice(&[
        0xf3, 0x6e, // rep outsb
        0xb0, b'.', // tick: mov al, '.'
        0xee, // out dx, al
        0xb9, 0x00, 0x00, 0x04, 0x00, // mov ecx, 0x40000
        0xff, 0xc9, // delay: dec ecx
        0x75, 0xfc, // jnz delay
        0xeb, 0xf2, // jmp tick
    ]);
    assert_eq!(code.len(), 32);
    code.extend_from_slice(msg);
    code
}

fn console_of(s: &Setup) -> String {
    std::fs::read_to_string(s.jail.join("console.log")).unwrap_or_default()
}

fn wait_console(s: &Setup, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let console = console_of(s);
        if ok(&console) {
            return console;
        }
        assert!(Instant::now() < deadline, "{what}: console {console:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--snapshot-to` in a jail: SIGUSR1 to the monitor (the process that
/// was started) reaches the jailed VMM, which saves into a directory
/// inside its jail and exits 0; `--restore` in another jail (the
/// snapshot read before entering it) goes on where the guest was: it
/// ticks on without printing its boot message again. Both filtered.
#[test]
fn a_jailed_template_saves_on_sigusr1_and_a_jailed_restore_goes_on() {
    assert_root();
    let s = setup(b"");
    std::fs::write(&s.kernel, elf(&ticking_payload(b"booted\n"))).unwrap();
    let snap = s.jail.join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    std::os::unix::fs::chown(&snap, Some(UID), Some(GID)).unwrap();
    let snap_arg = snap.display().to_string();
    let mut monitor = Running(start(&s, &["--snapshot-to", &snap_arg]));
    jailed_child(monitor.0.id(), Duration::from_secs(30));
    wait_console(&s, "the template never ticked", |c| {
        c.starts_with("booted\n") && c.ends_with("..")
    });
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(monitor.0.id() as i32, libc::SIGUSR1) };
    let st = wait_exit(&mut monitor.0, Duration::from_secs(30));
    let err = stderr_of(&mut monitor.0);
    assert_eq!(st.code(), Some(0), "{st:?}: {err}");
    let log = std::fs::read_to_string(s.jail.join("vmm.log")).unwrap();
    assert!(log.contains("snapshot taken"), "{log}");
    assert_eq!(entries(&snap), ["memory", "state"]);

    let r = setup(b"");
    std::fs::copy(&s.kernel, &r.kernel).unwrap();
    let restored = Running(start(&r, &["--restore", &snap_arg]));
    jailed_child(restored.0.id(), Duration::from_secs(30));
    let console = wait_console(&r, "the restored VM never ticked", |c| c.ends_with("..."));
    assert!(
        !console.contains("booted"),
        "the restored VM started over instead of going on: {console:?}"
    );
    assert!(console.chars().all(|c| c == '.'), "{console:?}");
    drop(restored);

    // A snapshot of another memory size is refused, naming both sizes.
    let out = Command::new(vmm())
        .arg("--allow-slow-kvm")
        .arg("--kernel")
        .arg(&r.kernel)
        .args(["--memory", "64", "--serial", "none", "--restore", &snap_arg])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("memory bytes = 33554432") && err.contains("67108864"),
        "{err}"
    );
}
