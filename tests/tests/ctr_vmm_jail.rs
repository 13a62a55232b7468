//! The VMM jail and its seccomp filters, end to end through `ctr`: what
//! `/proc` shows of a running pod's VMM, what one pod's VMM can reach of
//! another's, the clear error when a VMM is killed by `SIGSYS` (a
//! privileged container fires the debug build's console trigger), an
//! audit-mode run whose only off-list system call is that trigger's, and
//! the clear error when the VMM's virtiofsd cannot start.
#![cfg(feature = "e2e")]

#[macro_use]
mod common;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Containerd, Pods};

/// Writes the trigger line to the guest's kernel log (level 2: printed
/// on the console despite `quiet`); a privileged container has /dev/kmsg.
const TRIGGER: &str = "echo '<2>cocoon-test:sigsys' > /dev/kmsg";

fn status_field(pid: i32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The monitor (`vmm.pid`) and the jailed VMM (its only child) of a pod.
fn vmm_pids(c: &Containerd, pod: &str) -> (i32, i32) {
    let pid_file = c.run_dir.join(pod).join("vmm.pid");
    let monitor: i32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .parse()
        .unwrap();
    let kids = std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children")).unwrap();
    let child: i32 = kids
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("the monitor {monitor} has no child"))
        .parse()
        .unwrap();
    (monitor, child)
}

/// What a probe does, as another VMM's uid (and mount namespace).
enum Probe<'a> {
    Connect(&'a Path),
    Signal(i32),
}

/// Runs `probe` in a forked child that joined the mount namespace of
/// `ns_of` (if any) and became `uid`; the errno it got (0: it worked).
fn probe_as(uid: u32, ns_of: Option<i32>, probe: Probe) -> i32 {
    let ns = ns_of.map(|pid| std::fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap());
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let target = match &probe {
        Probe::Connect(p) => {
            let bytes = p.as_os_str().as_bytes();
            assert!(bytes.len() < addr.sun_path.len(), "{}", p.display());
            for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            -1
        }
        Probe::Signal(pid) => *pid,
    };
    let root = CString::new("/").unwrap();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: the closure only makes async-signal-safe system calls on
    // data prepared before the fork, and never returns (it _exits).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    libc::_exit(200);
                }
                libc::chdir(root.as_ptr());
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(201);
            }
            let rc = if target < 0 {
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if s < 0 {
                    libc::_exit(202);
                }
                libc::connect(
                    s,
                    &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            } else {
                libc::kill(target, 0)
            };
            libc::_exit(if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            })
        });
    }
    let st = cmd.status().unwrap();
    let code = st.code().expect("the probe was killed");
    assert!(
        code < 200,
        "the probe could not set itself up (code {code})"
    );
    code
}

#[test]
fn ctr_every_vmm_runs_jailed_filtered_and_apart() {
    require_supported_vmm!();
    let c = Pods::shared(&["jail-a", "jail-b"]);
    c.run_detached("jail-a");
    c.run_detached("jail-b");
    let (mon_a, vmm_a) = vmm_pids(&c, "jail-a");
    let (_, vmm_b) = vmm_pids(&c, "jail-b");
    let uid_a: u32 = status_field(vmm_a, "Uid")
        .split('\t')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let uid_b: u32 = status_field(vmm_b, "Uid")
        .split('\t')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid_a, 0);
    assert_ne!(uid_a, uid_b, "two pods' VMMs share a uid");
    for (who, pid) in [("VMM a", vmm_a), ("monitor a", mon_a), ("VMM b", vmm_b)] {
        assert_eq!(status_field(pid, "Seccomp"), "2", "{who}");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{who}");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "{who}");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000", "{who}");
        assert_eq!(status_field(pid, "CapBnd"), "0000000000000000", "{who}");
        let uid = status_field(pid, "Uid");
        assert!(
            uid.split('\t').all(|u| u != "0"),
            "{who} has uid 0 somewhere: {uid}"
        );
    }
    // Every thread of the running VMM is filtered.
    for t in std::fs::read_dir(format!("/proc/{vmm_a}/task")).unwrap() {
        let t = t.unwrap().file_name().to_string_lossy().into_owned();
        let st = std::fs::read_to_string(format!("/proc/{vmm_a}/task/{t}/status")).unwrap();
        assert!(st.contains("\nSeccomp:\t2\n"), "thread {t}:\n{st}");
    }
    // Its root is the pod's jail dir: no /etc, no /dev, no /proc.
    let root = PathBuf::from(format!("/proc/{vmm_a}/root"));
    assert!(
        !root.join("etc/hostname").exists(),
        "the VMM sees /etc/hostname"
    );
    assert!(!root.join("dev").exists() && !root.join("proc").exists());
    assert!(root.join("vsock.sock").exists() && root.join("kernel").exists());
    // From inside a's jail, as a's uid: its own socket is there, b's is not.
    let b_vsock = c.run_dir.join("jail-b/jail/vsock.sock");
    let b_fs = c.run_dir.join("jail-b/virtiofsd.sock");
    assert_eq!(
        probe_as(uid_a, Some(vmm_a), Probe::Connect(Path::new("/vsock.sock"))),
        0,
        "a's VMM cannot reach its own vsock socket (the probe is broken)"
    );
    for p in [&b_vsock, &b_fs] {
        assert_eq!(
            probe_as(uid_a, Some(vmm_a), Probe::Connect(p)),
            libc::ENOENT,
            "a's VMM sees {}",
            p.display()
        );
        // Even with the host's view, a's uid may not enter b's pod dir.
        assert_eq!(
            probe_as(uid_a, None, Probe::Connect(p)),
            libc::EACCES,
            "a's uid reaches {}",
            p.display()
        );
    }
    assert_eq!(
        probe_as(uid_a, None, Probe::Signal(vmm_b)),
        libc::EPERM,
        "a's uid may signal b's VMM"
    );
    for id in ["jail-a", "jail-b"] {
        let (rc, _, err) = c.ctr(&["task", "kill", "-s", "KILL", id]);
        assert_eq!(rc, 0, "ctr task kill {id}: {err}");
    }
    for id in ["jail-a", "jail-b"] {
        c.wait_stopped(id, "after kill");
        c.remove(id);
    }
    // Also the pods' uid claims (in run_dir/vmm-uids) are given back.
    c.assert_clean();
}

