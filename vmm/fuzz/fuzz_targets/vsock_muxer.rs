//! The vsock connection state machine across packets (`vsock/csm`) behind
//! the Unix-socket muxer (`vsock/unix`): a sequence of guest packets
//! (REQUEST, RESPONSE, RW, SHUTDOWN, RST, CREDIT_UPDATE/REQUEST and
//! invalid ops) for a few ports, interleaved with rx drains, muxer polls
//! and host-side socket actions (accepting guest connections, writing,
//! reading, closing, and host-initiated `CONNECT <port>` handshakes),
//! against a muxer listening in a scratch directory where host ports 1024
//! and 1025 have listeners and 1026 has none.
//!
//! Input: a sequence of ops, each `[op] ...`:
//! - `0: u8 op, u8 ports, u8 flags, u8 credit, le32 fwd_cnt, u8 len`:
//!   a guest packet with `len * 256 + 1` (or 0) payload bytes
//! - `1: le16 capacity`: drain packets for the guest into rx buffers
//! - `2`: poll the muxer (host sockets readable, writable, closed)
//! - `3`: accept guest connections on the host listeners
//! - `4: u8 stream, u8 len`: a host socket writes `len * 64` bytes
//! - `5: u8 stream`: a host socket reads what it has
//! - `6: u8 stream, u8 how`: a host socket shuts down or closes
//! - `7: u8 port, u8 garbage`: a host connection sends `CONNECT <port>`
//!   (or a garbage line).
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use cocoon_vmm::devices::virtio::vsock::uapi::{OP_SHUTDOWN, VSOCK_TYPE_STREAM};
use cocoon_vmm::devices::virtio::vsock::unix::MuxerError;
use cocoon_vmm::devices::virtio::vsock::{
    VsockChannel, VsockEpollListener, VsockError, VsockHeader, VsockMuxer, VsockPacket,
    MAX_CONNECTIONS, MAX_PKT_DATA, VSOCK_HOST_CID,
};
use cocoon_vmm_fuzz::{scratch_dir, Input};
use libfuzzer_sys::fuzz_target;

const GUEST_CID: u64 = 3;
const MAX_OPS: usize = 256;
/// Host-initiated connections per input: fewer than the muxer listener's
/// backlog, so a blocking connect never waits for an accept.
const MAX_HOST_CONNECTS: usize = 32;
/// Host ports the guest may connect to (1026 has no listener).
const HOST_PORTS: [u32; 4] = [1024, 1025, 1026, 1 << 30];
/// Guest ports.
const GUEST_PORTS: [u32; 4] = [49152, 49153, 5000, 5001];

struct Fixture {
    path: PathBuf,
    listeners: Vec<UnixListener>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = scratch_dir().join("v.sock");
        let listeners = [1024, 1025]
            .iter()
            .map(|p| {
                let mut l = path.clone().into_os_string();
                l.push(format!("_{p}"));
                let l = UnixListener::bind(&l).expect("host listener");
                l.set_nonblocking(true).expect("nonblocking listener");
                l
            })
            .collect();
        Fixture { path, listeners }
    })
}

/// Take every pending connection off the host listeners.
fn accept_all(f: &Fixture, streams: &mut Vec<UnixStream>) {
    for l in &f.listeners {
        while let Ok((s, _)) = l.accept() {
            if s.set_nonblocking(true).is_ok() {
                streams.push(s);
            }
        }
    }
}

