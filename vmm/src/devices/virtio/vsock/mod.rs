//! virtio-vsock (device id 19) with a hybrid Unix-socket backend, after
//! Firecracker's design (`docs/vsock.md`): the host side of every guest
//! stream is a Unix socket.
//!
//! - `packet.rs`: the 44-byte header (`parse_header`, the fuzz entry
//!   point) and reading/writing packets from/to descriptor chains.
//! - `device.rs`: `Vsock<B>`, the `VirtioDevice`, and `VsockCore<B>`, which
//!   moves packets between the queues and a `VsockBackend`.
//! - `worker.rs`: the device thread (epoll over the queue EventFds, the
//!   backend's fd and a stop EventFd).
//! - `csm/`: one connection's state machine and its bounded tx buffer.
//! - `unix/`: the production backend, `VsockMuxer`, over Unix sockets.
//! - `test_utils.rs`: descriptor-chain builders and a `TestBackend`.
//!
//! Flow control: each connection advertises a 64 KiB receive buffer
//! (`buf_alloc`) to the guest, which is exactly the bounded tx buffer in
//! front of the host socket, so a guest that keeps to its credit can never
//! make it grow; host data is read from the socket only into a guest rx
//! buffer and only as far as the guest's credit goes.

pub mod csm;
pub mod device;
pub mod packet;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod unix;
mod worker;

#[cfg(test)]
mod tests;

use std::os::unix::io::RawFd;

pub use device::{Vsock, VsockCore, RESET_ACK_LIMIT};
pub use packet::{parse_header, PacketError, VsockHeader, VsockPacket};
pub use unix::{MuxerError, VsockMuxer};

/// virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Queue indices.
pub const RXQ: usize = 0;
/// Guest-to-host packets.
pub const TXQ: usize = 1;
/// Event queue (transport reset events; unused here).
pub const EVQ: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `virtio_vsock_event.id` of a transport reset (virtio 1.2 §5.10.6.8).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// The host's CID.
pub const VSOCK_HOST_CID: u64 = 2;
/// Smallest CID a guest may have.
pub const MIN_GUEST_CID: u64 = 3;
/// Largest data payload of one packet (and the per-connection buffer).
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// Per-connection buffer for guest-to-host data (advertised as buf_alloc).
pub const CONN_TX_BUF_SIZE: u32 = 64 * 1024;
/// Send a credit update when the guest's view of our free space drops below this.
pub const CONN_CREDIT_UPDATE_THRESHOLD: u32 = 4 * 1024;
/// Most simultaneous connections (including host connections still in the
/// `CONNECT` handshake).
pub const MAX_CONNECTIONS: usize = 1023;
/// How long a host-initiated REQUEST waits for the guest's RESPONSE, and
/// a SHUTDOWN for the guest's RST.
pub const CONN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Packet types and operations (virtio 1.2 §5.10.6).
pub mod uapi {
    /// Stream socket.
    pub const VSOCK_TYPE_STREAM: u16 = 1;
    /// Connection request.
    pub const OP_REQUEST: u16 = 1;
    /// Connection accepted.
    pub const OP_RESPONSE: u16 = 2;
    /// Connection reset.
    pub const OP_RST: u16 = 3;
    /// Shutdown (flags say which directions).
    pub const OP_SHUTDOWN: u16 = 4;
    /// Data.
    pub const OP_RW: u16 = 5;
    /// Credit announcement.
    pub const OP_CREDIT_UPDATE: u16 = 6;
    /// Ask for a credit announcement.
    pub const OP_CREDIT_REQUEST: u16 = 7;
    /// SHUTDOWN flag: the sender will receive no more data.
    pub const SHUTDOWN_RCV: u32 = 1;
    /// SHUTDOWN flag: the sender will send no more data.
    pub const SHUTDOWN_SEND: u32 = 2;
}

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
