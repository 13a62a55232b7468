//! The rx and tx paths of virtio-net (`NetQueues`, independent of threads
//! and of the TAP behind `FrameIo`, so `MockSplitQueue` drives them) and
//! `NetHandler`, which serves them on the device thread.
//!
//! rx: one frame at a time is read from the backend into `frame` (after
//! room for the header) and kept `pending` until the driver offers a
//! buffer; while it waits, the caller stops polling the backend
//! (back-pressure instead of buffering). tx: every chain is header + one
//! frame, copied out and written to the backend; a frame the backend
//! refuses is dropped, like a full NIC queue.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::tap::Tap;
use crate::devices::virtio::checked_chain::{read_from, write_to, ChainError, CheckedChain};
use crate::devices::virtio::event_loop::{Control, Event, EventHandler};
use crate::devices::virtio::VirtioInterrupt;
use vmm_sys_util::epoll::EventSet;

/// `struct virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame (without the virtio header) we move in either direction.
pub const MAX_FRAME_LEN: usize = 65562 - NET_HDR_LEN;
/// Longest chain we accept.
pub const MAX_DESCRIPTORS: usize = 64;
/// Frames moved per wakeup before the loop looks at its other events.
const RX_BUDGET: usize = 256;

/// Frames in and out: the TAP, or a fake in tests.
pub trait FrameIo: Send {
    /// Read one frame; `WouldBlock` when none is queued.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
}

impl FrameIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        Tap::write_frame(self, frame)
    }
}

/// Why the device stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetQueueError {
    /// A chain that is not usable.
    #[error("malformed {queue} chain")]
    Chain {
        /// "rx" or "tx".
        queue: &'static str,
        /// What is wrong.
        #[source]
        source: ChainError,
    },
    /// A tx chain shorter than the header or longer than a frame.
    #[error("tx chain of {0} bytes is not a 12-byte header plus a frame of at most {MAX_FRAME_LEN} bytes")]
    TxLength(u64),
    /// The used ring could not be updated.
    #[error("cannot return a buffer to the used ring: {0}")]
    UsedRing(String),
    /// Reading the backend failed (not just "no frame").
    #[error("cannot read from the TAP")]
    Backend(#[source] io::Error),
}

/// Queues, memory and backend of an activated device.
pub struct NetQueues<B: FrameIo> {
    /// The backend.
    pub io: B,
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    interrupt: Arc<VirtioInterrupt>,
    frame: Vec<u8>,
    pending: Option<usize>,
    tx_buf: Vec<u8>,
}

impl<B: FrameIo> NetQueues<B> {
    /// Wrap the activated queues.
    pub fn new(
        io: B,
        mem: GuestMemoryMmap,
        rxq: Queue,
        txq: Queue,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        NetQueues {
            io,
            mem,
            rxq,
            txq,
            interrupt,
            frame: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            pending: None,
            tx_buf: vec![0; MAX_FRAME_LEN],
        }
    }

