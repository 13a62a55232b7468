//! Receives a pty master from libcontainer's console socket (the runc
//! protocol: one SCM_RIGHTS message on a Unix socket the runtime listens on).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("binding console socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("the container did not connect to its console socket")]
    NotConnected(#[source] std::io::Error),
    #[error("receiving the pty master")]
    Recv(#[source] nix::Error),
    #[error("the console message carried no descriptor")]
    NoFd,
}

/// A console socket bound for one process, removed when dropped.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> Result<Self, ConsoleError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| ConsoleError::Bind(path.into(), e))?;
        Ok(ConsoleSocket {
            path: path.into(),
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the master that the (already built) container sent. Never
    /// blocks: the helper has returned, so the message is queued or absent.
    pub fn receive(&self) -> Result<OwnedFd, ConsoleError> {
        self.listener
            .set_nonblocking(true)
            .map_err(ConsoleError::NotConnected)?;
        let (conn, _) = self.listener.accept().map_err(ConsoleError::NotConnected)?;
        conn.set_nonblocking(false)
            .map_err(ConsoleError::NotConnected)?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(ConsoleError::Recv)?;
        for c in msg.cmsgs().map_err(ConsoleError::Recv)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                let mut fds = fds.into_iter();
                if let Some(fd) = fds.next() {
                    for extra in fds {
                        // SAFETY: the kernel just installed this descriptor
                        // for us and nothing else owns it.
                        drop(unsafe { OwnedFd::from_raw_fd(extra) });
                    }
                    // SAFETY: as above; ownership moves to the OwnedFd.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(ConsoleError::NoFd)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
