//! Listeners for the control and stream ports.

use std::pin::Pin;

use cocoon_agent_protocol::address::{Address, Conn};
use tokio::net::UnixListener;
use tokio_vsock::{VsockAddr, VsockListener};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {0}: only vsock:// and unix:// addresses are served")]
    Unsupported(String),
    #[error("binding {0}")]
    Bind(String, #[source] std::io::Error),
}

/// A bound listener of either kind.
pub enum AnyListener {
    Unix(UnixListener),
    Vsock(VsockListener),
}

impl AnyListener {
    pub fn bind(addr: &Address) -> Result<Self, ListenError> {
        let err = |e| ListenError::Bind(addr.to_string(), e);
        match addr {
            Address::Unix(path) => {
                // A stale socket from an earlier run would make bind fail.
                let _ = std::fs::remove_file(path);
                Ok(AnyListener::Unix(UnixListener::bind(path).map_err(err)?))
            }
            Address::Vsock { cid, port } => Ok(AnyListener::Vsock(
                VsockListener::bind(VsockAddr::new(*cid, *port)).map_err(err)?,
            )),
            Address::HybridVsock { .. } => Err(ListenError::Unsupported(addr.to_string())),
        }
    }

    pub async fn accept(&mut self) -> std::io::Result<Pin<Box<dyn Conn>>> {
        match self {
            AnyListener::Unix(l) => Ok(Box::pin(l.accept().await?.0)),
            AnyListener::Vsock(l) => Ok(Box::pin(l.accept().await?.0)),
        }
    }

    /// The ttrpc form of this listener.
    pub fn into_ttrpc(self) -> ttrpc::r#async::transport::Listener {
        match self {
            AnyListener::Unix(l) => l.into(),
            AnyListener::Vsock(l) => l.into(),
        }
    }
}
