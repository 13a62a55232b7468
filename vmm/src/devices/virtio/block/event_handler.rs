//! Serving virtio-blk's request queue on the device thread: each chain
//! is checked, parsed and carried out with positioned I/O on the file.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::config::{CHUNK, MAX_DESCRIPTORS};
use super::disk::Disk;
use super::request::{parse_request, Op, Request, RequestError, Status, HEADER_LEN, ID_LEN};
use crate::devices::virtio::checked_chain::{read_from, write_to, ChainError, CheckedChain};
use crate::devices::virtio::event_loop::{Control, Event, EventHandler};

/// Why the device stopped serving its queue.
#[derive(Debug, thiserror::Error)]
pub enum BlockQueueError {
    /// A chain that is not usable.
    #[error("malformed descriptor chain")]
    Chain(#[from] ChainError),
    /// A request that is not well formed.
    #[error("malformed request")]
    Request(#[from] RequestError),
    /// The used ring could not be updated.
    #[error("cannot return a buffer to the used ring: {0}")]
    UsedRing(String),
}

/// The activated request queue and the disk behind it.
pub struct BlockHandler {
    disk: Arc<Disk>,
    serial: Option<String>,
    mem: GuestMemoryMmap,
    queue: Queue,
    buf: Vec<u8>,
}

impl BlockHandler {
    /// Serve `queue` in `mem` from `disk`; GET_ID answers `serial`.
    pub fn new(
        disk: Arc<Disk>,
        serial: Option<String>,
        mem: GuestMemoryMmap,
        queue: Queue,
    ) -> Self {
        BlockHandler {
            disk,
            serial,
            mem,
            queue,
            buf: Vec::new(),
        }
    }

    /// Serve every available chain; returns whether the used ring changed.
    pub fn process_queue(&mut self) -> Result<bool, BlockQueueError> {
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let served = CheckedChain::new(chain, MAX_DESCRIPTORS)
                .map_err(BlockQueueError::from)
                .and_then(|c| {
                    let mut header = [0u8; HEADER_LEN];
                    if c.readable_len() >= HEADER_LEN as u64 {
                        read_from(&self.mem, &c.readable, 0, &mut header)?;
                    }
                    let req = parse_request(&header, c.readable_len(), c.writable_len())?;
                    Ok((c, req))
                });
            let (chain, req) = match served {
                Ok(x) => x,
                Err(e) => {
                    // Hand the buffer back so the driver is not stuck on it.
                    let _ = self.queue.add_used(&self.mem, head, 0);
                    return Err(e);
                }
            };
            let status = match req.check(self.disk.capacity_sectors(), self.disk.read_only()) {
                Ok(()) => execute(
                    &self.disk,
                    self.serial.as_deref(),
                    &mut self.buf,
                    &self.mem,
                    &chain,
                    &req,
                ),
                Err(s) => {
                    crate::limited!(debug, op = ?req.op, sector = req.sector, len = req.data_len, status = ?s, "virtio-blk request refused");
                    s
                }
            };
            write_to(
                &self.mem,
                &chain.writable,
                req.status_offset,
                &[status as u8],
            )?;
            let len = if status == Status::Ok {
                req.used_len_ok()
            } else {
                1
            };
            self.queue
                .add_used(&self.mem, head, len)
                .map_err(|e| BlockQueueError::UsedRing(e.to_string()))?;
            used = true;
        }
        Ok(used)
    }
}

impl EventHandler for BlockHandler {
    type Error = BlockQueueError;

    fn name(&self) -> String {
        format!("virtio-blk on {}", self.disk.path().display())
    }

    fn handle(&mut self, event: Event, _ctl: &mut Control<'_>) -> Result<bool, BlockQueueError> {
        match event {
            Event::Queue(_) => self.process_queue(),
            Event::Started | Event::Backend(_) | Event::Timeout => Ok(false),
        }
    }
}

/// Carry out a checked request; the status to report.
fn execute(
    disk: &Disk,
    serial: Option<&str>,
    buf: &mut Vec<u8>,
    mem: &GuestMemoryMmap,
    chain: &CheckedChain,
    req: &Request,
) -> Status {
    let result = match req.op {
        Op::Read => transfer(req, buf, |chunk, done| {
            disk.read_at(chunk, req.offset() + done)?;
            write_to(mem, &chain.writable, done, chunk).map_err(std::io::Error::other)
        }),
        Op::Write => transfer(req, buf, |chunk, done| {
            read_from(mem, &chain.readable, HEADER_LEN as u64 + done, chunk)
                .map_err(std::io::Error::other)?;
            disk.write_at(chunk, req.offset() + done)
        }),
        Op::Flush => disk.flush(),
        Op::GetId => {
            let mut id = [0u8; ID_LEN];
            let s = serial.unwrap_or_default().as_bytes();
            id[..s.len().min(ID_LEN)].copy_from_slice(&s[..s.len().min(ID_LEN)]);
            let n = (req.data_len as usize).min(ID_LEN);
            write_to(mem, &chain.writable, 0, &id[..n]).map_err(std::io::Error::other)
        }
        Op::Unsupported(_) => return Status::Unsupported,
    };
    match result {
        Ok(()) => Status::Ok,
        Err(e) => {
            crate::limited!(
                warn,
                path = %disk.path().display(),
                op = ?req.op,
                sector = req.sector,
                error = &e as &dyn std::error::Error,
                "virtio-blk i/o failed"
            );
            Status::IoErr
        }
    }
}

/// Move `req.data_len` bytes in bounded chunks; `f(chunk, offset)` does one.
fn transfer(
    req: &Request,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < req.data_len {
        let n = (req.data_len - done).min(CHUNK as u64) as usize;
        buf.resize(n, 0);
        f(&mut buf[..n], done)?;
        done += n as u64;
    }
    Ok(())
}
