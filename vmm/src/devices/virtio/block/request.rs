//! virtio-blk request parsing (virtio 1.2 §5.2.6): the 16-byte header the
//! driver puts first in the device-readable part of a chain, and the layout
//! checks that say where data and the status byte are.
//!
//! A request is a byte stream in each direction: device-readable =
//! header (+ data for writes), device-writable = (data for reads or the
//! id) + one status byte. `parse_request` is the fuzz entry point: it takes
//! the header bytes and the two stream lengths and never panics.

/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_LEN: usize = 16;
/// A sector, whatever the device's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
/// Largest data transfer of one request (Linux sends at most 1.25 MiB
/// unless told otherwise); larger requests fail with IOERR.
pub const MAX_DATA_BYTES: u64 = 16 << 20;

/// `VIRTIO_BLK_T_IN`.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status written into the last device-writable byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// `VIRTIO_BLK_S_OK`.
    Ok = 0,
    /// `VIRTIO_BLK_S_IOERR`.
    IoErr = 1,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupported = 2,
}

/// A chain that is not a virtio-blk request at all (the device stops).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer than 16 device-readable bytes.
    #[error("request header is {0} bytes, need {HEADER_LEN}")]
    HeaderTooShort(u64),
    /// No device-writable byte for the status.
    #[error("request has no device-writable status byte")]
    NoStatus,
    /// Data in the direction the request type does not use.
    #[error("{0} request carries data in the wrong direction")]
    WrongDirection(&'static str),
}

/// The decoded `struct virtio_blk_outhdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// `type`.
    pub request_type: u32,
    /// `sector`, in 512-byte units.
    pub sector: u64,
}

/// Decode a header from its first 16 bytes (extra bytes are ignored).
pub fn parse(bytes: &[u8]) -> Result<RequestHeader, RequestError> {
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err(RequestError::HeaderTooShort(bytes.len() as u64));
    };
    let mut t = [0u8; 4];
    t.copy_from_slice(&h[0..4]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&h[8..16]);
    Ok(RequestHeader {
        request_type: u32::from_le_bytes(t),
        sector: u64::from_le_bytes(s),
    })
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `data_len` bytes from `sector` into the writable data.
    Read,
    /// Write the readable data after the header to `sector`.
    Write,
    /// Make written data durable.
    Flush,
    /// Return the device id string.
    GetId,
    /// Anything else: answered UNSUPP.
    Unsupported(u32),
}

/// A request whose layout is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub op: Op,
    /// First sector.
    pub sector: u64,
    /// Bytes of data (readable after the header for writes, writable
    /// before the status byte for reads and GET_ID).
    pub data_len: u64,
    /// Offset of the status byte in the device-writable stream.
    pub status_offset: u64,
}

impl Request {
    /// Bytes the device writes into the chain when it succeeds (data + status).
    pub fn used_len_ok(&self) -> u32 {
        let data = match self.op {
            Op::Read => self.data_len,
            Op::GetId => self.data_len.min(ID_LEN as u64),
            _ => 0,
        };
        u32::try_from(data + 1).unwrap_or(u32::MAX)
    }

    /// The request's own checks against the disk: `Err(status)` to answer
    /// without touching the backing file.
    pub fn check(&self, capacity_sectors: u64, read_only: bool) -> Result<(), Status> {
        match self.op {
            Op::Unsupported(_) => Err(Status::Unsupported),
            Op::Flush | Op::GetId => Ok(()),
            Op::Write if read_only => Err(Status::IoErr),
            Op::Read | Op::Write => {
                if self.data_len % SECTOR_SIZE != 0 || self.data_len > MAX_DATA_BYTES {
                    return Err(Status::IoErr);
                }
                let sectors = self.data_len / SECTOR_SIZE;
                match self.sector.checked_add(sectors) {
                    Some(end) if end <= capacity_sectors => Ok(()),
                    _ => Err(Status::IoErr),
                }
            }
        }
    }

    /// Byte offset on the disk.
    pub fn offset(&self) -> u64 {
        // `check` bounds sector by the capacity, so this cannot overflow
        // for checked requests; saturate for the others.
        self.sector.saturating_mul(SECTOR_SIZE)
    }
}

