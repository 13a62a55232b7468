//! The fork server: a single-threaded copy of the agent that forks its
//! libcontainer helpers.
//!
//! A helper must not be a plain fork of the agent (see [`crate::helper`]:
//! the tokio runtime's other threads may hold the allocator's lock), so it
//! used to re-execute the agent's binary. In the nested test host that fork
//! of a multi-threaded process plus the exec of a 7 MB static binary took
//! 110-180 ms of every container create and exec. The fork server is forked
//! from the agent's main thread before the runtime exists, so it has one
//! thread and can fork helpers that run Rust code at once.
//!
//! Protocol, over a `SOCK_SEQPACKET` socket pair only the two share: the
//! agent sends the helper's arguments (NUL-separated, at most
//! [`MAX_REQUEST`] bytes) with five descriptors (the helper's stdout and
//! stderr files, then the process's stdin, stdout and stderr); the server
//! forks the helper with `CLONE_PARENT`, so it is the agent's child exactly
//! like an exec'd helper (the agent's reaper collects its status), closes
//! its copies of the descriptors and answers with the helper's pid, or
//! with `-errno`. The server exits when the agent's end closes, or with
//! the agent (`PR_SET_PDEATHSIG`). If it is gone, the agent falls back to
//! re-executing itself.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// The largest request: the helper's arguments.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Descriptors that travel with a request.
pub const REQUEST_FDS: usize = 5;

/// What the helper runs in the forked child: its arguments in, its exit
/// code out.
pub type HelperMain = fn(&[String]) -> i32;

