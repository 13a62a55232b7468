//! containerd's stdio FIFOs <-> the agent's raw streams.
//!
//! Output FIFOs are opened read-write: opening never blocks or fails for a
//! missing reader, and writing never fails with EPIPE. The stdin FIFO is
//! read-only: the writer's close (ctr at the end of its stdin) or CloseIO
//! gives the process EOF. Output copies end when the agent closes the stream, which it
//! does once the process and every other writer are gone and the pipe is
//! drained; Wait waits for them, so no output is lost at exit.

use std::sync::Arc;
use std::time::Duration;

use cocoon_agent_protocol::address::BoxConn;
use cocoon_agent_protocol::stream_header::StreamKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent_client::{Agent, AgentError, StdioFlags};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("opening {path}")]
    Fifo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {kind}")]
    Attach {
        kind: StreamKind,
        #[source]
        source: AgentError,
    },
}

/// containerd's paths for one process; empty means not wanted.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn flags(&self) -> StdioFlags {
        StdioFlags {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
        }
    }
}

/// The running copies of one process.
pub struct IoHandle {
    close_stdin: Arc<Notify>,
    stdin_task: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
}

impl IoHandle {
    /// CloseIO: copy what is already in the stdin FIFO, then give the
    /// process EOF (done by the stdin copy task).
    pub fn close_stdin(&mut self) {
        self.close_stdin.notify_one();
    }

    pub fn take_outputs(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.outputs)
    }
}

impl Drop for IoHandle {
    fn drop(&mut self) {
        if let Some(t) = self.stdin_task.take() {
            t.abort();
        }
        for t in &self.outputs {
            t.abort();
        }
    }
}

/// Waits for output copies to drain, at most `limit`.
pub async fn wait_outputs(handles: Vec<JoinHandle<()>>, limit: Duration) {
    let all = async {
        for h in handles {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::warn!("output still flowing after the exit; not waiting longer");
    }
}

fn open_out(path: &str) -> Result<pipe::Sender, StdioError> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|source| StdioError::Fifo {
            path: path.into(),
            source,
        })
}

/// Read-only, so that the writer's close is EOF (what ctr relies on); a
/// FIFO that never had a writer reports nothing to epoll, so there is no
/// EOF before ctr opens its end.
fn open_in(path: &str) -> Result<pipe::Receiver, StdioError> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|source| StdioError::Fifo {
            path: path.into(),
            source,
        })
}

async fn copy_out<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut from: R, mut to: W) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    // Nobody reads any more; keep draining the process.
                    continue;
                }
            }
        }
    }
    let _ = to.flush().await;
}

async fn copy_in<W: AsyncWrite + Unpin>(from: pipe::Receiver, mut to: W, close: Arc<Notify>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            r = from.readable() => {
                if r.is_err() { break; }
                match from.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return; },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                }
            }
            _ = close.notified() => {
                // Drain what the writer left before it closed.
                loop {
                    match from.try_read(&mut buf) {
                        Ok(n) if n > 0 => if to.write_all(&buf[..n]).await.is_err() { return; },
                        _ => break,
                    }
                }
                break;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Opens the agent streams of a process and starts the copies. Called
/// after Create/Exec in the agent, before the process runs.
pub async fn attach(
    agent: &Agent,
    id: &str,
    exec_id: &str,
    paths: &StdioPaths,
) -> Result<IoHandle, StdioError> {
    let close = Arc::new(Notify::new());
    let mut handle = IoHandle {
        close_stdin: close.clone(),
        stdin_task: None,
        outputs: Vec::new(),
    };
    let open = |kind| async move {
        agent
            .open_stream(kind, id, exec_id)
            .await
            .map_err(|source| StdioError::Attach { kind, source })
    };
    if paths.terminal {
        let conn: BoxConn = open(StreamKind::Tty).await?;
        let (rd, wr) = tokio::io::split(conn);
        if !paths.stdout.is_empty() {
            let out = open_out(&paths.stdout)?;
            handle.outputs.push(tokio::spawn(copy_out(rd, out)));
        }
        if !paths.stdin.is_empty() {
            let input = open_in(&paths.stdin)?;
            handle.stdin_task = Some(tokio::spawn(copy_in(input, wr, close)));
        }
        return Ok(handle);
    }
    if !paths.stdin.is_empty() {
        let input = open_in(&paths.stdin)?;
        let conn = open(StreamKind::Stdin).await?;
        handle.stdin_task = Some(tokio::spawn(copy_in(input, conn, close)));
    }
    for (kind, path) in [
        (StreamKind::Stdout, &paths.stdout),
        (StreamKind::Stderr, &paths.stderr),
    ] {
        if !path.is_empty() {
            let out = open_out(path)?;
            let conn = open(kind).await?;
            handle.outputs.push(tokio::spawn(copy_out(conn, out)));
        }
    }
    Ok(handle)
}
