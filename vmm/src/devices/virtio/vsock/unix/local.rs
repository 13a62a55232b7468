//! The host side's own pieces: the `CONNECT <port>` line and the
//! listening socket's path.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::MuxerError;

/// Longest `CONNECT` line we read, newline included.
pub const CONNECT_LINE_MAX: usize = 32;

/// Why a `CONNECT` line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    /// Not `CONNECT <port>`.
    #[error("not a CONNECT line")]
    Syntax,
    /// The port is not a decimal u32.
    #[error("bad port")]
    BadPort,
}

/// Parse `CONNECT <port>` (the newline already stripped; the keyword is
/// case-insensitive, one space, a decimal u32).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    let line = std::str::from_utf8(line).map_err(|_| ConnectLineError::Syntax)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (word, port) = line.split_once(' ').ok_or(ConnectLineError::Syntax)?;
    if !word.eq_ignore_ascii_case("connect") {
        return Err(ConnectLineError::Syntax);
    }
    if port.is_empty() || port.len() > 10 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectLineError::BadPort);
    }
    port.parse::<u32>().map_err(|_| ConnectLineError::BadPort)
}

/// Make `path` usable for a listening socket: its directory must exist; a
/// stale socket (nobody accepts on it) is removed; anything else there is
/// an error.
pub fn prepare_socket_path(path: &Path) -> Result<(), MuxerError> {
    // sun_path is 108 bytes with the NUL; guest ports add "_4294967295".
    if path.as_os_str().len() + 11 > 107 {
        return Err(MuxerError::PathTooLong(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(MuxerError::DirMissing(dir.to_owned()));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(MuxerError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(MuxerError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(MuxerError::InUse(path.to_owned())),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing stale vsock socket");
            std::fs::remove_file(path).map_err(|source| MuxerError::RemoveStale {
                path: path.to_owned(),
                source,
            })
        }
    }
}
