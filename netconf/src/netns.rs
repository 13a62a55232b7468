//! Running code inside another network namespace: on a thread of its own,
//! which joins the namespace and ends with the work (a network namespace
//! is per thread, so nothing else of the process is moved, and no thread
//! of a pool is left in the wrong one).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `NSFS_MAGIC`: what `fstatfs` says of a namespace file.
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening the network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace (a namespace file that is no longer mounted?)")]
    NotNetns { path: PathBuf },
    #[error("joining the network namespace {path}")]
    Join {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread working in the network namespace {0} panicked")]
    Panicked(PathBuf),
}

impl NetnsError {
    /// The namespace does not exist (any more).
    pub fn is_gone(&self) -> bool {
        match self {
            NetnsError::Open { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            NetnsError::NotNetns { .. } => true,
            _ => false,
        }
    }
}

/// Runs `work` on a new thread inside the network namespace at `path`
/// (`/var/run/netns/NAME`, `/proc/PID/ns/net`) and returns its result.
pub fn in_netns<T, F>(path: &Path, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = path.to_path_buf();
    let file = std::fs::File::open(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    // SAFETY: statfs is plain data, filled by fstatfs on an fd we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid out pointer.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if rc != 0 || st.f_type != NSFS_MAGIC {
        return Err(NetnsError::NotNetns { path });
    }
    let p = path.clone();
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace fd we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Join {
                path: p,
                source: std::io::Error::last_os_error(),
            });
        }
        drop(file);
        Ok(work())
    });
    handle.join().map_err(|_| NetnsError::Panicked(path))?
}
