//! One vsock stream between a guest port and a host socket.
//!
//! Credit: we advertise `CONN_TX_BUF_SIZE` as our `buf_alloc` and count in
//! `fwd_cnt` the bytes written to the host socket, so the guest may have at
//! most one tx buffer's worth in flight; host data is read only when the
//! guest has credit (`peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`).

use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::TxBuf;
use crate::devices::virtio::vsock::packet::{VsockHeader, VsockPacket};
use crate::devices::virtio::vsock::uapi::*;
use crate::devices::virtio::vsock::{
    VsockError, CONN_CREDIT_UPDATE_THRESHOLD, CONN_TIMEOUT, CONN_TX_BUF_SIZE, VSOCK_HOST_CID,
};

/// The host side of a connection.
pub trait ConnStream: Read + Write + AsRawFd + Send {
    /// Half-close: no more writes.
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl ConnStream for UnixStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for RESPONSE.
    LocalInit,
    /// Data flows both ways.
    Established,
    /// The host socket ended; SHUTDOWN sent, waiting for the guest's RST.
    LocalClosed,
    /// The guest shut down both ways; flushing buffered data, then RST.
    PeerClosed,
    /// Finished: an RST is pending or the connection can be dropped.
    Killed,
}

const P_RST: u8 = 1;
const P_REQUEST: u8 = 2;
const P_RESPONSE: u8 = 4;
const P_SHUTDOWN: u8 = 8;
const P_RW: u8 = 16;
const P_CREDIT_UPDATE: u8 = 32;
const P_CREDIT_REQUEST: u8 = 64;

/// A connection and its flow-control counters.
#[derive(Debug)]
pub struct VsockConnection<S: ConnStream> {
    stream: S,
    state: ConnState,
    peer_cid: u64,
    local_port: u32,
    peer_port: u32,
    tx_buf: TxBuf,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_to_peer: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    pending: u8,
    peer_shutdown: u32,
    deadline: Option<Instant>,
    removable: bool,
    /// Set while the muxer has this connection in its rx queue.
    pub in_rxq: bool,
}

impl<S: ConnStream> VsockConnection<S> {
    fn new(stream: S, state: ConnState, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        VsockConnection {
            stream,
            state,
            peer_cid,
            local_port,
            peer_port,
            tx_buf: TxBuf::new(CONN_TX_BUF_SIZE as usize),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_to_peer: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            pending: 0,
            peer_shutdown: 0,
            deadline: None,
            removable: false,
            in_rxq: false,
        }
    }

    /// A host-initiated connection: REQUEST goes to the guest, and `OK
    /// <local_port>` to the host socket once the guest answers.
    pub fn new_local_init(stream: S, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(
            stream,
            ConnState::LocalInit,
            peer_cid,
            local_port,
            peer_port,
        );
        c.pending = P_REQUEST;
        c.deadline = Some(Instant::now() + CONN_TIMEOUT);
        c
    }

    /// A guest-initiated connection whose host socket is connected.
    pub fn new_peer_init(stream: S, peer_cid: u64, local_port: u32, hdr: &VsockHeader) -> Self {
        let mut c = Self::new(
            stream,
            ConnState::Established,
            peer_cid,
            local_port,
            hdr.src_port,
        );
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c.pending = P_RESPONSE;
        c
    }

    /// The state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host socket.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Something to send to the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// Nothing left to do: drop it.
    pub fn is_removable(&self) -> bool {
        self.removable
    }

    /// Bytes buffered towards the host socket.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// What the guest may still receive.
    pub fn peer_avail_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The deadline of a handshake or shutdown, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Epoll interest: (readable, writable).
    pub fn interest(&self) -> (bool, bool) {
        let read = self.state == ConnState::Established
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.pending & P_RW == 0
            && self.peer_avail_credit() > 0;
        let write = !self.tx_buf.is_empty()
            && matches!(self.state, ConnState::Established | ConnState::PeerClosed);
        (read, write)
    }

    /// End the connection with an RST to the guest.
    pub fn kill(&mut self) {
        self.state = ConnState::Killed;
        self.pending = P_RST;
        self.deadline = None;
    }

