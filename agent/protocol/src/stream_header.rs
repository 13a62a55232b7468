//! The header that opens a raw stdio stream connection.
//!
//! Layout (all lengths in bytes):
//!
//! | field | size |
//! | --- | --- |
//! | magic `CCS1` | 4 |
//! | kind (0 stdin, 1 stdout, 2 stderr, 3 tty, 4 port forward) | 1 |
//! | container id length `n` (1..=255) | 1 |
//! | container id | n |
//! | exec id length `m` (0..=255, 0 = init) | 1 |
//! | exec id | m |
//!
//! The agent answers with one status byte ([`AttachStatus`]); after `Ok` the
//! connection carries raw bytes. stdin: the client writes and half-closes (or
//! closes) to give the process EOF. stdout/stderr: the agent writes until the
//! process and every holder of the pipe have exited and the output is
//! drained, then closes. tty: both directions on one connection.
//!
//! Port forward (CRI `PortForward`): the container id names the pod's
//! sandbox container, the exec id field carries a TCP port in decimal
//! (`1`..=`65535`); the agent connects to `127.0.0.1:<port>` in the guest's
//! network namespace, which every container of a pod with a network shares,
//! answers `Ok` (or `Unreachable`) and copies both ways.

use tokio::io::{AsyncRead, AsyncReadExt};

/// First bytes of every stream connection.
pub const MAGIC: [u8; 4] = *b"CCS1";
/// Longest id accepted in a header.
pub const MAX_ID_LEN: usize = 255;

/// Which stream of a process a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// The terminal of a process created with `terminal: true`, both ways.
    Tty,
    /// A TCP connection to a port of the pod (see the module docs).
    PortForward,
}

impl StreamKind {
    fn to_byte(self) -> u8 {
        match self {
            StreamKind::Stdin => 0,
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
            StreamKind::Tty => 3,
            StreamKind::PortForward => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(StreamKind::Stdin),
            1 => Some(StreamKind::Stdout),
            2 => Some(StreamKind::Stderr),
            3 => Some(StreamKind::Tty),
            4 => Some(StreamKind::PortForward),
            _ => None,
        }
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Tty => "tty",
            StreamKind::PortForward => "port forward",
        };
        f.write_str(s)
    }
}

/// The agent's one-byte answer to a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachStatus {
    Ok,
    BadHeader,
    NoSuchProcess,
    /// The process was not created with this stream.
    NotConfigured,
    AlreadyAttached,
    /// Port forward: nothing accepted the connection in the guest.
    Unreachable,
}

impl AttachStatus {
    pub fn to_byte(self) -> u8 {
        match self {
            AttachStatus::Ok => 0,
            AttachStatus::BadHeader => 1,
            AttachStatus::NoSuchProcess => 2,
            AttachStatus::NotConfigured => 3,
            AttachStatus::AlreadyAttached => 4,
            AttachStatus::Unreachable => 5,
        }
    }

    /// Unknown bytes read as `BadHeader`: the peer is not one we understand.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => AttachStatus::Ok,
            2 => AttachStatus::NoSuchProcess,
            3 => AttachStatus::NotConfigured,
            4 => AttachStatus::AlreadyAttached,
            5 => AttachStatus::Unreachable,
            _ => AttachStatus::BadHeader,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamHeaderError {
    #[error("bad stream magic")]
    Magic,
    #[error("unknown stream kind {0}")]
    Kind(u8),
    #[error("invalid {field}: {reason}")]
    Id {
        field: &'static str,
        reason: &'static str,
    },
    #[error("reading stream header")]
    Io(#[source] std::io::Error),
}

/// Names the process and stream a connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub kind: StreamKind,
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
}

/// Checks a container or exec id: 1..=255 bytes of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-` (ids become path components).
pub fn validate_id(field: &'static str, id: &str) -> Result<(), StreamHeaderError> {
    let bad = |reason| StreamHeaderError::Id { field, reason };
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad("longer than 255 bytes"));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(bad("starts with '.' or '-'"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("has characters outside [A-Za-z0-9._-]"));
    }
    Ok(())
}

impl StreamHeader {
    /// A port-forward header: `port` of the pod whose sandbox container is
    /// `sandbox_id`.
    pub fn port_forward(sandbox_id: &str, port: u16) -> Self {
        StreamHeader::new(StreamKind::PortForward, sandbox_id, &port.to_string())
    }

    /// The port of a port-forward header: the exec id field, in decimal,
    /// 1..=65535 without sign or leading zero.
    pub fn forward_port(&self) -> Option<u16> {
        let s = &self.exec_id;
        if self.kind != StreamKind::PortForward || s.is_empty() || s.starts_with('0') {
            return None;
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u16>().ok()
    }

    pub fn new(kind: StreamKind, container_id: &str, exec_id: &str) -> Self {
        StreamHeader {
            kind,
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        }
    }

    /// The header's bytes; fails on ids that the agent would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, StreamHeaderError> {
        validate_id("container id", &self.container_id)?;
        if !self.exec_id.is_empty() {
            validate_id("exec id", &self.exec_id)?;
        }
        let mut out = Vec::with_capacity(7 + self.container_id.len() + self.exec_id.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.kind.to_byte());
        out.push(self.container_id.len() as u8);
        out.extend_from_slice(self.container_id.as_bytes());
        out.push(self.exec_id.len() as u8);
        out.extend_from_slice(self.exec_id.as_bytes());
        Ok(out)
    }

