//! A blocking rtnetlink socket of the calling thread's network namespace
//! (the namespace is fixed when the socket is made): requests that wait
//! for the kernel's acknowledgement, and dumps, both bounded in time and
//! size.

use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

/// How long the kernel may take to answer one request.
const ANSWER_TIMEOUT_SECS: libc::time_t = 10;
/// Most messages one dump may return (a pod namespace has a handful of
/// links, addresses and routes).
const MAX_DUMP_MESSAGES: usize = 65536;
/// Receive buffer: the kernel sends dump parts of at most 32 KiB.
const RECV_BUF: usize = 64 << 10;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket")]
    Open(#[source] std::io::Error),
    #[error("netlink {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}{}", ext.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        what: String,
        /// The kernel's extended ack message, if it sent one.
        ext: Option<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: undecodable answer to {what}: {reason}")]
    Decode { what: String, reason: String },
    #[error("netlink: a dump for {0} returned more than {MAX_DUMP_MESSAGES} messages")]
    DumpTooLong(String),
}

impl NetlinkError {
    /// The kernel's errno, when it refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        // Short acks (no copy of the request) with the kernel's message.
        socket.set_cap_ack(true).map_err(NetlinkError::Open)?;
        socket.set_ext_ack(true).map_err(NetlinkError::Open)?;
        let tv = libc::timeval {
            tv_sec: ANSWER_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid timeval that outlives the call, on
        // the socket we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Open(std::io::Error::last_os_error()));
        }
        Ok(Netlink {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|source| NetlinkError::Io {
                what: "send",
                source,
            })?;
        Ok(self.seq)
    }

    /// Receives the next datagram and hands each message of ours in it to
    /// `each`, until `each` says it is done.
    fn receive(
        &mut self,
        what: &str,
        seq: u32,
        mut each: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        loop {
            self.buf.clear();
            self.socket
                .recv(&mut self.buf, 0)
                .map_err(|source| NetlinkError::Io {
                    what: "receive",
                    source,
                })?;
            let mut at = 0;
            while at + 16 <= self.buf.len() {
                let bytes = &self.buf[at..];
                let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len < 16 || len > bytes.len() {
                    return Err(NetlinkError::Decode {
                        what: what.to_string(),
                        reason: format!("a message of {len} bytes in {} left", bytes.len()),
                    });
                }
                let raw = &bytes[..len];
                at += (len + 3) & !3;
                let msg_seq = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
                if msg_seq != seq {
                    continue; // an answer to an earlier request that timed out
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map_err(|e| {
                    NetlinkError::Decode {
                        what: what.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                if let NetlinkPayload::Error(e) = &msg.payload {
                    if let Some(code) = e.code {
                        return Err(NetlinkError::Kernel {
                            what: what.to_string(),
                            ext: ext_ack_message(raw),
                            source: std::io::Error::from_raw_os_error(-code.get()),
                        });
                    }
                }
                if each(msg)? {
                    return Ok(());
                }
            }
        }
    }

    /// Sends a request (`extra_flags`: CREATE, EXCL, REPLACE...) and waits
    /// for the kernel's acknowledgement; `what` names it in errors.
    pub fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<(), NetlinkError> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags)?;
        self.receive(what, seq, |m| {
            Ok(matches!(m.payload, NetlinkPayload::Error(_)))
        })
    }

    /// Sends a dump request and returns every message of the answer.
    pub fn dump(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(what, seq, |m| match m.payload {
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => Ok(true),
            NetlinkPayload::InnerMessage(inner) => {
                if out.len() >= MAX_DUMP_MESSAGES {
                    return Err(NetlinkError::DumpTooLong(what.to_string()));
                }
                out.push(inner);
                Ok(false)
            }
            _ => Ok(false),
        })?;
        Ok(out)
    }
}

/// The text of an extended ack (`NLMSGERR_ATTR_MSG`) in an error message:
/// after the header (16), the error code (4) and the request's header (16,
/// capped acks), when the header's flags say TLVs follow.
fn ext_ack_message(raw: &[u8]) -> Option<String> {
    const NLM_F_ACK_TLVS: u16 = 0x200;
    let flags = u16::from_ne_bytes([*raw.get(6)?, *raw.get(7)?]);
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let mut tlvs = raw.get(36..)?;
    while tlvs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([tlvs[0], tlvs[1]]));
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_ack_text_is_found_and_bounded() {
        let mut raw = vec![0u8; 36];
        raw[6..8].copy_from_slice(&0x200u16.to_ne_bytes());
        let msg = b"Invalid prefix\0";
        let len = (4 + msg.len()) as u16;
        raw.extend_from_slice(&len.to_ne_bytes());
        raw.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        raw.extend_from_slice(msg);
        assert_eq!(ext_ack_message(&raw).as_deref(), Some("Invalid prefix"));
        // No TLV flag, a truncated TLV, nothing at all: no text, no panic.
        let mut no_flag = raw.clone();
        no_flag[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(ext_ack_message(&no_flag), None);
        assert_eq!(ext_ack_message(&raw[..40]), None);
        assert_eq!(ext_ack_message(&[]), None);
    }
}
