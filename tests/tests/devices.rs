//! The virtio devices end to end, with the test-mode init
//! (rootfs/devtest-init) as the guest's PID 1: one boot with every device
//! (blk, fs, net, rng, vsock), each checked from both sides, and each
//! device's setup errors (no boot needed), one module per device.
#![cfg(feature = "e2e")]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cocoon_e2e::{assert_devtest_all_passed, run_with_deadline, Artifacts};

/// A temp directory removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cocoon-e2e-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Every device in one VM, run inside the net module's network namespace
/// (the TAP lives there; the Unix sockets of vsock and virtio-fs are on the
/// file system, which the namespace shares): the guest runs the five checks
/// in turn and the host checks what each left on its side.
#[test]
fn every_device_in_one_boot() {
    let a = Artifacts::from_env();

    // blk: a read-only disk with a known pattern, a read-write one to write.
    let dir = temp_dir("devices");
    let (ro, rw) = (dir.path().join("ro.img"), dir.path().join("rw.img"));
    let ro_bytes: Vec<u8> = (0..blk::RO_BYTES)
        .map(|i| blk::pattern(blk::RO_SEED, i))
        .collect();
    std::fs::write(&ro, &ro_bytes).unwrap();
    std::fs::write(&rw, vec![blk::FILL; blk::RW_DISK as usize]).unwrap();

    // fs: a host file for the guest to read, a virtiofsd on the share.
    let mut share = fs::Share::new("rw");
    let data: Vec<u8> = (0..fs::HOST_FILE_LEN).map(fs::pattern).collect();
    std::fs::write(share.shared().join("host.bin"), &data).unwrap();
    share.start_virtiofsd();

    // net: a namespace with a TAP and a UDP echo server.
    let ns = net::Netns::new();
    let (udp_stop, udp_echoed, udp_echo) = net::udp_echo(&ns.0);

    // vsock: an echo server for the guest's connection, a host client.
    let uds = dir.path().join("v.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicUsize::new(0));
    let echo = vsock::echo_server(
        format!("{}_{}", uds.display(), vsock::ECHO_PORT).into(),
        stop.clone(),
        echoed.clone(),
    );
    let client = vsock::host_client(uds.clone(), stop.clone());

    let cmdline = format!(
        "quiet cocoon.test=blk,fs,net,rng,vsock \
         cocoon.blk.ro=/dev/vda cocoon.blk.rw=/dev/vdb cocoon.blk.ro_bytes={} \
         cocoon.blk.ro_seed={} cocoon.blk.ro_id=cocoon-ro cocoon.blk.rw_seed={} \
         cocoon.blk.rw_offset={} cocoon.blk.rw_bytes={} \
         cocoon.fs.tag={} cocoon.fs.read=host.bin cocoon.fs.len={} cocoon.fs.write=guest.txt \
         cocoon.net.ip={} cocoon.net.peer={} cocoon.net.port={} cocoon.net.mac={} \
         cocoon.rng.bytes=64 \
         cocoon.vsock.port={} cocoon.vsock.listen={}",
        blk::RO_BYTES,
        blk::RO_SEED,
        blk::RW_SEED,
        blk::RW_OFFSET,
        blk::RW_BYTES,
        fs::TAG,
        fs::HOST_FILE_LEN,
        net::GUEST_IP,
        net::HOST_IP,
        net::PORT,
        net::MAC,
        vsock::ECHO_PORT,
        vsock::GUEST_PORT,
    );
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(&a.vmm)
        .args(a.devtest_args(&cmdline))
        .args(["--memory", "256", "--rng"])
        .arg("--block")
        .arg(format!("path={},readonly=on,id=cocoon-ro", ro.display()))
        .arg("--block")
        .arg(format!("path={}", rw.display()))
        .arg("--fs")
        .arg(format!("tag={},socket={}", fs::TAG, share.socket.display()))
        .arg("--net")
        .arg(format!("tap={},mac={}", net::TAP, net::MAC))
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()));
    let f = run_with_deadline(cmd, Duration::from_secs(300));
    udp_stop.store(true, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    udp_echo.join().unwrap();
    let host = client.join().unwrap();
    echo.join().unwrap();
    assert_devtest_all_passed(&f, &["blk", "fs", "net", "rng", "vsock"]);

    // blk: the read-only image is untouched, the write landed exactly.
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_bytes,
        "the read-only image changed"
    );
    let got = std::fs::read(&rw).unwrap();
    assert_eq!(got.len() as u64, blk::RW_DISK);
    let (start, end) = (
        blk::RW_OFFSET as usize,
        (blk::RW_OFFSET + blk::RW_BYTES) as usize,
    );
    assert!(
        got[..start].iter().all(|&b| b == blk::FILL),
        "bytes before the write changed"
    );
    assert!(
        got[end..].iter().all(|&b| b == blk::FILL),
        "bytes after the write changed"
    );
    for (i, &b) in got[start..end].iter().enumerate() {
        let at = blk::RW_OFFSET + i as u64;
        assert_eq!(b, blk::pattern(blk::RW_SEED, at), "rw image byte {at}");
    }
    // fs: the guest's file arrived.
    let written = std::fs::read(share.shared().join("guest.txt")).expect("the guest's file");
    assert_eq!(written, fs::GUEST_CONTENT);
    share.stop_virtiofsd();
    // net: the host echoed the guest's datagram.
    assert!(
        udp_echoed.load(Ordering::SeqCst) >= 1,
        "the host saw no datagram"
    );
    // vsock: 1 MiB echoed, the host's connection answered, the socket gone.
    let host = host.unwrap_or_else(|e| panic!("{e}\n{}", f.describe()));
    println!("vsock host connection: {host}");
    assert_eq!(echoed.load(Ordering::SeqCst), 1 << 20);
    assert!(
        !uds.exists(),
        "the VMM must remove its vsock socket on exit"
    );
}