    /// Handle an expired deadline.
    pub fn check_deadline(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            crate::limited!(
                info,
                local_port = self.local_port,
                peer_port = self.peer_port,
                state = ?self.state,
                "vsock connection timed out"
            );
            self.kill();
        }
    }

    fn need_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_to_peer).0
            >= CONN_TX_BUF_SIZE - CONN_CREDIT_UPDATE_THRESHOLD
    }

    fn header(&self, op: u16) -> VsockHeader {
        VsockHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn emit(&mut self, pkt: &mut VsockPacket, op: u16, flags: u32, len: u32) {
        pkt.hdr = self.header(op);
        pkt.hdr.flags = flags;
        pkt.hdr.len = len;
        // Every packet carries fwd_cnt, so it also serves as a credit update.
        self.last_fwd_cnt_to_peer = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
    }

    /// Fill `pkt` with the next packet for the guest.
    pub fn recv_pkt(&mut self, pkt: &mut VsockPacket) -> Result<(), VsockError> {
        if self.pending & P_RST != 0 {
            self.emit(pkt, OP_RST, 0, 0);
            self.pending = 0;
            self.removable = true;
            return Ok(());
        }
        for (bit, op) in [(P_REQUEST, OP_REQUEST), (P_RESPONSE, OP_RESPONSE)] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                self.emit(pkt, op, 0, 0);
                return Ok(());
            }
        }
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            self.emit(pkt, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0);
            return Ok(());
        }
        if self.pending & P_RW != 0 {
            if let Some(()) = self.read_data(pkt) {
                return Ok(());
            }
        }
        for (bit, op) in [
            (P_CREDIT_UPDATE, OP_CREDIT_UPDATE),
            (P_CREDIT_REQUEST, OP_CREDIT_REQUEST),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                self.emit(pkt, op, 0, 0);
                return Ok(());
            }
        }
        Err(VsockError::NoData)
    }

    /// Read host data into `pkt` as far as the guest's credit allows.
    fn read_data(&mut self, pkt: &mut VsockPacket) -> Option<()> {
        if self.state != ConnState::Established || self.peer_shutdown & SHUTDOWN_RCV != 0 {
            self.pending &= !P_RW;
            return None;
        }
        let credit = self.peer_avail_credit() as usize;
        if credit == 0 {
            self.pending &= !P_RW;
            self.pending |= P_CREDIT_REQUEST;
            return None;
        }
        let buf = pkt.rx_buf();
        if buf.is_empty() {
            // A header-only rx buffer: a 0-byte read would look like the
            // host's EOF. It carries a credit update; the data waits for a
            // buffer with room (P_RW stays set).
            self.emit(pkt, OP_CREDIT_UPDATE, 0, 0);
            return Some(());
        }
        let want = credit.min(buf.len());
        loop {
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    // The host side ended: tell the guest, wait for its RST.
                    self.pending &= !P_RW;
                    self.state = ConnState::LocalClosed;
                    self.deadline = Some(Instant::now() + CONN_TIMEOUT);
                    self.emit(pkt, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0);
                    return Some(());
                }
                Ok(n) => {
                    self.rx_cnt += Wrapping(n as u32);
                    self.emit(pkt, OP_RW, 0, n as u32);
                    return Some(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.pending &= !P_RW;
                    return None;
                }
                Err(e) => {
                    crate::limited!(debug, error = %e, "vsock host socket read failed");
                    self.kill();
                    self.emit(pkt, OP_RST, 0, 0);
                    self.pending = 0;
                    self.removable = true;
                    return Some(());
                }
            }
        }
    }

    /// Handle a packet from the guest addressed to this connection.
    /// `Err(Busy)`: the data does not fit in the tx buffer now.
    pub fn send_pkt(&mut self, pkt: &VsockPacket) -> Result<(), VsockError> {
        let hdr = &pkt.hdr;
        if hdr.op == OP_RW
            && self.state == ConnState::Established
            && pkt.data().len() > self.tx_buf.room()
        {
            // A guest over its credit (or a host socket that is not read):
            // leave the packet on the tx queue until the buffer drains.
            return Err(VsockError::Busy);
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match (hdr.op, self.state) {
            (OP_RST, _) => {
                self.state = ConnState::Killed;
                self.pending = 0;
                self.removable = true;
            }
            (_, ConnState::Killed) => {}
            (OP_RESPONSE, ConnState::LocalInit) => {
                self.state = ConnState::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                if self.stream.write_all(line.as_bytes()).is_err() {
                    self.kill();
                }
            }
            (_, ConnState::LocalInit) => self.kill(),
            (OP_RW, ConnState::Established) if self.peer_shutdown & SHUTDOWN_SEND == 0 => {
                self.write_data(pkt.data());
            }
            (OP_RW, ConnState::LocalClosed) => {}
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.pending |= P_CREDIT_UPDATE,
            (OP_SHUTDOWN, ConnState::Established | ConnState::PeerClosed) => {
                self.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.after_flush();
            }
            (OP_SHUTDOWN, ConnState::LocalClosed) => self.kill(),
            _ => {
                crate::limited!(
                    debug,
                    op = hdr.op,
                    state = ?self.state,
                    "vsock packet not valid in this state; reset"
                );
                self.kill();
            }
        }
        Ok(())
    }

    fn write_data(&mut self, data: &[u8]) {
        let mut off = 0;
        if self.tx_buf.is_empty() {
            while off < data.len() {
                match self.stream.write(&data[off..]) {
                    Ok(0) => break,
                    Ok(n) => off += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        crate::limited!(debug, error = %e, "vsock host socket write failed");
                        self.kill();
                        return;
                    }
                }
            }
            self.fwd_cnt += Wrapping(off as u32);
        }
        // Fits: send_pkt checked the room.
        let _ = self.tx_buf.push(&data[off..]);
        if self.need_credit_update() {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// After the tx buffer drained: finish a guest shutdown.
    fn after_flush(&mut self) {
        if !self.tx_buf.is_empty() {
            if self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                self.state = ConnState::PeerClosed;
            }
            return;
        }
        if self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            self.kill();
        } else if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown_write();
        }
    }

    /// The host socket is readable and/or writable.
    pub fn notify(&mut self, readable: bool, writable: bool) {
        if readable && self.state == ConnState::Established {
            self.pending |= P_RW;
        }
        if writable && !self.tx_buf.is_empty() {
            match self.tx_buf.flush_to(&mut self.stream) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(n as u32);
                    if self.need_credit_update() {
                        self.pending |= P_CREDIT_UPDATE;
                    }
                    if self.tx_buf.is_empty() {
                        self.after_flush();
                    }
                }
                Err(e) => {
                    crate::limited!(debug, error = %e, "vsock host socket write failed");
                    self.kill();
                }
            }
        }
    }
}
