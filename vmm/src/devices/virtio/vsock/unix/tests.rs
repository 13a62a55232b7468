//! The muxer with real Unix sockets: the CONNECT handshake (good and bad
//! lines), guest connections, credit, back-pressure, shutdown and RST.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vmm_sys_util::tempdir::TempDir;

use super::*;
use crate::devices::virtio::vsock::packet::{VsockHeader, VsockPacket};
use crate::devices::virtio::vsock::test_utils::{guest_hdr, TEST_CID};
use crate::devices::virtio::vsock::uapi::*;
use crate::devices::virtio::vsock::{
    VsockChannel, VsockEpollListener, VsockError, CONN_TX_BUF_SIZE, MAX_PKT_DATA,
};

const HOST_PORT: u32 = 1 << 30;

struct Fx {
    _dir: TempDir,
    path: PathBuf,
    m: VsockMuxer,
}

fn fx() -> Fx {
    let dir = TempDir::new_with_prefix("/tmp/vsock-test").unwrap();
    let path = dir.as_path().join("v.sock");
    let m = VsockMuxer::new(TEST_CID, &path).unwrap();
    Fx { _dir: dir, path, m }
}

/// Let the kernel deliver, then run the muxer's event handling.
fn pump(m: &mut VsockMuxer) {
    std::thread::sleep(Duration::from_millis(20));
    m.notify();
}

fn drain(m: &mut VsockMuxer) -> Vec<(VsockHeader, Vec<u8>)> {
    drain_cap(m, MAX_PKT_DATA)
}

