//! virtio-fs (device id 26) through a vhost-user frontend to virtiofsd.
//!
//! The backend (virtiofsd) processes the queues itself: we hand it the
//! memfd-backed guest memory (`set_mem_table`), the ring addresses, a kick
//! EventFd per queue (registered with KVM as an ioeventfd on QueueNotify,
//! datamatch = queue index, so kicks never leave the kernel) and a call
//! EventFd (the device's irqfd). We own the configuration space (tag and
//! number of request queues) and the lifecycle.
//!
//! A backend that dies is reported, not hung on: every request has a
//! deadline (`watchdog.rs`), the device thread watches the socket for hang-up, and from then on
//! the device is broken: the worker takes the queues over and completes
//! every guest request with `EIO` (`request.rs`), so the guest sees I/O
//! errors instead of hanging, and the VMM keeps running.
//!
//! | file | role |
//! | --- | --- |
//! | `config.rs` | `FsConfig`, `--fs` parsing, the tag and the config space |
//! | `backend.rs` | the vhost-user connection: negotiation, memory table, vrings |
//! | `device.rs` | `Fs`, the `VirtioDevice` |
//! | `event_handler.rs` | the device thread's handler: watches the backend, serves EIO once it died |
//! | `request.rs` | FUSE header parsing and EIO completion of guest chains |
//! | `watchdog.rs` | closes the socket when a vhost-user request takes too long |

pub mod backend;
pub mod config;
pub mod device;
pub mod event_handler;
pub mod persist;
pub mod request;
pub mod watchdog;

#[cfg(test)]
pub mod test_utils;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use backend::{connect_socket, Connection};
pub use config::{parse_fs_options, FsConfig, Tag};
pub use device::Fs;

pub use virtio_bindings::virtio_ids::VIRTIO_ID_FS;

/// Errors of the fs device and its vhost-user backend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsError {
    /// The tag is not UTF-8.
    #[error("the fs tag is not valid UTF-8")]
    TagNotUtf8,
    /// The tag is empty.
    #[error("the fs tag is empty")]
    TagEmpty,
    /// The tag is longer than the config space field.
    #[error("the fs tag is {0} bytes long; at most 36 bytes fit")]
    TagTooLong(usize),
    /// The tag contains a NUL byte.
    #[error("the fs tag contains a NUL byte")]
    TagHasNul,
    /// Request queue count out of range.
    #[error("{0} request queues asked for; use queues=1..=64 (virtiofsd 1.14 serves 1)")]
    BadQueues(u32),
    /// Queue size not a power of two or too large.
    #[error("queue size {0} is not a power of two in 2..=32768; use queue_size=1024 for example")]
    BadQueueSize(u32),
    /// A malformed `--fs` value.
    #[error("bad --fs value: {0} (expected tag=<tag>,socket=<path>[,queues=N][,queue_size=N])")]
    Option(String),
    /// The socket path does not exist.
    #[error("vhost-user socket {0} does not exist; start virtiofsd with --socket-path {0} first")]
    SocketMissing(PathBuf),
    /// Nothing accepts connections on the socket.
    #[error("nothing accepts connections on vhost-user socket {0}; is virtiofsd running?")]
    SocketRefused(PathBuf),
    /// Any other connection failure.
    #[error("cannot connect to vhost-user socket {path}: {reason}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A vhost-user request failed (the backend died, timed out or refused).
    #[error("vhost-user {request} failed: {reason}")]
    Vhost {
        /// The request.
        request: &'static str,
        /// What the vhost crate said.
        reason: String,
    },
    /// The backend lacks something the device needs.
    #[error("the vhost-user backend does not offer {0}")]
    MissingFeature(&'static str),
    /// The backend serves fewer queues than configured.
    #[error("queues={requested} needs {} vrings (hiprio + requests) but the backend serves {backend}; virtiofsd 1.14 serves 2, so use queues=1", requested + 1)]
    TooFewQueues {
        /// Request queues configured.
        requested: usize,
        /// Vrings the backend has.
        backend: u64,
    },
    /// A guest memory region the backend cannot map.
    #[error("guest memory region at {0:#x} is not file-backed; vhost-user needs memfd guest RAM")]
    MemoryNotShared(u64),
    /// Too many guest memory regions for one SET_MEM_TABLE.
    #[error("guest memory has {0} regions; vhost-user takes at most 32")]
    TooManyRegions(usize),
    /// A queue the driver set up does not lie in guest memory.
    #[error("queue {0} rings are outside guest memory")]
    QueueOutsideMemory(usize),
    /// Creating an EventFd, epoll or thread failed.
    #[error("cannot create the fs {what}: {reason}")]
    Resource {
        /// What.
        what: &'static str,
        /// The OS error.
        reason: String,
    },
}

impl FsError {
    pub(crate) fn resource(what: &'static str) -> impl FnOnce(std::io::Error) -> FsError {
        move |e| FsError::Resource {
            what,
            reason: e.to_string(),
        }
    }
}