#[derive(Debug, thiserror::Error)]
pub enum ForkServerError {
    #[error("creating the fork server's socket pair")]
    Socket(#[source] nix::Error),
    #[error("forking the fork server")]
    Fork(#[source] std::io::Error),
    #[error("a helper argument contains a NUL byte")]
    NulInArgument,
    #[error("the helper's arguments are {0} bytes, over the limit of {MAX_REQUEST}")]
    TooLong(usize),
    #[error("talking to the fork server")]
    Transport(#[source] nix::Error),
    #[error("the fork server is gone")]
    Gone,
    #[error("the fork server took the request but did not answer")]
    NoAnswer,
    #[error("the fork server's answer is {0} bytes, not 4")]
    BadAnswer(usize),
    #[error("the fork server could not fork the helper")]
    ForkHelper(#[source] std::io::Error),
}

/// The agent's end of the fork server.
pub struct ForkServer {
    sock: Mutex<OwnedFd>,
    pid: i32,
}

/// Encodes the helper's arguments: each followed by a NUL.
pub fn encode_args(args: &[String]) -> Result<Vec<u8>, ForkServerError> {
    let mut out = Vec::new();
    for a in args {
        if a.as_bytes().contains(&0) {
            return Err(ForkServerError::NulInArgument);
        }
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    if out.len() > MAX_REQUEST {
        return Err(ForkServerError::TooLong(out.len()));
    }
    Ok(out)
}

/// Decodes [`encode_args`]' bytes; `None` unless every argument is
/// NUL-terminated UTF-8.
pub fn decode_args(bytes: &[u8]) -> Option<Vec<String>> {
    let body = bytes.strip_suffix(&[0])?;
    body.split(|b| *b == 0)
        .map(|a| String::from_utf8(a.to_vec()).ok())
        .collect()
}

impl ForkServer {
    /// Forks the server. Call while this process has a single thread (in
    /// `main`, before any runtime or thread starts): the server forks
    /// helpers that run `helper` without exec.
    pub fn start(helper: HelperMain) -> Result<Self, ForkServerError> {
        let (agent_end, server_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ForkServerError::Socket)?;
        // SAFETY: getpid has no preconditions.
        let agent = unsafe { libc::getpid() };
        // SAFETY: the caller guarantees a single thread, so the child may
        // run any code; it never returns from `serve`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(ForkServerError::Fork(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            drop(agent_end);
            serve(server_end, agent, helper);
        }
        drop(server_end);
        Ok(ForkServer {
            sock: Mutex::new(agent_end),
            pid,
        })
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Has the server fork a helper running with `args` and `fds` (its
    /// stdout and stderr files, then the process's stdin, stdout and
    /// stderr); returns the helper's pid, a child of this process. Call
    /// with the reaper's spawn guard held, as for any spawn. Only
    /// [`ForkServerError::Gone`] means that no helper can have started.
    pub fn spawn(
        &self,
        args: &[String],
        fds: [BorrowedFd<'_>; REQUEST_FDS],
    ) -> Result<i32, ForkServerError> {
        let request = encode_args(args)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let cmsg = [ControlMessage::ScmRights(&raw)];
        loop {
            match sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(&request)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => break,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => {
                    return Err(ForkServerError::Gone)
                }
                Err(e) => return Err(ForkServerError::Transport(e)),
            }
        }
        let mut answer = [0u8; 8];
        let n = loop {
            match nix::unistd::read(sock.as_raw_fd(), &mut answer) {
                Ok(n) => break n,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) => return Err(ForkServerError::NoAnswer),
                Err(e) => return Err(ForkServerError::Transport(e)),
            }
        };
        match n {
            0 => Err(ForkServerError::NoAnswer),
            4 => {
                let v = i32::from_le_bytes(answer[..4].try_into().expect("4 bytes"));
                if v > 0 {
                    Ok(v)
                } else {
                    Err(ForkServerError::ForkHelper(
                        std::io::Error::from_raw_os_error(-v),
                    ))
                }
            }
            n => Err(ForkServerError::BadAnswer(n)),
        }
    }
}

/// The server's loop; never returns.
fn serve(sock: OwnedFd, agent: libc::pid_t, helper: HelperMain) -> ! {
    set_name(b"cocoon-forksrv\0");
    // SAFETY: prctl with integer arguments; getppid has no preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != agent {
            // The agent died before the setting took effect.
            libc::_exit(0);
        }
    }
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let mut cmsg_space = nix::cmsg_space!([RawFd; REQUEST_FDS]);
        let (len, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().into_iter().flatten() {
                        if let ControlMessageOwned::ScmRights(got) = c {
                            // SAFETY: the kernel installed these descriptors
                            // in this process for us; nothing else owns them.
                            fds.extend(
                                got.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                    let truncated = msg
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    (msg.bytes, fds, truncated)
                }
                Err(nix::Error::EINTR) => continue,
                // SAFETY: _exit has no preconditions.
                Err(_) => unsafe { libc::_exit(1) },
            }
        };
        if len == 0 && fds.is_empty() {
            // The agent closed its end.
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(0) };
        }
        let answer = match (truncated, decode_args(&buf[..len]), fds.len()) {
            (false, Some(args), REQUEST_FDS) => fork_helper(&sock, &args, fds, helper),
            _ => -libc::EINVAL,
        };
        let _ = nix::unistd::write(&sock, &answer.to_le_bytes());
    }
}

/// Forks one helper as a sibling (a child of the agent); returns its pid or
/// `-errno`. The descriptors are closed here once the child has them.
fn fork_helper(sock: &OwnedFd, args: &[String], fds: Vec<OwnedFd>, helper: HelperMain) -> i32 {
    // SAFETY: a raw clone without CLONE_VM and with a null stack is fork
    // with a different parent; this process has one thread, so the child
    // may run any code. CLONE_PARENT is refused only to a global init,
    // which this server is not.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
    }
    if pid == 0 {
        // SAFETY: the server's socket is this process's copy, used no more.
        unsafe { libc::close(sock.as_raw_fd()) };
        set_name(b"cocoon-helper\0");
        let code = match place_fds(fds) {
            Ok(()) => helper(args),
            Err(e) => {
                eprintln!("helper descriptors: {e}");
                1
            }
        };
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit has no preconditions; the helper is done.
        unsafe { libc::_exit(code) };
    }
    pid as i32
}

/// In the helper: `/dev/null` on 0, the output files on 1 and 2, the
/// process's stdio on 3, 4 and 5 (what an exec'd helper gets); the
/// received descriptors may sit anywhere, 3..=5 included
/// ([`crate::fd_move::move_onto`] copes).
fn place_fds(fds: Vec<OwnedFd>) -> std::io::Result<()> {
    let raw: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
    let raw: [RawFd; REQUEST_FDS] = raw
        .try_into()
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: this forked helper has one thread; the received descriptors
    // were given up above (into_raw_fd), and 1..=5 hold nothing it needs
    // (the server's socket is closed, 1 and 2 are replaced on purpose).
    unsafe { crate::fd_move::move_onto(raw, [1, 2, 3, 4, 5]) }?;
    // Not close-on-exec: it may land on 0 itself (if 0 was free), where it
    // stays; anywhere else it is placed and closed at once (one thread).
    // SAFETY: a NUL-terminated path.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    if null < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if null != 0 {
        // SAFETY: dup2 onto stdin, which nothing here owns, then closing
        // the descriptor just opened.
        unsafe {
            let placed = libc::dup2(null, 0);
            libc::close(null);
            if placed < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn set_name(name: &[u8]) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_and_bad_ones_are_refused() {
        let args: Vec<String> = ["create", "/b/x", "/run/c", "x", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let bytes = encode_args(&args).unwrap();
        assert_eq!(decode_args(&bytes).unwrap(), args);
        assert!(matches!(
            encode_args(&["a\0b".to_string()]),
            Err(ForkServerError::NulInArgument)
        ));
        assert!(matches!(
            encode_args(&["x".repeat(MAX_REQUEST)]),
            Err(ForkServerError::TooLong(_))
        ));
        // Not NUL-terminated, or not UTF-8: refused.
        assert_eq!(decode_args(b"create"), None);
        assert_eq!(decode_args(b"\xff\0"), None);
        assert_eq!(decode_args(b""), None);
        assert_eq!(decode_args(b"\0"), Some(vec![String::new()]));
    }
}
