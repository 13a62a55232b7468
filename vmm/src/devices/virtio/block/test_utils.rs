//! Builders for virtio-blk requests in guest memory, shared by the unit
//! tests and (later) a fuzz target.

use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::HEADER_LEN;
use crate::devices::virtio::test_chains::{readable, writable, DATA_ADDR};

/// Where `Layout::standard` puts the header.
pub const HEADER_ADDR: u64 = DATA_ADDR;
/// Where it puts the status byte.
pub const STATUS_ADDR: u64 = DATA_ADDR + 0x100;
/// Where its data buffer starts.
pub const BUF_ADDR: u64 = DATA_ADDR + 0x1000;

/// The 16 header bytes of a request.
pub fn header_bytes(request_type: u32, sector: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Write a header at `HEADER_ADDR` and poison the status byte (0xff).
pub fn put_header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
    mem.write_slice(
        &header_bytes(request_type, sector),
        GuestAddress(HEADER_ADDR),
    )
    .expect("header in test memory");
    mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR))
        .expect("status in test memory");
}

/// The status byte the device wrote.
pub fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS_ADDR)).expect("status")
}

/// header (readable) + `len` bytes to read into (writable) + status.
pub fn read_chain(len: u32) -> Vec<RawDescriptor> {
    vec![
        readable(HEADER_ADDR, HEADER_LEN as u32),
        writable(BUF_ADDR, len),
        writable(STATUS_ADDR, 1),
    ]
}

/// header + `len` bytes of data (both readable) + status.
pub fn write_chain(len: u32) -> Vec<RawDescriptor> {
    vec![
        readable(HEADER_ADDR, HEADER_LEN as u32),
        readable(BUF_ADDR, len),
        writable(STATUS_ADDR, 1),
    ]
}

/// header + status only (FLUSH, unknown types).
pub fn bare_chain() -> Vec<RawDescriptor> {
    vec![
        readable(HEADER_ADDR, HEADER_LEN as u32),
        writable(STATUS_ADDR, 1),
    ]
}