#[test]
fn ctr_a_vmm_killed_by_sigsys_ends_its_tasks_with_a_clear_error() {
    require_supported_vmm!();
    let c = Pods::shared(&["sigsys"]);
    let start = Instant::now();
    let script = format!("{TRIGGER}; sleep 60; echo still-running");
    let (rc, out, err) = c.run("sigsys", &["--privileged"], &["sh", "-c", &script]);
    assert_eq!(rc, 255, "the task must end as lost (255): {out}{err}");
    assert!(!out.contains("still-running"));
    assert!(
        start.elapsed() < Duration::from_secs(55),
        "the VMM was not killed"
    );
    // The task's end (lost) and the shim's line about the VMM are two
    // events: the line may follow the exit by the watcher's drain.
    let named = |log: &str| {
        log.contains("was killed by SIGSYS")
            && log.contains("the vcpu thread made system call 110 (getppid)")
    };
    let until = Instant::now() + Duration::from_secs(10);
    let mut log = c.log();
    while !named(&log) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        log = c.log();
    }
    assert!(
        named(&log),
        "no clear error in the shim's log:\n{}",
        &log[log.len().saturating_sub(4000)..]
    );
    c.assert_clean();
}

#[test]
fn ctr_audit_mode_finds_no_call_outside_the_lists_but_the_trigger() {
    require_supported_vmm!();
    // A shim configuration of its own: a containerd of its own.
    let own = Containerd::start_with("audit", "vmm_seccomp = \"audit\"\n");
    let c = Pods::on(&own, &["audit"]);
    let vol = PathBuf::from(format!("/tmp/cocoon-e2e-audit-{}", std::process::id()));
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    // A workload touching every device path: virtio-fs reads and writes
    // (rootfs and a volume), stdio streams over vsock, an exec, signals.
    let mount = format!("type=bind,src={},dst=/data,options=rbind", vol.display());
    c.run_detached_with(
        "audit",
        &["--privileged", "--mount", &mount],
        &["sleep", "1000"],
    );
    let (rc, out, err) = c.exec(
        "audit",
        "work",
        &[
            "sh",
            "-c",
            &format!(
                "cat /data/in; echo out > /data/out; dd if=/dev/zero of=/big bs=64k count=64 2>/dev/null; \
                 md5sum /big; ls / >/dev/null; {TRIGGER}; echo done"
            ),
        ],
    );
    assert_eq!(rc, 0, "{out}{err}");
    assert!(
        out.contains("from the host") && out.contains("done"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "out\n");
    let (rc, _, err) = c.ctr(&["task", "kill", "-s", "KILL", "audit"]);
    assert_eq!(rc, 0, "ctr task kill audit: {err}");
    c.wait_stopped("audit", "after kill");
    c.remove("audit");
    // The shim passes the VMM's audit lines on when it stops the pod.
    let log = c.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("seccomp audit:"))
        .collect();
    assert!(
        audit
            .iter()
            .any(|l| l.contains("a vcpu thread made getppid (110)")),
        "the trigger's call was not audited (is the audit path broken?):\n{}",
        audit.join("\n")
    );
    let others: Vec<&&str> = audit.iter().filter(|l| !l.contains("getppid")).collect();
    assert!(
        others.is_empty(),
        "system calls outside the VMM's lists in a full run:\n{}",
        others
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = std::fs::remove_dir_all(&vol);
    c.assert_clean();
}

/// virtiofsd and the VMM start side by side (the shim binds virtiofsd's
/// socket and hands it over with `--fd`; the VMM's connection waits in
/// its backlog): a virtiofsd that cannot start (here: an option it does
/// not know) fails `ctr run` with virtiofsd's own words, not only the
/// VMM's failure to reach it, and leaves nothing behind.
#[test]
fn ctr_a_virtiofsd_that_cannot_start_fails_the_run_with_its_own_words() {
    require_supported_vmm!();
    let pods = Pods::shared(&["vfsd-bad"]);
    let c = common::shared();
    let base = std::fs::read_to_string(c.dir.join("cocoon.toml")).unwrap();
    let cfg = c.dir.join("cocoon-bad-virtiofsd.toml");
    std::fs::write(
        &cfg,
        format!("{base}template = false\nvirtiofsd_args = [\"--no-such-option\"]\n"),
    )
    .unwrap();
    let (rc, _, err) = pods.run(
        "vfsd-bad",
        &["--runtime-config-path", cfg.to_str().unwrap()],
        &["true"],
    );
    assert_ne!(rc, 0, "the run succeeded without a virtiofsd");
    assert!(
        err.contains("virtiofsd exited before it was ready") && err.contains("--no-such-option"),
        "{err}\n{}",
        pods.log()
    );
    pods.assert_clean();
}
