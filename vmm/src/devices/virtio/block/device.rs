//! The virtio-blk device model: one request queue served synchronously in
//! `queue_notify` (on the vCPU thread) with positioned I/O on the backing file.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::config::BlockConfig;
use super::disk::{BlockError, Disk};
use super::request::{parse_request, Op, Request, RequestError, Status, HEADER_LEN, ID_LEN};
use crate::devices::virtio::checked_chain::{read_from, write_to, ChainError, CheckedChain};
use crate::devices::virtio::device::finish_queue_pass;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};

/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of the request queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Data segments per request we tell the driver about (`seg_max`).
pub const SEG_MAX: u32 = 128;
/// Longest chain: the data segments plus header and status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Bounce buffer between the file and guest memory.
const CHUNK: usize = 128 * 1024;

/// `VIRTIO_BLK_F_SEG_MAX`.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Why the device stopped serving its queue.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("malformed descriptor chain")]
    Chain(#[from] ChainError),
    #[error("malformed request")]
    Request(#[from] RequestError),
    #[error("cannot return a buffer to the used ring: {0}")]
    UsedRing(String),
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-blk device backed by a file.
pub struct Block {
    disk: Disk,
    serial: Option<String>,
    config_space: [u8; 24],
    active: Option<Active>,
    broken: bool,
    buf: Vec<u8>,
}

impl Block {
    /// Open the backing file (errors name the file and what is wrong).
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(config)?;
        let mut config_space = [0u8; 24];
        config_space[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Block {
            disk,
            serial: config.serial.clone(),
            config_space,
            active: None,
            broken: false,
            buf: Vec::new(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// Whether a malformed chain stopped the device (until the driver resets it).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Serve every available chain; returns whether the used ring changed.
    fn process_queue(&mut self) -> Result<bool, Broken> {
        let Some(a) = self.active.as_mut() else {
            return Ok(false);
        };
        let mut used = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let served = CheckedChain::new(chain, MAX_DESCRIPTORS)
                .map_err(Broken::from)
                .and_then(|c| {
                    let mut header = [0u8; HEADER_LEN];
                    if c.readable_len() >= HEADER_LEN as u64 {
                        read_from(&a.mem, &c.readable, 0, &mut header)?;
                    }
                    let req = parse_request(&header, c.readable_len(), c.writable_len())?;
                    Ok((c, req))
                });
            let (chain, req) = match served {
                Ok(x) => x,
                Err(e) => {
                    // Hand the buffer back so the driver is not stuck on it.
                    let _ = a.queue.add_used(&a.mem, head, 0);
                    a.interrupt.signal_used_queue();
                    return Err(e);
                }
            };
            let status = match req.check(self.disk.capacity_sectors(), self.disk.read_only()) {
                Ok(()) => execute(
                    &self.disk,
                    self.serial.as_deref(),
                    &mut self.buf,
                    &a.mem,
                    &chain,
                    &req,
                ),
                Err(s) => {
                    crate::limited!(debug, op = ?req.op, sector = req.sector, len = req.data_len, status = ?s, "virtio-blk request refused");
                    s
                }
            };
            write_to(&a.mem, &chain.writable, req.status_offset, &[status as u8])?;
            let len = if status == Status::Ok {
                req.used_len_ok()
            } else {
                1
            };
            a.queue
                .add_used(&a.mem, head, len)
                .map_err(|e| Broken::UsedRing(e.to_string()))?;
            used = true;
        }
        Ok(used)
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

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config_space.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        crate::limited!(
            debug,
            offset,
            "virtio-blk configuration is read-only; write ignored"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::BadQueue {
                index: queues.len(),
                reason: "virtio-blk has exactly one queue".into(),
            });
        }
        self.active = Some(Active {
            mem,
            queue: queues.remove(0),
            interrupt,
        });
        self.broken = false;
        Ok(())
    }

    fn queue_notify(&mut self, _queue: u16) {
        if self.broken {
            crate::limited!(debug, "virtio-blk is broken; notify ignored until reset");
            return;
        }
        let pass = self.process_queue();
        let interrupt = self.active.as_ref().map(|a| &*a.interrupt);
        finish_queue_pass(
            &format_args!("virtio-blk on {}", self.disk.path().display()),
            pass,
            interrupt,
            &mut self.broken,
        );
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }
}