fn guest_packet(input: &mut Input<'_>, payload: &mut Vec<u8>) -> VsockPacket {
    let op = u16::from(input.u8() % 9);
    let ports = input.u8();
    let flags = u32::from(input.u8() & 7);
    let buf_alloc = match input.u8() % 4 {
        0 => 0,
        1 => 4096,
        2 => 65536,
        _ => u32::MAX,
    };
    let fwd_cnt = input.u32();
    let len = match input.u8() {
        0 => 0,
        n => (usize::from(n) * 256 + 1).min(MAX_PKT_DATA),
    };
    let hdr = VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: VSOCK_HOST_CID,
        src_port: GUEST_PORTS[usize::from(ports & 3)],
        dst_port: HOST_PORTS[usize::from((ports >> 2) & 3)] + u32::from(ports >> 7),
        len: 0,
        // Mostly streams; type 2 (seqpacket) is refused with RST.
        type_: if ports & 0x40 != 0 {
            2
        } else {
            VSOCK_TYPE_STREAM
        },
        op,
        flags,
        buf_alloc,
        fwd_cnt,
    };
    payload.resize(len, 0x5a);
    VsockPacket::with_data(hdr, payload)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut m = match VsockMuxer::new(GUEST_CID, &f.path) {
        Ok(m) => m,
        Err(MuxerError::InUse(_)) => panic!("the muxer socket of an earlier input is still live"),
        Err(e) => panic!("muxer: {e}"),
    };
    let mut input = Input::new(data);
    let mut streams: Vec<UnixStream> = Vec::new();
    let mut payload = Vec::new();
    let mut rx = VsockPacket::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut host_connects = 0;
    // Whether a host socket was closed or shut down for writing: only then
    // may the host side send the guest a SHUTDOWN (the host's EOF).
    let mut host_closed = false;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 => {
                let pkt = guest_packet(&mut input, &mut payload);
                match m.send_pkt(&pkt) {
                    Ok(()) | Err(VsockError::Busy) => {}
                    Err(e) => panic!("send_pkt: {e}"),
                }
            }
            1 => {
                let cap = usize::from(input.u16());
                for _ in 0..64 {
                    rx.set_rx_capacity(cap);
                    match m.recv_pkt(&mut rx) {
                        Ok(()) => {
                            let h = rx.hdr;
                            assert_eq!((h.src_cid, h.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
                            assert_eq!(h.type_, VSOCK_TYPE_STREAM);
                            assert!(h.len as usize <= cap.min(MAX_PKT_DATA), "rx over capacity");
                            assert!(
                                h.op != OP_SHUTDOWN || host_closed,
                                "SHUTDOWN to the guest while every host socket is open"
                            );
                        }
                        Err(VsockError::NoData) => break,
                        Err(e) => panic!("recv_pkt: {e}"),
                    }
                }
            }
            2 => m.notify(),
            3 => accept_all(f, &mut streams),
            4 => {
                let i = usize::from(input.u8()) % streams.len().max(1);
                let len = usize::from(input.u8()) * 64;
                if let Some(s) = streams.get_mut(i) {
                    let _ = s.write(&buf[..len]);
                }
            }
            5 => {
                let i = usize::from(input.u8()) % streams.len().max(1);
                if let Some(s) = streams.get_mut(i) {
                    let _ = s.read(&mut buf);
                }
            }
            6 => {
                let i = usize::from(input.u8());
                let how = input.u8();
                let n = streams.len().max(1);
                if let Some(s) = streams.get(i % n) {
                    match how % 3 {
                        0 => {
                            host_closed = true;
                            let _ = s.shutdown(std::net::Shutdown::Write);
                        }
                        1 => {
                            let _ = s.shutdown(std::net::Shutdown::Read);
                        }
                        _ => {
                            host_closed = true;
                            streams.remove(i % n);
                        }
                    }
                }
            }
            _ => {
                let port = GUEST_PORTS[usize::from(input.u8() & 3)];
                let garbage = input.u8();
                if host_connects == MAX_HOST_CONNECTS {
                    continue;
                }
                host_connects += 1;
                if let Ok(mut s) = UnixStream::connect(&f.path) {
                    let line = match garbage % 4 {
                        0 => format!("CONNECT {port}\n"),
                        1 => format!("connect {port}\r\n"),
                        2 => format!("CONNECT {}\n", u64::from(port) << 32),
                        _ => "CONNECT\n".to_string(),
                    };
                    let _ = s.write_all(line.as_bytes());
                    if s.set_nonblocking(true).is_ok() {
                        streams.push(s);
                    }
                }
            }
        }
        assert!(m.connection_count() + m.handshake_count() <= MAX_CONNECTIONS);
    }
    drop(m);
    drop(streams);
    // Connections the muxer made to the listeners and nobody accepted.
    let mut rest = Vec::new();
    accept_all(f, &mut rest);
});
