//! The vsock packet header and moving packets in and out of descriptor
//! chains. Everything here treats guest memory as hostile: descriptor
//! directions, addresses, lengths and chain shape are all checked.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::config::MAX_PKT_DATA;
use crate::devices::virtio::checked_chain::{ChainError, CheckedChain};

/// Size of the packed header.
pub const HDR_SIZE: usize = 44;

/// Why a packet or chain from the guest was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than 44 readable bytes.
    #[error("header too short ({0} bytes)")]
    HeaderTooShort(usize),
    /// `len` above the packet limit.
    #[error("data length {0} over the limit")]
    DataTooLong(u32),
    /// `len` larger than the data the chain carries.
    #[error("data length {len} but the chain has {have} bytes")]
    DataMissing {
        /// Header `len`.
        len: u32,
        /// Bytes after the header.
        have: usize,
    },
    /// A write-only descriptor in a tx chain, or a read-only one in rx.
    #[error("descriptor with the wrong direction")]
    WrongDirection,
    /// A descriptor outside guest memory.
    #[error("descriptor outside guest memory")]
    OutOfMemory,
    /// The chain loops or is longer than the queue.
    #[error("descriptor chain loops or is too long")]
    ChainTooLong,
    /// An rx chain too small for a header.
    #[error("rx buffer of {0} bytes cannot hold a header")]
    RxTooSmall(usize),
    /// `dst_cid` is not the host.
    #[error("destination cid {0} is not the host")]
    WrongDstCid(u64),
    /// `src_cid` is not the guest's.
    #[error("source cid {0} is not the guest's")]
    SpoofedSrcCid(u64),
}

/// The 44-byte little-endian header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Data length.
    pub len: u32,
    /// Socket type (1 = stream).
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parse a header from the first 44 bytes of `bytes` (the fuzz entry
/// point). Checks the length limit; cids, type and op are checked by
/// `VsockHeader::check_from_guest` and the backend.
pub fn parse_header(bytes: &[u8]) -> Result<VsockHeader, PacketError> {
    if bytes.len() < HDR_SIZE {
        return Err(PacketError::HeaderTooShort(bytes.len()));
    }
    let h = VsockHeader {
        src_cid: le_u64(bytes, 0),
        dst_cid: le_u64(bytes, 8),
        src_port: le_u32(bytes, 16),
        dst_port: le_u32(bytes, 20),
        len: le_u32(bytes, 24),
        type_: le_u16(bytes, 28),
        op: le_u16(bytes, 30),
        flags: le_u32(bytes, 32),
        buf_alloc: le_u32(bytes, 36),
        fwd_cnt: le_u32(bytes, 40),
    };
    if h.len as usize > MAX_PKT_DATA {
        return Err(PacketError::DataTooLong(h.len));
    }
    Ok(h)
}

impl VsockHeader {
    /// The packed little-endian form.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A guest packet must come from the guest's CID and go to the host.
    pub fn check_from_guest(&self, guest_cid: u64) -> Result<(), PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::SpoofedSrcCid(self.src_cid));
        }
        if self.dst_cid != super::VSOCK_HOST_CID {
            return Err(PacketError::WrongDstCid(self.dst_cid));
        }
        Ok(())
    }
}

/// A packet with a reusable 64 KiB data buffer.
pub struct VsockPacket {
    /// The header; for rx packets `len` is the data written into `buf`.
    pub hdr: VsockHeader,
    buf: Box<[u8]>,
    cap: usize,
}

impl Default for VsockPacket {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VsockPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockPacket")
            .field("hdr", &self.hdr)
            .field("cap", &self.cap)
            .finish()
    }
}

impl VsockPacket {
    /// An empty packet with a full-size buffer.
    pub fn new() -> Self {
        VsockPacket {
            hdr: VsockHeader::default(),
            buf: vec![0u8; MAX_PKT_DATA].into_boxed_slice(),
            cap: MAX_PKT_DATA,
        }
    }

    /// A packet carrying `hdr` and `data` (tests and the muxer tests).
    pub fn with_data(mut hdr: VsockHeader, data: &[u8]) -> Self {
        let mut p = Self::new();
        let n = data.len().min(MAX_PKT_DATA);
        p.buf[..n].copy_from_slice(&data[..n]);
        hdr.len = n as u32;
        p.hdr = hdr;
        p
    }

    /// The data bytes (`hdr.len` of them).
    pub fn data(&self) -> &[u8] {
        &self.buf[..(self.hdr.len as usize).min(self.cap)]
    }

    /// Room for rx data: the backend writes here and sets `hdr.len`.
    pub fn rx_buf(&mut self) -> &mut [u8] {
        &mut self.buf[..self.cap]
    }

    /// Limit rx data to `cap` bytes (the guest buffer's size).
    pub fn set_rx_capacity(&mut self, cap: usize) {
        self.cap = cap.min(MAX_PKT_DATA);
        self.hdr = VsockHeader::default();
    }
}

