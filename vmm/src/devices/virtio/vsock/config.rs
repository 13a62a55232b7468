//! What the vsock device is: its queues, its limits, the guest CID rules
//! and the packet constants of the virtio spec.

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

/// Whether `cid` may be a guest's: 3 or more, and 32 bits.
pub fn valid_guest_cid(cid: u64) -> bool {
    (MIN_GUEST_CID..=u64::from(u32::MAX)).contains(&cid)
}
