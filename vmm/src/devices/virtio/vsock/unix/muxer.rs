//! `VsockMuxer`: every guest connection, the listening socket and the
//! host connections still in their `CONNECT` handshake, behind one epoll
//! fd that the device thread polls.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::local::{parse_connect_line, prepare_socket_path, CONNECT_LINE_MAX};
use super::MuxerError;
use crate::devices::virtio::vsock::csm::VsockConnection;
use crate::devices::virtio::vsock::packet::{VsockHeader, VsockPacket};
use crate::devices::virtio::vsock::uapi::*;
use crate::devices::virtio::vsock::{
    VsockBackend, VsockChannel, VsockEpollListener, VsockError, CONN_TIMEOUT, CONN_TX_BUF_SIZE,
    MAX_CONNECTIONS, VSOCK_HOST_CID,
};

/// First host port handed to host-initiated connections.
pub const HOST_PORT_FIRST: u32 = 1 << 30;
/// Most RSTs for unknown connections queued towards the guest; past it the
/// tx queue waits for the guest to take rx buffers.
const MAX_RST_QUEUE: usize = 256;

/// (host port, guest port).
type ConnKey = (u32, u32);

enum RxItem {
    Conn(ConnKey),
    Rst { local_port: u32, peer_port: u32 },
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The Unix-socket backend.
pub struct VsockMuxer {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, VsockConnection<UnixStream>>,
    handshakes: HashMap<RawFd, Handshake>,
    conn_fds: HashMap<RawFd, ConnKey>,
    registered: HashMap<RawFd, EventSet>,
    rxq: VecDeque<RxItem>,
    rst_queued: usize,
    next_port: u32,
}

impl std::fmt::Debug for VsockMuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockMuxer")
            .field("path", &self.path)
            .field("conns", &self.conns.len())
            .finish()
    }
}

fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and its size is passed.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r != 0 {
        // EAGAIN (backlog full) counts as refused: we never block here.
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

impl VsockMuxer {
    /// Listen on `path` (see `prepare_socket_path`) for guest `cid`.
    pub fn new(cid: u64, path: &Path) -> Result<Self, MuxerError> {
        prepare_socket_path(path)?;
        let listener = UnixListener::bind(path).map_err(|source| MuxerError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let bind_err = |source| MuxerError::Bind {
            path: path.to_owned(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let mut m = VsockMuxer {
            cid,
            path: path.to_owned(),
            listener,
            epoll,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            conn_fds: HashMap::new(),
            registered: HashMap::new(),
            rxq: VecDeque::new(),
            rst_queued: 0,
            next_port: HOST_PORT_FIRST,
        };
        let fd = m.listener.as_raw_fd();
        m.set_interest(fd, EventSet::IN)
            .map_err(MuxerError::Epoll)?;
        Ok(m)
    }

    /// The listening socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Live connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Host connections still in the `CONNECT` handshake.
    pub fn handshake_count(&self) -> usize {
        self.handshakes.len()
    }

    fn set_interest(&mut self, fd: RawFd, want: EventSet) -> std::io::Result<()> {
        let current = self.registered.get(&fd).copied();
        let op = match (current, want.is_empty()) {
            (Some(c), false) if c == want => return Ok(()),
            (Some(_), false) => ControlOperation::Modify,
            (None, false) => ControlOperation::Add,
            (Some(_), true) => ControlOperation::Delete,
            (None, true) => return Ok(()),
        };
        self.epoll.ctl(op, fd, EpollEvent::new(want, fd as u64))?;
        if want.is_empty() {
            self.registered.remove(&fd);
        } else {
            self.registered.insert(fd, want);
        }
        Ok(())
    }

    fn at_limit(&self) -> bool {
        self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
    }

    fn enqueue_rst(&mut self, hdr: &VsockHeader) {
        self.rxq.push_back(RxItem::Rst {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        });
        self.rst_queued += 1;
    }

    /// Queue what the connection has for the guest, update its epoll
    /// interest, or drop it when it is finished.
    fn after_conn(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_removable() {
            self.remove_conn(key);
            return;
        }
        if conn.has_pending_rx() && !conn.in_rxq {
            conn.in_rxq = true;
            self.rxq.push_back(RxItem::Conn(key));
        }
        let (r, w) = conn.interest();
        let fd = conn.stream().as_raw_fd();
        let mut want = EventSet::empty();
        if r {
            want |= EventSet::IN;
        }
        if w {
            want |= EventSet::OUT;
        }
        if let Err(e) = self.set_interest(fd, want) {
            crate::limited!(warn, error = %e, "vsock epoll update failed; resetting connection");
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.kill();
            }
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            let _ = self.set_interest(fd, EventSet::empty());
            self.conn_fds.remove(&fd);
        }
    }

    fn insert_conn(&mut self, key: ConnKey, conn: VsockConnection<UnixStream>) {
        self.conn_fds.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.after_conn(key);
    }

    /// The next host port (tests).
    #[cfg(test)]
    pub fn alloc_host_port_for_tests(&mut self) -> u32 {
        self.alloc_host_port()
    }

    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = if port == u32::MAX >> 1 {
                HOST_PORT_FIRST
            } else {
                port + 1
            };
            // At most MAX_CONNECTIONS ports are taken, so this ends.
            if !self.conns.keys().any(|k| k.0 == port) {
                return port;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.at_limit() {
                        crate::limited!(
                            warn,
                            "vsock connection limit reached; host connection refused"
                        );
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if self.set_interest(fd, EventSet::IN).is_err() {
                        continue;
                    }
                    let deadline = Instant::now() + CONN_TIMEOUT;
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                            deadline,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::limited!(warn, error = %e, "vsock accept failed");
                    return;
                }
            }
        }
    }

    /// Read the `CONNECT` line byte by byte (so no stream data is taken).
    fn handle_handshake(&mut self, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            if h.line.len() >= CONNECT_LINE_MAX {
                tracing::debug!("vsock CONNECT line too long; closing");
                break None;
            }
            match h.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => match parse_connect_line(&h.line) {
                    Ok(port) => break Some(port),
                    Err(e) => {
                        tracing::debug!(error = %e, "vsock CONNECT line refused; closing");
                        break None;
                    }
                },
                Ok(_) => h.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let _ = self.set_interest(fd, EventSet::empty());
        let Some(h) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(peer_port) = port else {
            return;
        };
        let local_port = self.alloc_host_port();
        let conn = VsockConnection::new_local_init(h.stream, self.cid, local_port, peer_port);
        self.insert_conn((local_port, peer_port), conn);
    }

    fn guest_connect(&mut self, hdr: &VsockHeader) {
        if self.at_limit() {
            crate::limited!(
                warn,
                "vsock connection limit reached; guest connection reset"
            );
            self.enqueue_rst(hdr);
            return;
        }
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = VsockConnection::new_peer_init(stream, self.cid, hdr.dst_port, hdr);
                self.insert_conn((hdr.dst_port, hdr.src_port), conn);
            }
            Err(e) => {
                crate::limited!(debug, port = hdr.dst_port, error = %e, "nothing listens for the guest's connection; reset");
                self.enqueue_rst(hdr);
            }
        }
    }

    fn sweep_deadlines(&mut self, now: Instant) {
        let expired: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            let _ = self.set_interest(fd, EventSet::empty());
            self.handshakes.remove(&fd);
        }
        let keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(c) = self.conns.get_mut(&key) {
                c.check_deadline(now);
            }
            self.after_conn(key);
        }
    }
}

