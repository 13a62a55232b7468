//! A process's stdio: the pipe ends (or pty master) the agent keeps until a
//! stream connection attaches to them.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("creating a pipe")]
    Pipe(#[source] nix::Error),
    #[error("opening /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("resizing the terminal")]
    Resize(#[source] nix::Error),
    #[error("writing EOF to the terminal")]
    TtyEof(#[source] nix::Error),
}

/// Which streams the caller will attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioRequest {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

/// The agent's end of stdin.
pub enum StdinSlot {
    /// Not attached yet: the pipe's write end.
    Pending(OwnedFd),
    /// A stream copies into the pipe; notified to close it.
    Attached(Arc<Notify>),
    Closed,
}

/// What a process's stream connections attach to.
pub struct StreamSlots {
    pub request: StdioRequest,
    pub stdin: Mutex<StdinSlot>,
    pub stdout: Mutex<Option<OwnedFd>>,
    pub stderr: Mutex<Option<OwnedFd>>,
    /// The pty master, set once the console socket delivered it.
    pub tty: OnceLock<Arc<OwnedFd>>,
    pub tty_attached: Mutex<bool>,
}

/// The child's three descriptors and the agent's slots.
pub struct StdioSetup {
    pub child: [OwnedFd; 3],
    pub slots: Arc<StreamSlots>,
}

fn dev_null(write: bool) -> Result<OwnedFd, StdioError> {
    let f: File = OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(StdioError::DevNull)?;
    Ok(f.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)
}

/// Pipes for the requested streams, /dev/null for the others. With a
/// terminal all three are /dev/null: the pty replaces them.
pub fn make_stdio(req: StdioRequest) -> Result<StdioSetup, StdioError> {
    let (child_in, stdin) = if req.stdin && !req.terminal {
        let (r, w) = pipe()?;
        (r, StdinSlot::Pending(w))
    } else {
        (dev_null(false)?, StdinSlot::Closed)
    };
    let out = |wanted: bool| -> Result<(OwnedFd, Option<OwnedFd>), StdioError> {
        if wanted && !req.terminal {
            let (r, w) = pipe()?;
            Ok((w, Some(r)))
        } else {
            Ok((dev_null(true)?, None))
        }
    };
    let (child_out, stdout) = out(req.stdout)?;
    let (child_err, stderr) = out(req.stderr)?;
    Ok(StdioSetup {
        child: [child_in, child_out, child_err],
        slots: Arc::new(StreamSlots {
            request: req,
            stdin: Mutex::new(stdin),
            stdout: Mutex::new(stdout),
            stderr: Mutex::new(stderr),
            tty: OnceLock::new(),
            tty_attached: Mutex::new(false),
        }),
    })
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

impl StreamSlots {
    /// Gives the process EOF on stdin (writes ^D to a terminal).
    pub fn close_stdin(&self) -> Result<(), StdioError> {
        if let Some(master) = self.tty.get() {
            return match nix::unistd::write(master.as_fd(), &[4u8]) {
                Ok(_) | Err(nix::Error::EIO) => Ok(()),
                Err(e) => Err(StdioError::TtyEof(e)),
            };
        }
        let mut slot = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let StdinSlot::Attached(n) = &*slot {
            n.notify_one();
        }
        *slot = StdinSlot::Closed;
        Ok(())
    }

    /// Sets the terminal size; the kernel sends SIGWINCH to the foreground
    /// process group.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), StdioError> {
        let master = self.tty.get().ok_or(StdioError::NoTerminal)?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which
        // points to a live local; the fd is an open pty master.
        unsafe { set_winsize(master.as_raw_fd(), &ws) }.map_err(StdioError::Resize)?;
        Ok(())
    }

    /// Drops every descriptor still held (the process is being removed).
    pub fn close_all(&self) {
        let _ = self.close_stdin();
        self.stdout.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
