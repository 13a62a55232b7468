//! The stdio stream listener: one raw connection per stream, opened by the
//! header in `cocoon_agent_protocol::stream_header`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use cocoon_agent_protocol::address::BoxConn;
use cocoon_agent_protocol::stream_header::{AttachStatus, StreamHeader, StreamKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::container::{lock, AgentState, Process};
use crate::listen::AnyListener;
use crate::stdio::StdinSlot;

/// A client must send its header within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const COPY_BUF: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("duplicating the terminal descriptor")]
    Dup(#[source] std::io::Error),
    #[error("wrapping a descriptor for async I/O")]
    Async(#[source] std::io::Error),
}

pub async fn serve(mut listener: AnyListener, state: Arc<AgentState>) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                let st = state.clone();
                tokio::spawn(async move { handle(conn, st).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn reply(conn: &mut BoxConn, status: AttachStatus) -> bool {
    conn.write_all(&[status.to_byte()]).await.is_ok()
}

async fn handle(mut conn: BoxConn, state: Arc<AgentState>) {
    let header = match tokio::time::timeout(HEADER_TIMEOUT, StreamHeader::read(&mut conn)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "bad stream header");
            let _ = reply(&mut conn, AttachStatus::BadHeader).await;
            return;
        }
        Err(_) => return,
    };
    if header.kind == StreamKind::PortForward {
        forward(conn, &state, &header).await;
        return;
    }
    let process = match state.process(&header.container_id, &header.exec_id) {
        Ok(p) => p,
        Err(_) => {
            let _ = reply(&mut conn, AttachStatus::NoSuchProcess).await;
            return;
        }
    };
    if let Err(status) = attach(conn, &process, header.kind).await {
        tracing::debug!(?status, kind = %header.kind, id = %header.container_id, "stream refused");
    }
}

/// How long a port forward waits for the guest's port to accept.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Port forward: connects to `127.0.0.1:<port>` in the guest's network
/// namespace (the pod's) and copies both ways until either side closes.
async fn forward(mut conn: BoxConn, state: &AgentState, header: &StreamHeader) {
    let Some(port) = header.forward_port() else {
        let _ = reply(&mut conn, AttachStatus::BadHeader).await;
        return;
    };
    // Only for a pod this agent runs: the sandbox container must exist.
    if state.process(&header.container_id, "").is_err() {
        let _ = reply(&mut conn, AttachStatus::NoSuchProcess).await;
        return;
    }
    let target = tokio::time::timeout(
        FORWARD_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)),
    )
    .await;
    let mut target = match target {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(port, error = %e, "port forward: connect failed");
            let _ = reply(&mut conn, AttachStatus::Unreachable).await;
            return;
        }
        Err(_) => {
            let _ = reply(&mut conn, AttachStatus::Unreachable).await;
            return;
        }
    };
    if !reply(&mut conn, AttachStatus::Ok).await {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut target).await {
        tracing::debug!(port, error = %e, "port forward ended");
    }
}

/// Takes the slot for `kind` and copies until the stream ends.
async fn attach(mut conn: BoxConn, p: &Process, kind: StreamKind) -> Result<(), AttachStatus> {
    let req = p.slots.request;
    match kind {
        StreamKind::Stdin => {
            if !req.stdin || req.terminal {
                return refuse(conn, AttachStatus::NotConfigured).await;
            }
            let notify = Arc::new(Notify::new());
            let fd = {
                let mut slot = lock(&p.slots.stdin);
                match std::mem::replace(&mut *slot, StdinSlot::Attached(notify.clone())) {
                    StdinSlot::Pending(fd) => Some(fd),
                    other => {
                        *slot = other;
                        None
                    }
                }
            };
            let Some(fd) = fd else {
                return refuse(conn, AttachStatus::AlreadyAttached).await;
            };
            if !reply(&mut conn, AttachStatus::Ok).await {
                return Ok(());
            }
            tokio::spawn(copy_stdin(conn, fd, notify));
        }
        StreamKind::Stdout | StreamKind::Stderr => {
            let (wanted, slot) = if kind == StreamKind::Stdout {
                (req.stdout, &p.slots.stdout)
            } else {
                (req.stderr, &p.slots.stderr)
            };
            if !wanted || req.terminal {
                return refuse(conn, AttachStatus::NotConfigured).await;
            }
            let Some(fd) = lock(slot).take() else {
                return refuse(conn, AttachStatus::AlreadyAttached).await;
            };
            if !reply(&mut conn, AttachStatus::Ok).await {
                return Ok(());
            }
            tokio::spawn(copy_output(conn, fd, false));
        }
        StreamKind::Tty => {
            let Some(master) = p.slots.tty.get().cloned() else {
                return refuse(conn, AttachStatus::NotConfigured).await;
            };
            let was_attached = std::mem::replace(&mut *lock(&p.slots.tty_attached), true);
            if was_attached {
                return refuse(conn, AttachStatus::AlreadyAttached).await;
            }
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(StreamError::Dup);
            let (r, w) = match (dup(&master), dup(&master)) {
                (Ok(r), Ok(w)) => (r, w),
                _ => return refuse(conn, AttachStatus::NoSuchProcess).await,
            };
            if !reply(&mut conn, AttachStatus::Ok).await {
                return Ok(());
            }
            let (conn_r, conn_w) = tokio::io::split(conn);
            tokio::spawn(copy_tty_in(conn_r, w));
            tokio::spawn(copy_output(Box::pin(SplitWrite(conn_w)), r, true));
        }
        // Handled by `forward` before a process is looked up.
        StreamKind::PortForward => return refuse(conn, AttachStatus::BadHeader).await,
    }
    Ok(())
}

async fn refuse(mut conn: BoxConn, status: AttachStatus) -> Result<(), AttachStatus> {
    let _ = reply(&mut conn, status).await;
    Err(status)
}

/// Connection → stdin pipe. EOF on the connection, or CloseStdin, closes
/// the pipe and the process reads EOF.
async fn copy_stdin(mut conn: BoxConn, fd: OwnedFd, close: Arc<Notify>) {
    let Ok(mut tx) = pipe::Sender::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        tokio::select! {
            _ = close.notified() => break,
            n = conn.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
}

/// stdout/stderr pipe (or pty master) → connection, until every writer is
/// gone and the pipe is drained; then the connection is closed.
async fn copy_output(mut conn: BoxConn, fd: OwnedFd, tty: bool) {
    let rx = if tty {
        pipe::Receiver::from_owned_fd_unchecked(fd)
    } else {
        pipe::Receiver::from_owned_fd(fd)
    };
    let Ok(mut rx) = rx else { return };
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            // A pty master reads EIO once the last slave fd is closed.
            Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown().await;
}

/// Connection → pty master.
async fn copy_tty_in(mut conn: tokio::io::ReadHalf<BoxConn>, fd: OwnedFd) {
    let Ok(mut tx) = pipe::Sender::from_owned_fd_unchecked(fd) else {
        return;
    };
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The write half of a split connection as a connection.
struct SplitWrite(tokio::io::WriteHalf<BoxConn>);

impl tokio::io::AsyncRead for SplitWrite {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for SplitWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
