//! The host side of the vsock device: the backend traits, and the error
//! type device and backends share.

use std::os::unix::io::RawFd;

use super::packet::{PacketError, VsockPacket};

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("vsock guest cid {0} is reserved; use 3 or more")]
    BadCid(u64),
    /// A descriptor chain or header from the guest is malformed.
    #[error("malformed vsock packet")]
    Packet(#[from] PacketError),
    /// The backend cannot take this packet now; retry after rx progress.
    #[error("vsock backend is busy")]
    Busy,
    /// The backend has no packet for the guest.
    #[error("vsock backend has nothing to send")]
    NoData,
    /// The queue state in guest memory is broken.
    #[error("vsock queue {0} is broken")]
    Queue(usize),
    /// Creating an EventFd or epoll instance failed.
    #[error("cannot create {what}")]
    Sys {
        /// What.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Moving packets between the device and the host side.
pub trait VsockChannel {
    /// Fill `pkt` (its header and up to `pkt.buf.len()` data bytes) with the
    /// next packet for the guest. `Err(NoData)` when there is none.
    fn recv_pkt(&mut self, pkt: &mut VsockPacket) -> Result<(), VsockError>;
    /// Take a packet from the guest. `Err(Busy)` leaves it on the queue.
    fn send_pkt(&mut self, pkt: &VsockPacket) -> Result<(), VsockError>;
    /// Whether `recv_pkt` may have something.
    fn has_pending_rx(&self) -> bool;
}

/// A backend's file descriptor that the device thread polls.
pub trait VsockEpollListener {
    /// The fd to poll for input.
    fn polled_fd(&self) -> RawFd;
    /// Called when `polled_fd` is readable (and on timeouts).
    fn notify(&mut self);
    /// The longest the device thread may sleep before calling `notify`
    /// again (for connection timeouts); `None` = until an event.
    fn poll_timeout(&self) -> Option<std::time::Duration>;
}

/// A vsock backend: the host side of every guest connection.
pub trait VsockBackend: VsockChannel + VsockEpollListener + Send + 'static {
    /// The guest CID the backend checks packets against.
    fn set_guest_cid(&mut self, cid: u64);
    /// Drop every connection (device reset); keep listening.
    fn reset(&mut self);
    /// The guest was restored from a snapshot: it may still hold
    /// connections from its template's backend, so new connections must
    /// not reuse their port numbers.
    fn restoring(&mut self) {}
}