/// Decode and lay out a request from its header bytes and the lengths of
/// its device-readable and device-writable streams.
pub fn parse_request(
    header: &[u8],
    readable_len: u64,
    writable_len: u64,
) -> Result<Request, RequestError> {
    if readable_len < HEADER_LEN as u64 {
        return Err(RequestError::HeaderTooShort(readable_len));
    }
    let h = parse(header)?;
    if writable_len == 0 {
        return Err(RequestError::NoStatus);
    }
    let readable_data = readable_len - HEADER_LEN as u64;
    let writable_data = writable_len - 1;
    let op = match h.request_type {
        VIRTIO_BLK_T_IN => Op::Read,
        VIRTIO_BLK_T_OUT => Op::Write,
        VIRTIO_BLK_T_FLUSH => Op::Flush,
        VIRTIO_BLK_T_GET_ID => Op::GetId,
        other => Op::Unsupported(other),
    };
    let data_len = match op {
        Op::Read | Op::GetId if readable_data != 0 => {
            return Err(RequestError::WrongDirection("read"));
        }
        Op::Write if writable_data != 0 => return Err(RequestError::WrongDirection("write")),
        Op::Read | Op::GetId => writable_data,
        Op::Write => readable_data,
        Op::Flush | Op::Unsupported(_) => 0,
    };
    Ok(Request {
        op,
        sector: h.sector,
        data_len,
        status_offset: writable_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(t: u32, sector: u64) -> Vec<u8> {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&[0xaa; 4]);
        v.extend_from_slice(&sector.to_le_bytes());
        v
    }

    #[test]
    fn header_fields_are_little_endian() {
        assert_eq!(
            parse(&hdr(1, 0x0102_0304_0506_0708)).unwrap(),
            RequestHeader {
                request_type: 1,
                sector: 0x0102_0304_0506_0708
            }
        );
        assert_eq!(parse(&[0; 15]), Err(RequestError::HeaderTooShort(15)));
    }

    #[test]
    fn layouts() {
        let r = parse_request(&hdr(VIRTIO_BLK_T_IN, 2), 16, 1025).unwrap();
        assert_eq!((r.op, r.data_len, r.status_offset), (Op::Read, 1024, 1024));
        assert_eq!(r.used_len_ok(), 1025);
        let w = parse_request(&hdr(VIRTIO_BLK_T_OUT, 2), 16 + 512, 1).unwrap();
        assert_eq!((w.op, w.data_len, w.status_offset), (Op::Write, 512, 0));
        assert_eq!(w.used_len_ok(), 1);
        let id = parse_request(&hdr(VIRTIO_BLK_T_GET_ID, 0), 16, 21).unwrap();
        assert_eq!(id.used_len_ok(), 21);
        let odd = parse_request(&hdr(77, 0), 16, 1).unwrap();
        assert_eq!(odd.op, Op::Unsupported(77));
        assert_eq!(odd.check(100, false), Err(Status::Unsupported));
    }

    #[test]
    fn malformed_layouts() {
        let h = hdr(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            parse_request(&h, 8, 1),
            Err(RequestError::HeaderTooShort(8))
        );
        assert_eq!(parse_request(&h, 16, 0), Err(RequestError::NoStatus));
        assert!(matches!(
            parse_request(&h, 16 + 512, 1),
            Err(RequestError::WrongDirection(_))
        ));
        let w = hdr(VIRTIO_BLK_T_OUT, 0);
        assert!(matches!(
            parse_request(&w, 16, 513),
            Err(RequestError::WrongDirection(_))
        ));
    }

    #[test]
    fn range_and_permission_checks() {
        let read = |sector, len| Request {
            op: Op::Read,
            sector,
            data_len: len,
            status_offset: len,
        };
        assert_eq!(read(0, 512).check(1, false), Ok(()));
        assert_eq!(read(1, 512).check(1, false), Err(Status::IoErr));
        assert_eq!(read(0, 100).check(1, false), Err(Status::IoErr));
        assert_eq!(
            read(u64::MAX, 512).check(u64::MAX, false),
            Err(Status::IoErr)
        );
        assert_eq!(
            read(0, MAX_DATA_BYTES + 512).check(u64::MAX, false),
            Err(Status::IoErr)
        );
        let write = Request {
            op: Op::Write,
            ..read(0, 512)
        };
        assert_eq!(write.check(1, true), Err(Status::IoErr));
        assert_eq!(write.check(1, false), Ok(()));
    }

    #[test]
    fn parse_never_panics_on_short_or_odd_input() {
        for len in 0..40u64 {
            let bytes: Vec<u8> = (0..len as u8).collect();
            for (r, w) in [(0, 0), (len, 0), (len, 1), (u64::MAX, u64::MAX), (16, 1)] {
                let _ = parse_request(&bytes, r, w);
            }
        }
    }
}
