//! virtio-vsock, both directions:
//! 1. the guest connects to the host (CID 2) on `cocoon.vsock.port`, where
//!    the test runs an echo server on `<uds>_<port>`, sends
//!    `cocoon.vsock.bytes` (default 1 MiB) of a pseudo-random pattern and
//!    reads it back; the checksums must match;
//! 2. the guest listens on `cocoon.vsock.listen`; the host connects with
//!    `CONNECT <port>` on the uds, sends `hello from host\n` and expects
//!    `hello from guest\n`.
//!
//! The check reports ok only after both.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::params::Params;

const VMADDR_CID_HOST: u32 = 2;
const VMADDR_CID_ANY: u32 = u32::MAX;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn last_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

/// A new vsock stream socket, owned by the returned File.
fn socket() -> Result<(RawFd, File), String> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err("socket(AF_VSOCK)"));
    }
    set_timeouts(fd);
    // SAFETY: fd is a fresh descriptor that only this File owns.
    Ok((fd, unsafe { File::from_raw_fd(fd) }))
}

fn set_timeouts(fd: RawFd) {
    let tv = libc::timeval {
        tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: valid fd, option value is a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

/// Connect to the host's `port`, retrying briefly.
pub fn connect_host(port: u32) -> Result<File, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (fd, f) = socket()?;
        let a = addr(VMADDR_CID_HOST, port);
        // SAFETY: `a` is a valid sockaddr_vm and its size is passed.
        let r = unsafe {
            libc::connect(
                fd,
                &a as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(f);
        }
        let e = last_err(&format!("connect to host port {port}"));
        if Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Listen on guest `port`.
pub fn listen(port: u32) -> Result<(RawFd, File), String> {
    let (fd, f) = socket()?;
    let a = addr(VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm and its size is passed.
    let r = unsafe {
        libc::bind(
            fd,
            &a as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(last_err(&format!("bind vsock port {port}")));
    }
    // SAFETY: valid listening-capable socket.
    if unsafe { libc::listen(fd, 8) } != 0 {
        return Err(last_err("listen"));
    }
    Ok((fd, f))
}

/// Accept one connection (waits up to IO_TIMEOUT).
pub fn accept(listen_fd: RawFd) -> Result<File, String> {
    let mut pfd = libc::pollfd {
        fd: listen_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, IO_TIMEOUT.as_millis() as i32) };
    if n <= 0 {
        return Err(format!(
            "no host connection within {}s",
            IO_TIMEOUT.as_secs()
        ));
    }
    // SAFETY: valid listening socket; we do not need the peer address.
    let fd = unsafe {
        libc::accept4(
            listen_fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err("accept"));
    }
    set_timeouts(fd);
    // SAFETY: fd is the new connection, owned only by this File.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// xorshift64 pattern bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a 64.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn echo_round_trip(port: u32, bytes: usize) -> Result<String, String> {
    let conn = connect_host(port)?;
    let mut writer = conn.try_clone().map_err(|e| format!("dup: {e}"))?;
    let data = pattern(bytes, 0x5eed_cafe);
    let sent_sum = checksum(&data);
    let start = Instant::now();
    let w = std::thread::spawn(move || writer.write_all(&data).map_err(|e| e.to_string()));
    let mut back = vec![0u8; bytes];
    let mut reader = conn;
    let read = reader.read_exact(&mut back);
    let wrote = w.join().map_err(|_| "writer thread panicked".to_string())?;
    wrote.map_err(|e| format!("sending {bytes} bytes: {e}"))?;
    read.map_err(|e| format!("reading {bytes} bytes back: {e}"))?;
    let got_sum = checksum(&back);
    if got_sum != sent_sum {
        let first = back
            .iter()
            .zip(pattern(bytes, 0x5eed_cafe))
            .position(|(a, b)| *a != b);
        return Err(format!(
            "echo checksum {got_sum:#x} != sent {sent_sum:#x} (first difference at {first:?})"
        ));
    }
    Ok(format!(
        "echoed {bytes} bytes via host port {port} in {} ms, checksum {sent_sum:#x}",
        start.elapsed().as_millis()
    ))
}

fn host_initiated(listen_fd: RawFd, port: u32) -> Result<String, String> {
    let mut conn = accept(listen_fd)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 256 {
        match conn.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err("host closed before its message".into()),
            Err(e) => return Err(format!("reading the host's message: {e}")),
        }
    }
    if line != b"hello from host" {
        return Err(format!(
            "host sent {:?}",
            String::from_utf8_lossy(&line).into_owned()
        ));
    }
    conn.write_all(b"hello from guest\n")
        .map_err(|e| format!("answering the host: {e}"))?;
    Ok(format!(
        "host connection on guest port {port} exchanged messages"
    ))
}

fn num(p: &Params, key: &str) -> Result<Option<u64>, String> {
    p.get("vsock", key)
        .map(|v| {
            v.parse()
                .map_err(|_| format!("cocoon.vsock.{key}={v} is not a number"))
        })
        .transpose()
}

pub fn check(p: &Params) -> Result<String, String> {
    if p.get("vsock", "bench_mib").is_some() {
        return crate::vsock_bench::run(p);
    }
    let port = num(p, "port")?.ok_or("missing cocoon.vsock.port=")? as u32;
    let listen_port = num(p, "listen")?.ok_or("missing cocoon.vsock.listen=")? as u32;
    let bytes = num(p, "bytes")?.unwrap_or(1 << 20) as usize;
    // Listen first so the host's CONNECT can succeed while we echo.
    let (listen_fd, _listener) = listen(listen_port)?;
    let echo = echo_round_trip(port, bytes)?;
    let host = host_initiated(listen_fd, listen_port)?;
    Ok(format!("{echo}; {host}"))
}
