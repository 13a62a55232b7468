//! Host filesystem operations below a pod directory that a guest cannot
//! steer: every path is resolved beneath a directory fd without following
//! symlinks (`openat2`), and binds are made with the new mount API so that
//! their flags hold before the mount is visible anywhere.
//!
//! The guest writes into the share through virtiofsd; everything it writes
//! is hostile. Nothing here resolves a path inside the pod directory by
//! string.

mod dir;
mod mount;

pub use dir::Dir;
pub use mount::{DetachedMount, MountAttr, Propagation};

#[derive(Debug, thiserror::Error)]
pub enum HostFsError {
    #[error("{op} {path}")]
    Sys {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: a symlink or another mount is in the way (refused to follow it)")]
    Unsafe {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a single path component")]
    BadName(String),
}

/// Builds the error for a failed system call on `path`: the errnos that a
/// refused symlink, magic link or mount crossing produce get their own
/// variant, so that the message says what was in the way.
fn sys_err(
    op: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> HostFsError {
    let path = path.to_string();
    move |source| match source.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => HostFsError::Unsafe { path, source },
        _ => HostFsError::Sys { op, path, source },
    }
}

fn last_os_error<T>(op: &'static str, path: impl std::fmt::Display) -> Result<T, HostFsError> {
    Err(sys_err(op, path)(std::io::Error::last_os_error()))
}
