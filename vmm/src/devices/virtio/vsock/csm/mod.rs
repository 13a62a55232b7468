//! The connection state machine: one guest stream and its host socket.

mod connection;
mod txbuf;

pub use connection::{ConnState, ConnStream, VsockConnection};
pub use txbuf::TxBuf;