mod blk {
    //! virtio-blk end to end: a read-only disk with a known pattern and a
    //! read-write disk; the guest verifies the first (and that it cannot write
    //! it) and writes a pattern to the second, which the host checks here.
    use cocoon_e2e::{run_with_deadline, Artifacts};
    use std::process::Command;
    use std::time::Duration;

    /// Same rule as rootfs/devtest-init/src/blk.rs.
    pub fn pattern(seed: u64, i: u64) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 9) ^ seed) as u8
    }

    pub const RO_SEED: u64 = 0x5a;
    pub const RO_BYTES: u64 = 4 << 20;
    pub const RW_SEED: u64 = 0xc3;
    pub const RW_BYTES: u64 = 1 << 20;
    pub const RW_DISK: u64 = 4 << 20;
    pub const RW_OFFSET: u64 = 3 * 4096 + 512;
    pub const FILL: u8 = 0xee;

    #[test]
    fn missing_or_bad_backing_files_are_clear_errors() {
        let a = Artifacts::from_env();
        let dir = super::temp_dir("blk-errors");
        let cases = [
            (
                format!("path={}", dir.path().join("nope.img").display()),
                "does not exist",
            ),
            (
                format!("path={}", dir.path().display()),
                "not a regular file",
            ),
            ("path=/x,readonly=bogus".to_string(), "not on or off"),
        ];
        for (spec, want) in cases {
            let mut cmd = Command::new(&a.vmm);
            cmd.arg("--kernel").arg(&a.kernel).arg("--block").arg(&spec);
            let f = run_with_deadline(cmd, Duration::from_secs(60));
            assert_eq!(f.status.code(), Some(1), "{spec}: {}", f.describe());
            assert!(f.stderr.contains(want), "{spec}: {}", f.describe());
        }
    }
}

mod fs {
    //! virtio-fs end to end: a real virtiofsd on a temp dir, cocoon-vmm with
    //! `--fs`, the devtest init mounting the share, reading the host's file and
    //! writing one the host then checks.
    use cocoon_e2e::{run_with_deadline, Artifacts};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub const TAG: &str = "cocoonfs";
    pub const HOST_FILE_LEN: usize = 256 * 1024;
    /// `rootfs/devtest-init/src/fs.rs` `WRITE_CONTENT`.
    pub const GUEST_CONTENT: &[u8] = b"written by the cocoon guest over virtio-fs\n";

