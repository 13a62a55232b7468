//! virtio-vsock (device id 19) with a hybrid Unix-socket backend, after
//! Firecracker's design (`docs/vsock.md`): the host side of every guest
//! stream is a Unix socket.
//!
//! - `packet.rs`: the 44-byte header (`parse_header`, the fuzz entry
//!   point) and reading/writing packets from/to descriptor chains.
//! - `config.rs`: queue indices and sizes, limits, CID rules, `uapi`.
//! - `backend.rs`: the `VsockBackend` traits and `VsockError`.
//! - `device.rs`: `Vsock<B>`, the `VirtioDevice`.
//! - `event_handler.rs`: `VsockCore<B>`, which moves packets between the
//!   queues and a `VsockBackend` on the device thread (the shared event
//!   loop over the queue kicks and the backend's fd).
//! - `csm/`: one connection's state machine and its bounded tx buffer.
//! - `unix/`: the production backend, `VsockMuxer`, over Unix sockets.
//! - `test_utils.rs`: descriptor-chain builders and a `TestBackend`.
//!
//! Flow control: each connection advertises a 64 KiB receive buffer
//! (`buf_alloc`) to the guest, which is exactly the bounded tx buffer in
//! front of the host socket, so a guest that keeps to its credit can never
//! make it grow; host data is read from the socket only into a guest rx
//! buffer and only as far as the guest's credit goes.

pub mod backend;
pub mod config;
pub mod csm;
pub mod device;
pub mod event_handler;
pub mod packet;
pub mod persist;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod unix;

#[cfg(test)]
mod tests;

pub use backend::{VsockBackend, VsockChannel, VsockEpollListener, VsockError};
pub use config::*;
pub use device::Vsock;
pub use event_handler::{VsockCore, RESET_ACK_LIMIT};
pub use packet::{parse_header, PacketError, VsockHeader, VsockPacket};
pub use unix::{MuxerError, VsockMuxer};
pub use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