impl VsockChannel for VsockMuxer {
    fn recv_pkt(&mut self, pkt: &mut VsockPacket) -> Result<(), VsockError> {
        while let Some(item) = self.rxq.pop_front() {
            match item {
                RxItem::Rst {
                    local_port,
                    peer_port,
                } => {
                    self.rst_queued -= 1;
                    pkt.hdr = VsockHeader {
                        src_cid: VSOCK_HOST_CID,
                        dst_cid: self.cid,
                        src_port: local_port,
                        dst_port: peer_port,
                        len: 0,
                        type_: VSOCK_TYPE_STREAM,
                        op: OP_RST,
                        flags: 0,
                        buf_alloc: CONN_TX_BUF_SIZE,
                        fwd_cnt: 0,
                    };
                    return Ok(());
                }
                RxItem::Conn(key) => {
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    conn.in_rxq = false;
                    let r = conn.recv_pkt(pkt);
                    self.after_conn(key);
                    if r.is_ok() {
                        return Ok(());
                    }
                }
            }
        }
        Err(VsockError::NoData)
    }

    fn send_pkt(&mut self, pkt: &VsockPacket) -> Result<(), VsockError> {
        if self.rst_queued >= MAX_RST_QUEUE {
            return Err(VsockError::Busy);
        }
        let hdr = pkt.hdr;
        if hdr.type_ != VSOCK_TYPE_STREAM {
            crate::limited!(
                debug,
                type_ = hdr.type_,
                "vsock packet of unknown type; reset"
            );
            if hdr.op != OP_RST {
                self.enqueue_rst(&hdr);
            }
            return Ok(());
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            let r = conn.send_pkt(pkt);
            self.after_conn(key);
            return r;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(&hdr),
            OP_RST => {}
            op => {
                crate::limited!(debug, op, "vsock packet for no connection; reset");
                self.enqueue_rst(&hdr);
            }
        }
        Ok(())
    }

    fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }
}

impl VsockEpollListener for VsockMuxer {
    fn polled_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn notify(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        // Bounded: whatever is still ready wakes the device thread again.
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::limited!(error, error = %e, "vsock muxer epoll wait failed");
                    break;
                }
            };
            if n == 0 {
                break;
            }
            for ev in &events[..n] {
                let fd = ev.data() as RawFd;
                let set = ev.event_set();
                let bad = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
                if fd == self.listener.as_raw_fd() {
                    self.accept_all();
                } else if self.handshakes.contains_key(&fd) {
                    self.handle_handshake(fd);
                } else if let Some(&key) = self.conn_fds.get(&fd) {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.notify(
                            bad || set.contains(EventSet::IN),
                            bad || set.contains(EventSet::OUT),
                        );
                    }
                    self.after_conn(key);
                } else {
                    let _ = self.set_interest(fd, EventSet::empty());
                }
            }
        }
        self.sweep_deadlines(Instant::now());
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let conns = self.conns.values().filter_map(|c| c.deadline());
        let handshakes = self.handshakes.values().map(|h| h.deadline);
        conns
            .chain(handshakes)
            .min()
            .map(|d| d.saturating_duration_since(now) + Duration::from_millis(1))
    }
}

impl VsockBackend for VsockMuxer {
    fn set_guest_cid(&mut self, cid: u64) {
        self.cid = cid;
    }

    fn restoring(&mut self) {
        // A random start in the host-port range: the template's muxer
        // counted from HOST_PORT_FIRST, and a connection the guest still
        // holds from it (its transport reset not handled yet) must not
        // take the packets of a new one with the same ports.
        let mut b = [0u8; 4];
        let r = match crate::devices::virtio::rng::fill_random(&mut b) {
            Ok(()) => u32::from_le_bytes(b),
            // No entropy: the clock's nanoseconds still move the start.
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(1),
        };
        let span = (u32::MAX >> 1) - HOST_PORT_FIRST;
        self.next_port = HOST_PORT_FIRST + 1 + r % span;
    }

    fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in fds {
            let _ = self.set_interest(fd, EventSet::empty());
            self.handshakes.remove(&fd);
        }
        self.rxq.clear();
        self.rst_queued = 0;
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        });
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