/// The buffers of one chain, walked once by `CheckedChain` (the one chain
/// walker) and checked for direction: all device-writable for rx and
/// event buffers, all device-readable for tx.
pub fn collect_descs(
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    max: usize,
) -> Result<Vec<(GuestAddress, usize)>, PacketError> {
    let c = CheckedChain::new(chain, max).map_err(|e| match e {
        ChainError::OutsideMemory { .. } => PacketError::OutOfMemory,
        ChainError::ReadableAfterWritable | ChainError::Direction(_) => PacketError::WrongDirection,
        ChainError::Empty | ChainError::Truncated | ChainError::TooLong { .. } => {
            PacketError::ChainTooLong
        }
        ChainError::Memory(_) => PacketError::OutOfMemory,
    })?;
    let (wanted, other) = if writable {
        (c.writable, c.readable)
    } else {
        (c.readable, c.writable)
    };
    if !other.is_empty() {
        return Err(PacketError::WrongDirection);
    }
    Ok(wanted
        .into_iter()
        .map(|s| (s.addr, s.len as usize))
        .collect())
}

/// Copy `dst.len()` bytes starting `skip` bytes into the chain.
fn read_chain(
    mem: &GuestMemoryMmap,
    descs: &[(GuestAddress, usize)],
    mut skip: usize,
    dst: &mut [u8],
) -> Result<(), PacketError> {
    let mut done = 0;
    for &(addr, len) in descs {
        if done == dst.len() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(dst.len() - done);
        mem.read_slice(&mut dst[done..done + n], GuestAddress(addr.0 + skip as u64))
            .map_err(|_| PacketError::OutOfMemory)?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Read a guest tx packet (header and `len` data bytes) from `descs`.
pub fn read_tx(
    mem: &GuestMemoryMmap,
    descs: &[(GuestAddress, usize)],
    pkt: &mut VsockPacket,
) -> Result<(), PacketError> {
    let total: usize = descs.iter().map(|d| d.1).fold(0, usize::saturating_add);
    let mut hdr = [0u8; HDR_SIZE];
    if total < HDR_SIZE {
        return Err(PacketError::HeaderTooShort(total));
    }
    read_chain(mem, descs, 0, &mut hdr)?;
    let h = parse_header(&hdr)?;
    let have = total - HDR_SIZE;
    if h.len as usize > have {
        return Err(PacketError::DataMissing { len: h.len, have });
    }
    pkt.cap = MAX_PKT_DATA;
    read_chain(mem, descs, HDR_SIZE, &mut pkt.buf[..h.len as usize])?;
    pkt.hdr = h;
    Ok(())
}

/// The data room of an rx chain (total minus the header), or an error.
pub fn rx_capacity(descs: &[(GuestAddress, usize)]) -> Result<usize, PacketError> {
    let total: usize = descs.iter().map(|d| d.1).fold(0, usize::saturating_add);
    if total < HDR_SIZE {
        return Err(PacketError::RxTooSmall(total));
    }
    Ok((total - HDR_SIZE).min(MAX_PKT_DATA))
}

/// Write `bytes` (an event) across the writable buffers `descs`; all of
/// it must fit. Returns the bytes written.
pub fn write_bytes(
    mem: &GuestMemoryMmap,
    descs: &[(GuestAddress, usize)],
    bytes: &[u8],
) -> Result<u32, PacketError> {
    let capacity = descs.iter().map(|d| d.1).fold(0, usize::saturating_add);
    if capacity < bytes.len() {
        return Err(PacketError::RxTooSmall(capacity));
    }
    let mut rest = bytes;
    for &(addr, len) in descs {
        let n = rest.len().min(len);
        mem.write_slice(&rest[..n], addr)
            .map_err(|_| PacketError::OutOfMemory)?;
        rest = &rest[n..];
        if rest.is_empty() {
            break;
        }
    }
    Ok(bytes.len() as u32)
}

/// Write `pkt` (header and data) into an rx chain; returns the bytes written.
pub fn write_rx(
    mem: &GuestMemoryMmap,
    descs: &[(GuestAddress, usize)],
    pkt: &VsockPacket,
) -> Result<u32, PacketError> {
    let hdr = pkt.hdr.to_bytes();
    let data = pkt.data();
    let mut parts: [&[u8]; 2] = [&hdr, data];
    let mut written = 0usize;
    for &(addr, len) in descs {
        let mut off = 0usize;
        for part in parts.iter_mut() {
            if part.is_empty() || off == len {
                continue;
            }
            let n = part.len().min(len - off);
            mem.write_slice(&part[..n], GuestAddress(addr.0 + off as u64))
                .map_err(|_| PacketError::OutOfMemory)?;
            *part = &part[n..];
            off += n;
            written += n;
        }
        if parts.iter().all(|p| p.is_empty()) {
            break;
        }
    }
    if parts.iter().any(|p| !p.is_empty()) {
        return Err(PacketError::RxTooSmall(written));
    }
    Ok(written as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 52,
            len: 10,
            type_: 1,
            op: 5,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        assert_eq!(parse_header(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn header_limits() {
        assert_eq!(parse_header(&[0; 43]), Err(PacketError::HeaderTooShort(43)));
        let mut b = [0u8; HDR_SIZE];
        b[24..28].copy_from_slice(&(MAX_PKT_DATA as u32 + 1).to_le_bytes());
        assert!(matches!(parse_header(&b), Err(PacketError::DataTooLong(_))));
        let h = VsockHeader {
            src_cid: 4,
            dst_cid: 2,
            ..Default::default()
        };
        assert_eq!(h.check_from_guest(3), Err(PacketError::SpoofedSrcCid(4)));
        let h = VsockHeader {
            src_cid: 3,
            dst_cid: 7,
            ..Default::default()
        };
        assert_eq!(h.check_from_guest(3), Err(PacketError::WrongDstCid(7)));
    }
}