    /// Whether a received frame waits for an rx buffer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn give_back(q: &mut Queue, mem: &GuestMemoryMmap, irq: &VirtioInterrupt, head: u16) {
        let _ = q.add_used(mem, head, 0);
        irq.signal_used_queue();
    }

    /// Move frames from the backend into rx buffers. Returns whether the
    /// backend should be polled (false: a frame waits for an rx buffer).
    pub fn process_rx(&mut self) -> Result<bool, NetQueueError> {
        let mut used = false;
        let mut poll = true;
        for _ in 0..RX_BUDGET {
            let n = match self.pending {
                Some(n) => n,
                None => match self.io.read_frame(&mut self.frame[NET_HDR_LEN..]) {
                    Ok(0) => continue,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(NetQueueError::Backend(e)),
                },
            };
            self.pending = Some(n);
            let Some(chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                poll = false;
                break;
            };
            let head = chain.head_index();
            let checked = CheckedChain::new(chain, MAX_DESCRIPTORS).and_then(|c| {
                if c.readable.is_empty() {
                    Ok(c)
                } else {
                    Err(ChainError::Direction(
                        "device-readable buffer in an rx chain",
                    ))
                }
            });
            let c = match checked {
                Ok(c) => c,
                Err(source) => {
                    Self::give_back(&mut self.rxq, &self.mem, &self.interrupt, head);
                    return Err(NetQueueError::Chain {
                        queue: "rx",
                        source,
                    });
                }
            };
            let total = NET_HDR_LEN + n;
            if c.writable_len() < total as u64 {
                // Without mergeable buffers a frame must fit one chain.
                crate::limited!(
                    warn,
                    frame = n,
                    buffer = c.writable_len(),
                    "virtio-net rx buffer too small; frame dropped"
                );
                self.rxq.go_to_previous_position();
                self.pending = None;
                continue;
            }
            let hdr = &mut self.frame[..NET_HDR_LEN];
            hdr.fill(0);
            hdr[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
            write_to(&self.mem, &c.writable, 0, &self.frame[..total]).map_err(|source| {
                NetQueueError::Chain {
                    queue: "rx",
                    source,
                }
            })?;
            self.rxq
                .add_used(&self.mem, c.head, total as u32)
                .map_err(|e| NetQueueError::UsedRing(e.to_string()))?;
            self.pending = None;
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
        Ok(poll)
    }

    /// Send every available tx chain to the backend.
    pub fn process_tx(&mut self) -> Result<(), NetQueueError> {
        let mut used = false;
        while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let checked = CheckedChain::new(chain, MAX_DESCRIPTORS)
                .and_then(|c| {
                    if c.writable.is_empty() {
                        Ok(c)
                    } else {
                        Err(ChainError::Direction(
                            "device-writable buffer in a tx chain",
                        ))
                    }
                })
                .map_err(|source| NetQueueError::Chain {
                    queue: "tx",
                    source,
                })
                .and_then(|c| {
                    let len = c.readable_len();
                    if len < NET_HDR_LEN as u64 || len - (NET_HDR_LEN as u64) > MAX_FRAME_LEN as u64
                    {
                        Err(NetQueueError::TxLength(len))
                    } else {
                        Ok(c)
                    }
                });
            let c = match checked {
                Ok(c) => c,
                Err(e) => {
                    Self::give_back(&mut self.txq, &self.mem, &self.interrupt, head);
                    return Err(e);
                }
            };
            let n = (c.readable_len() - NET_HDR_LEN as u64) as usize;
            read_from(
                &self.mem,
                &c.readable,
                NET_HDR_LEN as u64,
                &mut self.tx_buf[..n],
            )
            .map_err(|source| NetQueueError::Chain {
                queue: "tx",
                source,
            })?;
            if n > 0 {
                if let Err(e) = self.io.write_frame(&self.tx_buf[..n]) {
                    crate::limited!(debug, error = %e, len = n, "virtio-net tx frame dropped");
                }
            }
            self.txq
                .add_used(&self.mem, c.head, 0)
                .map_err(|e| NetQueueError::UsedRing(e.to_string()))?;
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

/// The backend token of the TAP.
const TAP: u32 = 0;

/// The device thread's side: rx on an rx kick or a readable TAP, tx on a
/// tx kick; the TAP is not polled while a frame waits for an rx buffer
/// (back-pressure).
pub struct NetHandler {
    q: NetQueues<Tap>,
    tap_polled: bool,
}

impl NetHandler {
    /// Serve `q`.
    pub fn new(q: NetQueues<Tap>) -> Self {
        NetHandler {
            q,
            tap_polled: false,
        }
    }

    fn rx(&mut self, ctl: &mut Control<'_>) -> Result<(), NetQueueError> {
        let poll = self.q.process_rx()?;
        if poll != self.tap_polled {
            let fd = self.q.io.as_raw_fd();
            if poll {
                ctl.watch(fd, EventSet::IN, TAP)
            } else {
                ctl.unwatch(fd)
            }
            .map_err(NetQueueError::Backend)?;
            self.tap_polled = poll;
        }
        Ok(())
    }
}

impl EventHandler for NetHandler {
    type Error = NetQueueError;

    fn name(&self) -> String {
        format!("virtio-net on {}", self.q.io.name())
    }

    /// `NetQueues` interrupt the driver themselves as buffers are used.
    fn handle(&mut self, event: Event, ctl: &mut Control<'_>) -> Result<bool, NetQueueError> {
        match event {
            Event::Started => {
                ctl.watch(self.q.io.as_raw_fd(), EventSet::IN, TAP)
                    .map_err(NetQueueError::Backend)?;
                self.tap_polled = true;
            }
            Event::Queue(1) => self.q.process_tx()?,
            Event::Queue(_) | Event::Backend(_) => self.rx(ctl)?,
            Event::Timeout => {}
        }
        Ok(false)
    }
}
