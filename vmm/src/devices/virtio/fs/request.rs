//! What the VMM does with guest FUSE requests once the backend is gone:
//! complete each one with `EIO`, so the guest's file system calls fail
//! instead of hanging. Everything here reads guest-controlled memory and is
//! bounded: at most `FUSE_IN_HEADER_LEN` bytes are read and
//! `FUSE_OUT_HEADER_LEN` written per chain, and `virtio-queue` bounds
//! chain length and catches loops.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

/// `struct fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid,
/// total_extlen, padding.
pub const FUSE_IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header`: len, error, unique.
pub const FUSE_OUT_HEADER_LEN: usize = 16;
/// `FUSE_FORGET`: no reply.
pub const FUSE_FORGET: u32 = 2;
/// `FUSE_BATCH_FORGET`: no reply.
pub const FUSE_BATCH_FORGET: u32 = 42;
/// The errno the guest sees.
pub const EIO: i32 = 5;

/// Why one guest chain could not be answered normally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsRequestError {
    /// Fewer readable bytes than a FUSE header.
    #[error("request header too short ({0} bytes)")]
    HeaderTooShort(usize),
    /// A readable descriptor after a writable one.
    #[error("readable descriptor after a writable one")]
    WrongDirection,
    /// Not enough writable room for the reply header.
    #[error("reply buffer too short ({0} bytes)")]
    ReplyTooShort(usize),
    /// A descriptor pointing outside guest memory.
    #[error("descriptor outside guest memory")]
    OutsideMemory,
}

/// The fields of a FUSE request header we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuseInHeader {
    /// Total request length claimed by the guest (not trusted).
    pub len: u32,
    /// FUSE opcode.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
}

/// Parse a FUSE request header from the start of `bytes` (a cargo-fuzz
/// entry point: any input is fine).
pub fn parse_fuse_in_header(bytes: &[u8]) -> Result<FuseInHeader, FsRequestError> {
    let head = bytes
        .get(..FUSE_IN_HEADER_LEN)
        .ok_or(FsRequestError::HeaderTooShort(bytes.len()))?;
    let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let mut unique = [0u8; 8];
    unique.copy_from_slice(&head[8..16]);
    Ok(FuseInHeader {
        len: u32_at(0),
        opcode: u32_at(4),
        unique: u64::from_le_bytes(unique),
    })
}

/// The `EIO` reply for request `unique`.
pub fn eio_reply(unique: u64) -> [u8; FUSE_OUT_HEADER_LEN] {
    let mut out = [0u8; FUSE_OUT_HEADER_LEN];
    out[0..4].copy_from_slice(&(FUSE_OUT_HEADER_LEN as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(-EIO).to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    out
}

/// Gather up to `buf.len()` bytes from `descs` (in order) into `buf`.
fn gather(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    buf: &mut [u8],
) -> Result<usize, FsRequestError> {
    let mut filled = 0;
    for d in descs {
        if filled == buf.len() {
            break;
        }
        let n = (d.len() as usize).min(buf.len() - filled);
        mem.read_slice(&mut buf[filled..filled + n], d.addr())
            .map_err(|_| FsRequestError::OutsideMemory)?;
        filled += n;
    }
    Ok(filled)
}

/// Scatter `bytes` over `descs`; returns how many were written.
fn scatter(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    bytes: &[u8],
) -> Result<usize, FsRequestError> {
    let mut done = 0;
    for d in descs {
        if done == bytes.len() {
            break;
        }
        let n = (d.len() as usize).min(bytes.len() - done);
        mem.write_slice(&bytes[done..done + n], d.addr())
            .map_err(|_| FsRequestError::OutsideMemory)?;
        done += n;
    }
    Ok(done)
}

/// Answer one chain: `Ok(bytes written)`; no reply for forgets and for
/// anything on the hiprio queue.
pub fn fail_chain(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    hiprio: bool,
) -> Result<u32, FsRequestError> {
    let split = descs
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(split);
    if writable.iter().any(|d| !d.is_write_only()) {
        return Err(FsRequestError::WrongDirection);
    }
    let mut head = [0u8; FUSE_IN_HEADER_LEN];
    let got = gather(mem, readable, &mut head)?;
    let header = parse_fuse_in_header(&head[..got])?;
    if hiprio || matches!(header.opcode, FUSE_FORGET | FUSE_BATCH_FORGET) {
        return Ok(0);
    }
    let room: u64 = writable.iter().map(|d| u64::from(d.len())).sum();
    if room < FUSE_OUT_HEADER_LEN as u64 {
        return Err(FsRequestError::ReplyTooShort(room as usize));
    }
    Ok(scatter(mem, writable, &eio_reply(header.unique))? as u32)
}

/// Longest chain we collect (virtio-queue stops loops at the queue size;
/// this caps the work per chain independently of it).
const MAX_CHAIN: usize = 1024;

/// What `fail_pending` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Chains completed with EIO (or without reply, for forgets).
    pub completed: usize,
    /// Malformed chains (completed with length 0).
    pub malformed: usize,
    /// Whether the driver wants an interrupt.
    pub notify: bool,
}

/// Take over `queue` from a dead backend: continue after the last used
/// entry the backend published, complete every available chain, and tell
/// whether to interrupt. `resync` is true for the first call after the
/// backend died.
pub fn fail_pending(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    hiprio: bool,
    resync: bool,
) -> Drained {
    let mut out = Drained::default();
    if !queue.ready() {
        return out;
    }
    if resync {
        match queue.used_idx(mem, Ordering::Acquire) {
            Ok(used) => {
                queue.set_next_used(used.0);
                queue.set_next_avail(used.0);
            }
            Err(e) => {
                crate::limited!(warn, error = ?e, "virtio-fs used ring unreadable");
                return out;
            }
        }
    }
    // At most one pass over the ring: a guest that keeps adding cannot keep us here.
    for _ in 0..queue.size() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.take(MAX_CHAIN).collect();
        let len = match fail_chain(mem, &descs, hiprio) {
            Ok(len) => {
                out.completed += 1;
                len
            }
            Err(e) => {
                crate::limited!(warn, error = %e, "malformed virtio-fs request");
                out.malformed += 1;
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            crate::limited!(warn, error = ?e, "cannot complete a virtio-fs request");
            break;
        }
    }
    out.notify = out.completed + out.malformed > 0 && queue.needs_notification(mem).unwrap_or(true);
    out
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