    /// Reads and validates one header; never reads past it.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, StreamHeaderError> {
        let mut fixed = [0u8; 6];
        r.read_exact(&mut fixed)
            .await
            .map_err(StreamHeaderError::Io)?;
        if fixed[..4] != MAGIC {
            return Err(StreamHeaderError::Magic);
        }
        let kind = StreamKind::from_byte(fixed[4]).ok_or(StreamHeaderError::Kind(fixed[4]))?;
        let container_id = read_id(r, fixed[5] as usize).await?;
        validate_id("container id", &container_id)?;
        let mut len = [0u8; 1];
        r.read_exact(&mut len)
            .await
            .map_err(StreamHeaderError::Io)?;
        let exec_id = read_id(r, len[0] as usize).await?;
        if !exec_id.is_empty() {
            validate_id("exec id", &exec_id)?;
        }
        Ok(StreamHeader {
            kind,
            container_id,
            exec_id,
        })
    }
}

async fn read_id<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<String, StreamHeaderError> {
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .await
        .map_err(StreamHeaderError::Io)?;
    String::from_utf8(buf).map_err(|_| StreamHeaderError::Id {
        field: "id",
        reason: "not UTF-8",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn round_trip() {
        let h = StreamHeader::new(StreamKind::Stderr, "c1", "exec-2");
        let bytes = h.encode().unwrap();
        let got = rt().block_on(StreamHeader::read(&mut &bytes[..])).unwrap();
        assert_eq!(got, h);
        let init = StreamHeader::new(StreamKind::Tty, "c1", "");
        let bytes = init.encode().unwrap();
        assert_eq!(
            rt().block_on(StreamHeader::read(&mut &bytes[..])).unwrap(),
            init
        );
    }

    #[test]
    fn port_forward_headers_carry_a_port() {
        let h = StreamHeader::port_forward("pod1", 8080);
        let bytes = h.encode().unwrap();
        let got = rt().block_on(StreamHeader::read(&mut &bytes[..])).unwrap();
        assert_eq!(got.forward_port(), Some(8080));
        for bad in ["", "0", "080", "65536", "-1", "1a", "99999999999999999999"] {
            let h = StreamHeader::new(StreamKind::PortForward, "pod1", bad);
            assert_eq!(h.forward_port(), None, "{bad:?}");
        }
        // Not a port-forward header.
        assert_eq!(
            StreamHeader::new(StreamKind::Stdout, "c", "80").forward_port(),
            None
        );
    }

    #[test]
    fn refuses_malformed_headers() {
        let read = |b: &[u8]| rt().block_on(StreamHeader::read(&mut &b[..]));
        assert!(matches!(
            read(b"XXXX\x00\x01a\x00"),
            Err(StreamHeaderError::Magic)
        ));
        assert!(matches!(
            read(b"CCS1\x09\x01a\x00"),
            Err(StreamHeaderError::Kind(9))
        ));
        assert!(matches!(
            read(b"CCS1\x00\x00\x00"),
            Err(StreamHeaderError::Id { .. })
        ));
        assert!(matches!(
            read(b"CCS1\x00\x02../\x00"),
            Err(StreamHeaderError::Id { .. })
        ));
        assert!(matches!(
            read(b"CCS1\x00\x03a/b\x00"),
            Err(StreamHeaderError::Id { .. })
        ));
        // Truncated: claims 200 bytes of id, has 1.
        assert!(matches!(
            read(b"CCS1\x00\xc8a"),
            Err(StreamHeaderError::Io(_))
        ));
        assert!(matches!(
            read(b"CCS1\x00\x01a"),
            Err(StreamHeaderError::Io(_))
        ));
    }

    #[test]
    fn encode_refuses_bad_ids() {
        assert!(StreamHeader::new(StreamKind::Stdin, "", "")
            .encode()
            .is_err());
        assert!(StreamHeader::new(StreamKind::Stdin, "a", "x/y")
            .encode()
            .is_err());
        let long = "a".repeat(256);
        assert!(StreamHeader::new(StreamKind::Stdin, &long, "")
            .encode()
            .is_err());
    }

    #[test]
    fn status_bytes() {
        for s in [
            AttachStatus::Ok,
            AttachStatus::BadHeader,
            AttachStatus::NoSuchProcess,
            AttachStatus::NotConfigured,
            AttachStatus::AlreadyAttached,
        ] {
            assert_eq!(AttachStatus::from_byte(s.to_byte()), s);
        }
        assert_eq!(AttachStatus::from_byte(200), AttachStatus::BadHeader);
    }
}
