//! virtio-vsock end to end: the guest echoes 1 MiB through a host echo
//! server on `<uds>_52` (guest-initiated) and answers a host connection
//! made with `CONNECT 5000` on the VMM's socket (host-initiated).
#![cfg(feature = "e2e")]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cocoon_e2e::{assert_devtest_passed, run_with_deadline, Artifacts};

const DEADLINE: Duration = Duration::from_secs(240);
const ECHO_PORT: u32 = 52;
const GUEST_PORT: u32 = 5000;

/// A temp directory removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cocoon-vsock-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Echo every connection on `<uds>_52` until `stop`; counts echoed bytes.
fn echo_server(path: PathBuf, stop: Arc<AtomicBool>, echoed: Arc<AtomicUsize>) -> JoinHandle<()> {
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

fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
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
fn host_attempt(uds: &Path) -> std::io::Result<String> {
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
fn host_client(uds: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<Result<String, String>> {
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
fn vsock_echo_and_host_connection() {
    let a = Artifacts::from_env();
    let dir = temp_dir("echo");
    let uds = dir.path().join("v.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicUsize::new(0));
    let echo = echo_server(
        PathBuf::from(format!("{}_{ECHO_PORT}", uds.display())),
        stop.clone(),
        echoed.clone(),
    );
    let client = host_client(uds.clone(), stop.clone());

    let mut cmd = a.devtest_vmm(&format!(
        "quiet cocoon.test=vsock cocoon.vsock.port={ECHO_PORT} cocoon.vsock.listen={GUEST_PORT}"
    ));
    cmd.arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()));
    let start = Instant::now();
    let f = run_with_deadline(cmd, DEADLINE);
    stop.store(true, Ordering::SeqCst);
    let host = client.join().unwrap();
    echo.join().unwrap();
    println!("vsock e2e took {:?}", start.elapsed());

    assert_devtest_passed(&f, "vsock");
    let host = host.unwrap_or_else(|e| panic!("{e}\n{}", f.describe()));
    println!("host: {host}");
    assert_eq!(echoed.load(Ordering::SeqCst), 1 << 20);
    assert!(
        !uds.exists(),
        "the VMM must remove its vsock socket on exit"
    );
}

#[test]
fn vsock_flag_errors_name_the_problem() {
    let a = Artifacts::from_env();
    let dir = temp_dir("flags");
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
