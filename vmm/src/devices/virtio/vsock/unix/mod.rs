//! The production vsock backend: guest streams multiplexed onto Unix
//! sockets (Firecracker's hybrid vsock).
//!
//! - Host-initiated: connect to the listening socket, send `CONNECT
//!   <port>\n`, receive `OK <host port>\n` once the guest accepted; the
//!   socket is closed if nothing listens on that guest port.
//! - Guest-initiated: a guest connection to CID 2 port P is connected to
//!   `<uds path>_P`; RST to the guest if nothing listens there.

mod local;
mod muxer;

#[cfg(test)]
mod tests;

pub use local::{parse_connect_line, prepare_socket_path, ConnectLineError, CONNECT_LINE_MAX};
pub use muxer::VsockMuxer;

use std::path::PathBuf;

/// Errors setting up the Unix-socket backend.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The socket's directory does not exist.
    #[error("vsock socket directory {0} does not exist")]
    DirMissing(PathBuf),
    /// A live socket is already there.
    #[error("vsock socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Something that is not a socket is there.
    #[error("vsock socket path {0} exists and is not a socket; remove it or choose another path")]
    NotASocket(PathBuf),
    /// Unix socket paths are limited to 107 bytes (and guest ports add up to 11).
    #[error("vsock socket path {0} is too long for a Unix socket")]
    PathTooLong(PathBuf),
    /// A stale socket could not be removed.
    #[error("cannot remove the stale vsock socket {path}")]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding failed.
    #[error("cannot listen on vsock socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// epoll failed.
    #[error("vsock muxer epoll failed")]
    Epoll(#[source] std::io::Error),
}
