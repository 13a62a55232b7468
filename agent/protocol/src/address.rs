//! Agent addresses and the client side of both transports.
//!
//! | form | meaning |
//! | --- | --- |
//! | `vsock://PORT` | listen on any CID (the guest agent's default) |
//! | `vsock://CID:PORT` | connect to CID over the kernel's vsock |
//! | `unix:///PATH` | a Unix socket (the agent on the host, in tests) |
//! | `hvsock:///PATH:PORT` | Firecracker-style hybrid vsock: connect to the VMM's Unix socket, send `CONNECT PORT\n`, expect `OK ...\n` |

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockStream};

use crate::stream_header::{AttachStatus, StreamHeader, StreamHeaderError};

/// `VMADDR_CID_ANY`.
pub const CID_ANY: u32 = u32::MAX;
/// Longest line a hybrid vsock peer may send before its `OK`.
const MAX_HANDSHAKE_LINE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Vsock { cid: u32, port: u32 },
    HybridVsock { path: PathBuf, port: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("address {0:?}: expected vsock://[CID:]PORT, unix:///PATH or hvsock:///PATH:PORT")]
    Syntax(String),
    #[error("connecting to {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("hybrid vsock handshake with {0}: {1}")]
    Handshake(String, String),
    #[error("stream header")]
    Header(#[from] StreamHeaderError),
    #[error("agent refused the stream: {0:?}")]
    Refused(AttachStatus),
    #[error("ttrpc client")]
    Ttrpc(#[from] ttrpc::Error),
}

impl std::str::FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddressError::Syntax(s.to_string());
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            return match rest.split_once(':') {
                None => Ok(Address::Vsock {
                    cid: CID_ANY,
                    port: rest.parse().map_err(|_| bad())?,
                }),
                Some((cid, port)) => Ok(Address::Vsock {
                    cid: if cid == "-1" {
                        CID_ANY
                    } else {
                        cid.parse().map_err(|_| bad())?
                    },
                    port: port.parse().map_err(|_| bad())?,
                }),
            };
        }
        if let Some(rest) = s.strip_prefix("hvsock://") {
            let (path, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(Address::HybridVsock {
                path: PathBuf::from(path),
                port: port.parse().map_err(|_| bad())?,
            });
        }
        Err(bad())
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Vsock { cid, port } if *cid == CID_ANY => write!(f, "vsock://{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Address::HybridVsock { path, port } => write!(f, "hvsock://{}:{port}", path.display()),
        }
    }
}

/// A connected byte stream of either transport.
pub trait Conn: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Conn for T {}
pub type BoxConn = Pin<Box<dyn Conn>>;

/// Opens a raw connection to `addr`.
pub async fn connect(addr: &Address) -> Result<BoxConn, AddressError> {
    let err = |e| AddressError::Connect(addr.to_string(), e);
    match addr {
        Address::Unix(path) => Ok(Box::pin(UnixStream::connect(path).await.map_err(err)?)),
        Address::Vsock { cid, port } => {
            let s = VsockStream::connect(VsockAddr::new(*cid, *port))
                .await
                .map_err(err)?;
            Ok(Box::pin(s))
        }
        Address::HybridVsock { path, port } => {
            let mut s = UnixStream::connect(path).await.map_err(err)?;
            hybrid_handshake(&mut s, *port)
                .await
                .map_err(|m| AddressError::Handshake(addr.to_string(), m))?;
            Ok(Box::pin(s))
        }
    }
}

/// `CONNECT <port>\n`, then one line that must start with `OK `. Reads byte
/// by byte so that no byte of the following protocol is consumed.
async fn hybrid_handshake(s: &mut UnixStream, port: u32) -> Result<(), String> {
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(0) => return Err("closed by the VMM (is the agent listening?)".into()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(e.to_string()),
        }
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err("reply line too long".into());
        }
    }
    if line.starts_with(b"OK ") {
        Ok(())
    } else {
        Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&line)
        ))
    }
}

/// A ttrpc client of the agent's control service at `addr`.
pub async fn connect_agent(
    addr: &Address,
) -> Result<crate::agent_ttrpc::AgentClient, AddressError> {
    let conn = connect(addr).await?;
    let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(conn));
    Ok(crate::agent_ttrpc::AgentClient::new(client))
}

/// Like [`connect_agent`], retrying until `timeout` while the agent is not
/// up yet (connection refused, hybrid vsock closed by the VMM).
pub async fn connect_agent_retry(
    addr: &Address,
    timeout: Duration,
) -> Result<crate::agent_ttrpc::AgentClient, AddressError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match connect_agent(addr).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Opens one stdio stream: connects, sends the header, checks the answer.
pub async fn open_stream(addr: &Address, header: &StreamHeader) -> Result<BoxConn, AddressError> {
    let bytes = header.encode()?;
    let mut conn = connect(addr).await?;
    conn.write_all(&bytes)
        .await
        .map_err(|e| AddressError::Connect(addr.to_string(), e))?;
    let mut status = [0u8; 1];
    conn.read_exact(&mut status)
        .await
        .map_err(|e| AddressError::Connect(addr.to_string(), e))?;
    match AttachStatus::from_byte(status[0]) {
        AttachStatus::Ok => Ok(conn),
        other => Err(AddressError::Refused(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let p = |s: &str| s.parse::<Address>();
        assert_eq!(
            p("vsock://1024").unwrap(),
            Address::Vsock {
                cid: CID_ANY,
                port: 1024
            }
        );
        assert_eq!(
            p("vsock://3:1025").unwrap(),
            Address::Vsock { cid: 3, port: 1025 }
        );
        assert_eq!(
            p("vsock://-1:1024").unwrap(),
            Address::Vsock {
                cid: CID_ANY,
                port: 1024
            }
        );
        assert_eq!(
            p("unix:///run/a.sock").unwrap(),
            Address::Unix("/run/a.sock".into())
        );
        assert_eq!(
            p("hvsock:///run/v.sock:1024").unwrap(),
            Address::HybridVsock {
                path: "/run/v.sock".into(),
                port: 1024
            }
        );
        for bad in [
            "",
            "tcp://1",
            "unix://rel",
            "vsock://x",
            "vsock://1:y",
            "hvsock:///a",
            "hvsock://r:1",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        for s in [
            "vsock://1024",
            "vsock://3:1025",
            "unix:///a",
            "hvsock:///v.sock:1024",
        ] {
            assert_eq!(p(s).unwrap().to_string(), s);
        }
    }
}