    pub fn pattern(i: usize) -> u8 {
        (i.wrapping_mul(7).wrapping_add(3) % 251) as u8
    }

    pub fn virtiofsd() -> PathBuf {
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
    pub struct Share {
        dir: PathBuf,
        pub socket: PathBuf,
        child: Option<Child>,
    }

    impl Share {
        pub fn new(name: &str) -> Share {
            let dir =
                std::env::temp_dir().join(format!("cocoon-e2e-fs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("shared")).unwrap();
            let socket = dir.join("vfsd.sock");
            Share {
                dir,
                socket,
                child: None,
            }
        }

        pub fn shared(&self) -> PathBuf {
            self.dir.join("shared")
        }

        pub fn start_virtiofsd(&mut self) {
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
        pub fn stop_virtiofsd(&mut self) {
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

    pub fn vmm(a: &Artifacts, cmdline: &str, fs: &str) -> Command {
        let mut cmd = a.devtest_vmm(cmdline);
        cmd.args(["--memory", "256", "--fs", fs]);
        cmd
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
}

mod net {
    //! virtio-net end to end. Everything happens inside a network namespace this
    //! test creates (`cocoon-e2e-<pid>`): the TAP, its address, a UDP echo
    //! server and cocoon-vmm itself (`ip netns exec`), so no packet can leave
    //! it. The guest configures eth0, checks its MAC and gets its datagram
    //! echoed back. The namespace (and with it the TAP) is deleted afterwards.
    use cocoon_e2e::{run_with_deadline, Artifacts};
    use std::net::UdpSocket;
    use std::os::unix::io::AsRawFd;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    pub const TAP: &str = "ctap0";
    pub const HOST_IP: &str = "10.0.2.1";
    pub const GUEST_IP: &str = "10.0.2.2/24";
    pub const PORT: u16 = 7777;
    pub const MAC: &str = "02:c0:c0:00:00:2a";

    pub fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A network namespace with a TAP, deleted on drop.
    pub struct Netns(pub String);

    impl Netns {
        pub fn new() -> Self {
            let ns = Netns(format!("cocoon-e2e-{}", std::process::id()));
            let _ = ip(&["netns", "del", &ns.0]);
            ip(&["netns", "add", &ns.0]).unwrap();
            let n = ns.0.as_str();
            for cmd in [
                vec!["netns", "exec", n, "ip", "link", "set", "lo", "up"],
                vec![
                    "netns", "exec", n, "ip", "tuntap", "add", TAP, "mode", "tap",
                ],
                vec![
                    "netns",
                    "exec",
                    n,
                    "ip",
                    "addr",
                    "add",
                    "10.0.2.1/24",
                    "dev",
                    TAP,
                ],
                vec!["netns", "exec", n, "ip", "link", "set", TAP, "up"],
            ] {
                ip(&cmd).unwrap();
            }
            ns
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = ip(&["netns", "exec", &self.0, "ip", "link", "del", TAP]);
            let _ = ip(&["netns", "del", &self.0]);
        }
    }

    /// A UDP echo server on HOST_IP:PORT in `ns`, on its own thread (network
    /// namespaces are per thread). Returns the stop flag, the echo count and
    /// the thread.
    pub fn udp_echo(
        ns: &str,
    ) -> (
        Arc<AtomicBool>,
        Arc<AtomicUsize>,
        std::thread::JoinHandle<()>,
    ) {
        let path = format!("/var/run/netns/{ns}");
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace fd we opened.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let sock = UdpSocket::bind((HOST_IP, PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("udp echo server did not start");
        (stop, count, handle)
    }

    #[test]
    fn missing_tap_and_bad_mac_are_clear_errors() {
        let a = Artifacts::from_env();
        let ns = Netns::new();
        for (spec, want) in [
            ("tap=nope0", "does not exist"),
            ("tap=lo", "not a single-queue TAP"),
            ("tap=ctap0,mac=01:00:5e:00:00:01", "not a unicast MAC"),
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns.0])
                .arg(&a.vmm)
                .arg("--kernel")
                .arg(&a.kernel)
                .arg("--net")
                .arg(spec);
            let f = run_with_deadline(cmd, Duration::from_secs(60));
            assert_eq!(f.status.code(), Some(1), "{spec}: {}", f.describe());
            assert!(f.stderr.contains(want), "{spec}: {}", f.describe());
        }
    }
}

mod vsock {
    //! virtio-vsock end to end: the guest echoes 1 MiB through a host echo
    //! server on `<uds>_52` (guest-initiated) and answers a host connection
    //! made with `CONNECT 5000` on the VMM's socket (host-initiated).
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use cocoon_e2e::{run_with_deadline, Artifacts};

    pub const ECHO_PORT: u32 = 52;
    pub const GUEST_PORT: u32 = 5000;

    /// Echo every connection on `<uds>_52` until `stop`; counts echoed bytes.
    pub fn echo_server(
        path: PathBuf,
        stop: Arc<AtomicBool>,
        echoed: Arc<AtomicUsize>,
    ) -> JoinHandle<()> {
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let echoed = echoed.clone();
                        s.set_nonblocking(false).unwrap();
                        workers.push(std::thread::spawn(move || {
                            let mut w = s.try_clone().unwrap();
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if w.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                        echoed.fetch_add(n, Ordering::SeqCst);
                                    }
                                }
                            }
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => break,
                }
            }
            drop(workers);
        })
    }

    pub fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b)? {
                0 => return Err(ErrorKind::UnexpectedEof.into()),
                _ if b[0] == b'\n' => break,
                _ => line.push(b[0]),
            }
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// One host-initiated attempt: Ok(message) once the guest answered.
    pub fn host_attempt(uds: &Path) -> std::io::Result<String> {
        let mut s = UnixStream::connect(uds)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())?;
        let ok = read_line(&mut s)?;
        let port: u32 = ok
            .strip_prefix("OK ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad answer {ok:?}")))?;
        assert!(port >= 1 << 30, "host port {port} below 2^30");
        s.write_all(b"hello from host\n")?;
        let answer = read_line(&mut s)?;
        assert_eq!(answer, "hello from guest");
        Ok(format!("{ok}; guest said {answer:?}"))
    }

    /// Retry until the guest listens (the VMM closes the socket until then).
    pub fn host_client(uds: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<Result<String, String>> {
        std::thread::spawn(move || {
            let mut last = String::from("never tried");
            while !stop.load(Ordering::SeqCst) {
                match host_attempt(&uds) {
                    Ok(m) => return Ok(m),
                    Err(e) => last = e.to_string(),
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(format!("no host-initiated connection; last error: {last}"))
        })
    }

    #[test]
    fn vsock_flag_errors_name_the_problem() {
        let a = Artifacts::from_env();
        let dir = super::temp_dir("vsock-flags");
        let run = |arg: String| {
            let mut cmd = Command::new(&a.vmm);
            cmd.arg("--kernel").arg(&a.kernel).arg("--vsock").arg(arg);
            run_with_deadline(cmd, Duration::from_secs(60))
        };
        let f = run(format!("cid=3,uds={}/missing/v.sock", dir.path().display()));
        assert_eq!(f.status.code(), Some(1), "{}", f.describe());
        assert!(f.stderr.contains("does not exist"), "{}", f.describe());
        let f = run("cid=1,uds=/tmp/x.sock".into());
        assert_eq!(f.status.code(), Some(1), "{}", f.describe());
        assert!(f.stderr.contains("reserved"), "{}", f.describe());
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let f = run(format!("cid=3,uds={}", file.display()));
        assert_eq!(f.status.code(), Some(1), "{}", f.describe());
        assert!(f.stderr.contains("not a socket"), "{}", f.describe());
    }
}