fn drain_cap(m: &mut VsockMuxer, cap: usize) -> Vec<(VsockHeader, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pkt = VsockPacket::new();
    for _ in 0..1000 {
        pkt.set_rx_capacity(cap);
        match m.recv_pkt(&mut pkt) {
            Ok(()) => out.push((pkt.hdr, pkt.data().to_vec())),
            Err(VsockError::NoData) => break,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

fn send(m: &mut VsockMuxer, hdr: VsockHeader, data: &[u8]) -> Result<(), VsockError> {
    m.send_pkt(&VsockPacket::with_data(hdr, data))
}

fn ops(pkts: &[(VsockHeader, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|p| p.0.op).collect()
}

fn read_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn is_closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// A host connection to guest port 5000, accepted by the guest.
fn host_connection(f: &mut Fx) -> UnixStream {
    let mut c = UnixStream::connect(&f.path).unwrap();
    c.write_all(b"CONNECT 5000\n").unwrap();
    pump(&mut f.m);
    let pkts = drain(&mut f.m);
    assert_eq!(ops(&pkts), vec![OP_REQUEST]);
    let req = pkts[0].0;
    assert_eq!((req.src_cid, req.dst_cid), (2, TEST_CID));
    assert_eq!((req.dst_port, req.src_port), (5000, HOST_PORT));
    send(&mut f.m, guest_hdr(OP_RESPONSE, 5000, HOST_PORT), &[]).unwrap();
    assert_eq!(read_line(&mut c), format!("OK {HOST_PORT}"));
    c
}

#[test]
fn host_connection_carries_data_both_ways() {
    let mut f = fx();
    let mut c = host_connection(&mut f);
    send(&mut f.m, guest_hdr(OP_RW, 5000, HOST_PORT), b"to host").unwrap();
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to host");
    c.write_all(b"to guest").unwrap();
    pump(&mut f.m);
    let pkts = drain(&mut f.m);
    assert_eq!(ops(&pkts), vec![OP_RW]);
    assert_eq!(pkts[0].1, b"to guest");
    assert_eq!(pkts[0].0.buf_alloc, CONN_TX_BUF_SIZE);
    assert_eq!(pkts[0].0.fwd_cnt, 7);
}

#[test]
fn lowercase_keyword_is_accepted() {
    assert_eq!(parse_connect_line(b"connect 52"), Ok(52));
    assert_eq!(parse_connect_line(b"Connect 4294967295\r"), Ok(u32::MAX));
}

#[test]
fn bad_connect_lines_are_refused() {
    for bad in [
        &b"HELLO 1"[..],
        b"CONNECT",
        b"CONNECT ",
        b"CONNECT 4294967296",
        b"CONNECT -1",
        b"CONNECT 12x",
        b"CONNECT  5",
        b"\xff\xfe",
    ] {
        assert!(parse_connect_line(bad).is_err(), "{bad:?}");
    }
    let mut f = fx();
    for line in [
        &b"garbage\n"[..],
        b"CONNECT 99999999999\n",
        &[b'A'; 40][..],
        b"CONNECT 1",
    ] {
        let mut c = UnixStream::connect(&f.path).unwrap();
        c.write_all(line).unwrap();
        if line.len() < 20 && !line.ends_with(b"\n") {
            // Half a line, then the client gives up.
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        pump(&mut f.m);
        assert!(is_closed(&mut c), "{line:?} was not refused");
        assert!(drain(&mut f.m).is_empty());
    }
    assert_eq!(f.m.handshake_count(), 0);
    assert_eq!(f.m.connection_count(), 0);
}

#[test]
fn host_connection_is_closed_when_nothing_listens_in_the_guest() {
    let mut f = fx();
    let mut c = UnixStream::connect(&f.path).unwrap();
    c.write_all(b"CONNECT 7\n").unwrap();
    pump(&mut f.m);
    assert_eq!(ops(&drain(&mut f.m)), vec![OP_REQUEST]);
    send(&mut f.m, guest_hdr(OP_RST, 7, HOST_PORT), &[]).unwrap();
    assert!(is_closed(&mut c));
    assert_eq!(f.m.connection_count(), 0);
}

#[test]
fn host_connection_times_out_without_a_response() {
    let mut f = fx();
    let mut c = UnixStream::connect(&f.path).unwrap();
    c.write_all(b"CONNECT 7\n").unwrap();
    pump(&mut f.m);
    assert_eq!(ops(&drain(&mut f.m)), vec![OP_REQUEST]);
    let t = f.m.poll_timeout().expect("a deadline");
    assert!(t <= Duration::from_millis(2100));
    std::thread::sleep(t);
    f.m.notify();
    assert_eq!(ops(&drain(&mut f.m)), vec![OP_RST]);
    assert!(is_closed(&mut c));
    assert_eq!(f.m.connection_count(), 0);
}

#[test]
fn guest_connection_to_a_host_listener() {
    let f = fx();
    let mut m = f.m;
    let listener = UnixListener::bind(format!("{}_52", f.path.display())).unwrap();
    send(&mut m, guest_hdr(OP_REQUEST, 1000, 52), &[]).unwrap();
    let pkts = drain(&mut m);
    assert_eq!(ops(&pkts), vec![OP_RESPONSE]);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (52, 1000));
    let (mut s, _) = listener.accept().unwrap();
    send(&mut m, guest_hdr(OP_RW, 1000, 52), b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s.write_all(b"pong").unwrap();
    pump(&mut m);
    let pkts = drain(&mut m);
    assert_eq!(ops(&pkts), vec![OP_RW]);
    assert_eq!(pkts[0].1, b"pong");
}

/// A header-only rx buffer (no room for data) while host data waits: a
/// 0-byte read of the host socket is not its EOF. The buffer carries a
/// credit update; the data goes into the next buffer with room, and the
/// connection stays up (found by the vsock_muxer fuzz target).
#[test]
fn header_only_rx_buffer_is_not_a_host_eof() {
    let f = fx();
    let mut m = f.m;
    let listener = UnixListener::bind(format!("{}_54", f.path.display())).unwrap();
    send(&mut m, guest_hdr(OP_REQUEST, 1000, 54), &[]).unwrap();
    assert_eq!(ops(&drain(&mut m)), vec![OP_RESPONSE]);
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(b"pong").unwrap();
    pump(&mut m);
    let pkts = drain_cap(&mut m, 0);
    assert!(!ops(&pkts).contains(&OP_SHUTDOWN), "{:?}", ops(&pkts));
    assert!(pkts.iter().all(|p| p.1.is_empty()));
    let pkts = drain(&mut m);
    assert_eq!(ops(&pkts), vec![OP_RW]);
    assert_eq!(pkts[0].1, b"pong");
    send(&mut m, guest_hdr(OP_RW, 1000, 54), b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
}

#[test]
fn guest_connection_without_a_listener_is_reset() {
    let mut f = fx();
    send(&mut f.m, guest_hdr(OP_REQUEST, 1000, 53), &[]).unwrap();
    let pkts = drain(&mut f.m);
    assert_eq!(ops(&pkts), vec![OP_RST]);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (53, 1000));
    assert_eq!(pkts[0].0.dst_cid, TEST_CID);
}

#[test]
fn unknown_op_bad_type_and_strays_get_rst() {
    let mut f = fx();
    send(&mut f.m, guest_hdr(99, 1000, 52), &[]).unwrap();
    let mut h = guest_hdr(OP_REQUEST, 1000, 52);
    h.type_ = 2;
    send(&mut f.m, h, &[]).unwrap();
    send(&mut f.m, guest_hdr(OP_RW, 1000, 52), b"stray").unwrap();
    send(&mut f.m, guest_hdr(OP_RST, 1000, 52), &[]).unwrap();
    assert_eq!(ops(&drain(&mut f.m)), vec![OP_RST, OP_RST, OP_RST]);
    // An unknown op on a live connection resets it too.
    let mut c = host_connection(&mut f);
    send(&mut f.m, guest_hdr(42, 5000, HOST_PORT), &[]).unwrap();
    assert_eq!(ops(&drain(&mut f.m)), vec![OP_RST]);
    assert!(is_closed(&mut c));
}

#[test]
fn host_reads_stop_at_the_guest_credit() {
    let mut f = fx();
    let mut c = UnixStream::connect(&f.path).unwrap();
    c.write_all(b"CONNECT 5000\n").unwrap();
    pump(&mut f.m);
    drain(&mut f.m);
    let mut resp = guest_hdr(OP_RESPONSE, 5000, HOST_PORT);
    resp.buf_alloc = 8;
    send(&mut f.m, resp, &[]).unwrap();
    read_line(&mut c);
    c.write_all(&[1u8; 20]).unwrap();
    pump(&mut f.m);
    let pkts = drain(&mut f.m);
    assert_eq!(ops(&pkts), vec![OP_RW, OP_CREDIT_REQUEST]);
    assert_eq!(pkts[0].1.len(), 8);
    pump(&mut f.m);
    assert!(drain(&mut f.m).is_empty(), "read past the guest's credit");
    let mut upd = guest_hdr(OP_CREDIT_UPDATE, 5000, HOST_PORT);
    upd.buf_alloc = 8;
    upd.fwd_cnt = 8;
    send(&mut f.m, upd, &[]).unwrap();
    pump(&mut f.m);
    let pkts = drain(&mut f.m);
    assert_eq!(pkts[0].1.len(), 8);
}

#[test]
fn credit_request_is_answered() {
    let mut f = fx();
    let _c = host_connection(&mut f);
    send(&mut f.m, guest_hdr(OP_CREDIT_REQUEST, 5000, HOST_PORT), &[]).unwrap();
    let pkts = drain(&mut f.m);
    assert_eq!(ops(&pkts), vec![OP_CREDIT_UPDATE]);
    assert_eq!(pkts[0].0.buf_alloc, CONN_TX_BUF_SIZE);
}

#[test]
fn a_host_that_does_not_read_stalls_only_its_guest_data() {
    let mut f = fx();
    let mut c = host_connection(&mut f);
    let chunk = vec![9u8; 32 * 1024];
    let mut sent = 0usize;
    let mut busy = false;
    for _ in 0..1000 {
        match send(&mut f.m, guest_hdr(OP_RW, 5000, HOST_PORT), &chunk) {
            Ok(()) => sent += chunk.len(),
            Err(VsockError::Busy) => {
                busy = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(busy, "the tx buffer grew without bound ({sent} bytes)");
    // Socket buffer plus at most one tx buffer.
    assert!(sent < 8 << 20, "{sent}");
    // The host drains: the buffer flushes and the guest gets credit back.
    c.set_nonblocking(true).unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..200 {
        match c.read(&mut buf) {
            Ok(n) => total += n,
            Err(_) => {
                pump(&mut f.m);
                if total >= sent {
                    break;
                }
            }
        }
    }
    pump(&mut f.m);
    let pkts = drain(&mut f.m);
    assert!(ops(&pkts).contains(&OP_CREDIT_UPDATE), "{:?}", ops(&pkts));
    assert!(send(&mut f.m, guest_hdr(OP_RW, 5000, HOST_PORT), &chunk).is_ok());
}

#[test]
fn guest_shutdown_flushes_then_resets() {
    let mut f = fx();
    let mut c = host_connection(&mut f);
    send(&mut f.m, guest_hdr(OP_RW, 5000, HOST_PORT), b"last words").unwrap();
    let mut h = guest_hdr(OP_SHUTDOWN, 5000, HOST_PORT);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    send(&mut f.m, h, &[]).unwrap();
    assert_eq!(ops(&drain(&mut f.m)), vec![OP_RST]);
    let mut got = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    assert_eq!(f.m.connection_count(), 0);
}

#[test]
fn host_close_sends_shutdown_and_waits_for_rst() {
    let mut f = fx();
    let c = host_connection(&mut f);
    drop(c);
    pump(&mut f.m);
    let pkts = drain(&mut f.m);
    assert_eq!(ops(&pkts), vec![OP_SHUTDOWN]);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(f.m.connection_count(), 1);
    send(&mut f.m, guest_hdr(OP_RST, 5000, HOST_PORT), &[]).unwrap();
    assert_eq!(f.m.connection_count(), 0);
}

#[test]
fn many_connections_get_distinct_host_ports() {
    let mut f = fx();
    let clients: Vec<UnixStream> = (0..20)
        .map(|i| {
            let mut c = UnixStream::connect(&f.path).unwrap();
            c.write_all(format!("CONNECT {}\n", 6000 + i).as_bytes())
                .unwrap();
            c
        })
        .collect();
    pump(&mut f.m);
    pump(&mut f.m);
    let pkts = drain(&mut f.m);
    assert_eq!(pkts.len(), 20);
    let mut ports: Vec<u32> = pkts.iter().map(|p| p.0.src_port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 20);
    assert!(ports.iter().all(|&p| p >= HOST_PORT));
    drop(clients);
}

#[test]
fn socket_path_checks() {
    let dir = TempDir::new_with_prefix("/tmp/vsock-test").unwrap();
    let missing = dir.as_path().join("nope/v.sock");
    let e = VsockMuxer::new(3, &missing).unwrap_err();
    assert!(matches!(e, MuxerError::DirMissing(_)));
    assert!(e.to_string().contains("does not exist"));
    let file = dir.as_path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        VsockMuxer::new(3, &file),
        Err(MuxerError::NotASocket(_))
    ));
    let long = dir.as_path().join("x".repeat(120));
    assert!(matches!(
        VsockMuxer::new(3, &long),
        Err(MuxerError::PathTooLong(_))
    ));
    // A stale socket (nobody listening) is replaced; a live one is refused.
    let path = dir.as_path().join("v.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let m = VsockMuxer::new(3, &path).unwrap();
    assert!(matches!(
        VsockMuxer::new(3, &path),
        Err(MuxerError::InUse(_))
    ));
    drop(m);
    assert!(!path.exists(), "the socket must be removed on drop");
}

#[test]
fn a_restored_muxer_does_not_reuse_the_templates_host_ports() {
    let mut starts = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut m = VsockMuxer::new(3, &dir.path().join("v.sock")).unwrap();
        crate::devices::virtio::vsock::VsockBackend::restoring(&mut m);
        let port = m.alloc_host_port_for_tests();
        assert!(port > HOST_PORT && port <= u32::MAX >> 1, "{port:#x}");
        starts.push(port);
    }
    assert_ne!(
        starts[0], starts[1],
        "two restored muxers start at the same port"
    );
}
