//! `--seccomp audit`: each thread's filter sends what is not on its list
//! to a user-notification listener (`SECCOMP_RET_USER_NOTIF`) instead of
//! killing; an unfiltered audit thread answers every notification with
//! `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (the call runs as if allowed) and
//! then logs each (thread kind, system call) once, with the first call's
//! first three arguments:
//! `seccomp audit: a vcpu thread made ioctl (16), which its list lacks (...)`.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use seccompiler::SeccompAction;
use vmm_sys_util::eventfd::EventFd;

use super::{install_raw, program, syscall_name, SeccompError, ThreadKind};

/// The marker return value compiled in, patched to `SECCOMP_RET_USER_NOTIF`.
const MARKER: u32 = 0x0ca7;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// `_IOWR('!', 0, struct seccomp_notif)` (80 bytes).
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
/// `_IOWR('!', 1, struct seccomp_notif_resp)` (24 bytes).
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;

struct Listeners {
    fds: Mutex<Vec<(OwnedFd, ThreadKind)>>,
    wake: EventFd,
}

static LISTENERS: OnceLock<Listeners> = OnceLock::new();

/// Starts the audit thread (before any filter exists).
pub fn start() -> io::Result<()> {
    let l = Listeners {
        fds: Mutex::new(Vec::new()),
        wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
    };
    if LISTENERS.set(l).is_err() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    std::thread::Builder::new()
        .name("seccomp-audit".into())
        .spawn(serve)?;
    Ok(())
}

/// The program of `kind` with every mismatch turned into a user notification.
pub fn notify_program(kind: ThreadKind) -> Result<seccompiler::BpfProgram, SeccompError> {
    let mut prog = program(kind, SeccompAction::Trace(MARKER))?;
    for insn in prog.iter_mut() {
        // BPF_RET | BPF_K returning the marker.
        if insn.code == 0x06 && insn.k == SECCOMP_RET_TRACE | MARKER {
            insn.k = SECCOMP_RET_USER_NOTIF;
        }
    }
    Ok(prog)
}

/// Installs `kind`'s filter in audit form on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(l) = LISTENERS.get() else {
        return Err(SeccompError::Audit(io::Error::other(
            "the audit thread is not running",
        )));
    };
    let prog = notify_program(kind)?;
    let fd = install_raw(kind, &prog, SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
    // SAFETY: the kernel just returned this new listener fd; we own it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    l.fds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((fd, kind));
    let _ = l.wake.write(1);
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// Receives one notification and lets the call continue; the system call
/// number and its first three arguments, or `None` when the notifying
/// thread went away meanwhile.
fn answer(fd: RawFd) -> Option<(i32, [u64; 3])> {
    let mut n = Notif::default();
    // SAFETY: RECV fills a struct seccomp_notif, which `Notif` mirrors.
    if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &mut n as *mut Notif) } != 0 {
        return None;
    }
    let resp = NotifResp {
        id: n.id,
        val: 0,
        error: 0,
        flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
    };
    // SAFETY: SEND reads a struct seccomp_notif_resp, which `NotifResp` mirrors.
    unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp as *const NotifResp) };
    Some((n.data.nr, [n.data.args[0], n.data.args[1], n.data.args[2]]))
}

fn serve() {
    let Some(l) = LISTENERS.get() else { return };
    let mut seen = BTreeSet::new();
    let mut polled: Vec<libc::pollfd> = Vec::new();
    let mut kinds: Vec<ThreadKind> = Vec::new();
    loop {
        polled.clear();
        kinds.clear();
        polled.push(libc::pollfd {
            fd: l.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        for (fd, kind) in l.fds.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            polled.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            kinds.push(*kind);
        }
        // SAFETY: `polled` is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if rc < 0 {
            continue;
        }
        if polled[0].revents != 0 {
            let _ = l.wake.read();
        }
        let mut gone = Vec::new();
        for (p, kind) in polled[1..].iter().zip(&kinds) {
            if p.revents & libc::POLLIN != 0 {
                // Answer first: the caller may hold a lock logging needs.
                if let Some((nr, a)) = answer(p.fd) {
                    if seen.insert((*kind, nr)) {
                        tracing::warn!(
                            "seccomp audit: a {kind} thread made {} ({nr}), which its list lacks \
                             (first call's arguments {:#x}, {:#x}, {:#x})",
                            syscall_name(i64::from(nr)).unwrap_or("an unknown system call"),
                            a[0],
                            a[1],
                            a[2],
                        );
                    }
                }
            } else if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // Every thread of the filter exited.
                gone.push(p.fd);
            }
        }
        if !gone.is_empty() {
            l.fds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(fd, _)| !gone.contains(&fd.as_raw_fd()));
        }
    }
}
