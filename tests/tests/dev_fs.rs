//! virtio-fs end to end: a real virtiofsd on a temp dir, cocoon-vmm with
//! `--fs`, the devtest init mounting the share, reading the host's file and
//! writing one the host then checks.
#![cfg(feature = "e2e")]

use cocoon_e2e::{assert_devtest_passed, run_with_deadline, Artifacts};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOOT_DEADLINE: Duration = Duration::from_secs(240);
const TAG: &str = "cocoonfs";
const HOST_FILE_LEN: usize = 256 * 1024;
/// `rootfs/devtest-init/src/fs.rs` `WRITE_CONTENT`.
const GUEST_CONTENT: &[u8] = b"written by the cocoon guest over virtio-fs\n";

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3) % 251) as u8
}

fn virtiofsd() -> PathBuf {
    let in_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("virtiofsd"))
            .find(|f| f.exists())
    });
    let in_cargo = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/virtiofsd"))
        .filter(|p| p.exists());
    in_path
        .or(in_cargo)
        .expect("virtiofsd is not installed: run `make deps`")
}

/// A temp dir with `shared/` and a running virtiofsd on `vfsd.sock`;
/// everything is killed and removed on drop.
struct Share {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Share {
    fn new(name: &str) -> Share {
        let dir = std::env::temp_dir().join(format!("cocoon-e2e-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shared")).unwrap();
        let socket = dir.join("vfsd.sock");
        Share {
            dir,
            socket,
            child: None,
        }
    }

    fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }

    fn start_virtiofsd(&mut self) {
        let child = Command::new(virtiofsd())
            .arg("--socket-path")
            .arg(&self.socket)
            .arg("--shared-dir")
            .arg(self.shared())
            .args([
                "--sandbox",
                "none",
                "--cache",
                "auto",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start virtiofsd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill virtiofsd (if still running) and check it is gone.
    fn stop_virtiofsd(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let _ = child.kill();
            let _ = child.wait();
            // SAFETY: kill with signal 0 only checks that the pid exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            assert!(!alive, "virtiofsd (pid {pid}) is still there");
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.stop_virtiofsd();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn vmm(a: &Artifacts, cmdline: &str, fs: &str) -> Command {
    let mut cmd = a.devtest_vmm(cmdline);
    cmd.args(["--memory", "256", "--fs", fs]);
    cmd
}

#[test]
fn guest_reads_and_writes_the_share() {
    let a = Artifacts::from_env();
    let mut share = Share::new("rw");
    let data: Vec<u8> = (0..HOST_FILE_LEN).map(pattern).collect();
    std::fs::write(share.shared().join("host.bin"), &data).unwrap();
    share.start_virtiofsd();

    let cmdline = format!(
        "quiet cocoon.test=fs cocoon.fs.tag={TAG} cocoon.fs.read=host.bin \
         cocoon.fs.len={HOST_FILE_LEN} cocoon.fs.write=guest.txt"
    );
    let fs = format!("tag={TAG},socket={}", share.socket.display());
    let f = run_with_deadline(vmm(&a, &cmdline, &fs), BOOT_DEADLINE);
    assert_devtest_passed(&f, "fs");
    let written = std::fs::read(share.shared().join("guest.txt")).expect("the guest's file");
    assert_eq!(written, GUEST_CONTENT);
    share.stop_virtiofsd();
}

#[test]
fn a_missing_virtiofsd_is_a_clear_setup_error() {
    let a = Artifacts::from_env();
    let share = Share::new("missing");
    let fs = format!("tag={TAG},socket={}", share.socket.display());
    let f = run_with_deadline(vmm(&a, "quiet", &fs), Duration::from_secs(60));
    assert_eq!(f.status.code(), Some(1), "{}", f.describe());
    assert!(
        f.stderr.contains("does not exist") && f.stderr.contains("--socket-path"),
        "{}",
        f.describe()
    );
}
