//! `VsockCore<B>`: moves packets between the rx/tx queues and the backend,
//! as the handler of the device thread's event loop (or driven directly by
//! the unit tests and fuzz targets).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use vmm_sys_util::epoll::EventSet;

use super::backend::{VsockBackend, VsockError};
use super::config::{EVQ, RXQ, TXQ, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET};
use super::packet::{self, VsockPacket};
use crate::devices::virtio::event_loop::{Control, Event, EventHandler};
use crate::devices::virtio::VirtioInterrupt;

/// How long host packets wait for the driver to handle a transport reset
/// (a guest on a loaded host can take seconds; one that never does only
/// costs its first connection this wait).
pub const RESET_ACK_LIMIT: Duration = Duration::from_secs(10);

/// Most descriptors in one packet's chain.
const MAX_CHAIN_DESCS: usize = 64;

/// The next chain of queue `index`; `None` when there is none or the
/// device is broken (`broken` is set to the queue whose ring is invalid).
fn pop<'m>(
    queues: &mut [Queue],
    index: usize,
    mem: &'m GuestMemoryMmap,
    broken: &mut Option<usize>,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    if broken.is_some() {
        return None;
    }
    match queues[index].iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => {
            crate::limited!(error, error = %e, queue = index, "vsock avail ring invalid; device broken");
            *broken = Some(index);
            None
        }
    }
}

/// The queues, guest memory and backend of an active device.
pub struct VsockCore<B: VsockBackend> {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
    /// The backend.
    pub backend: B,
    cid: u64,
    pkt: VsockPacket,
    /// The queue whose rings broke the device (it then stops).
    broken: Option<usize>,
    tx_stalled: bool,
    /// Tell the driver its connections are gone (a restored VM).
    reset_pending: bool,
    /// How long host packets wait for the driver to handle it.
    reset_ack_limit: Duration,
    /// After the reset event: the event queue's avail index then, and
    /// when. Host packets wait until the driver has handled the event
    /// (it re-posts the buffer: the index moves), or it would reset the
    /// connections made after the restore too.
    reset_unacked: Option<(u16, Instant)>,
}

impl<B: VsockBackend> VsockCore<B> {
    /// An active device over `queues` (rx, tx, event).
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
        backend: B,
        cid: u64,
    ) -> Self {
        VsockCore {
            mem,
            queues,
            interrupt,
            backend,
            cid,
            pkt: VsockPacket::new(),
            broken: None,
            tx_stalled: false,
            reset_pending: false,
            reset_ack_limit: RESET_ACK_LIMIT,
            reset_unacked: None,
        }
    }

    /// Send `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` before anything else: the
    /// guest's connections were to a backend that no longer exists.
    pub fn with_transport_reset(mut self) -> Self {
        self.reset_pending = true;
        self
    }

    /// `with_transport_reset`'s wait for the driver, other than
    /// [`RESET_ACK_LIMIT`] (tests).
    pub fn with_reset_ack_limit(mut self, limit: Duration) -> Self {
        self.reset_ack_limit = limit;
        self
    }

    /// Post a pending transport reset on the event queue. Returns whether
    /// it was posted (false: none pending, or no event buffer yet).
    pub fn announce_transport_reset(&mut self) -> bool {
        if !self.reset_pending {
            return false;
        }
        let Some(chain) = pop(&mut self.queues, EVQ, &self.mem, &mut self.broken) else {
            crate::limited!(
                warn,
                "vsock transport reset pending but the driver posted no event buffer"
            );
            return false;
        };
        let head = chain.head_index();
        let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = packet::collect_descs(chain, true, MAX_CHAIN_DESCS)
            .and_then(|descs| packet::write_bytes(&self.mem, &descs, &event));
        let len = match written {
            Ok(n) => n,
            Err(e) => {
                crate::limited!(warn, error = %e, "vsock event buffer unusable");
                0
            }
        };
        self.reset_pending = false;
        let used = self.add_used(EVQ, head, len);
        if used {
            if let Ok(idx) = self.queues[EVQ].avail_idx(&self.mem, Ordering::Acquire) {
                self.reset_unacked = Some((idx.0, Instant::now()));
            }
            self.interrupt.signal_used_queue();
        }
        used
    }

    /// Whether host packets may go to the guest: no transport reset is
    /// waiting for the driver (or it waited [`RESET_ACK_LIMIT`]).
    pub fn reset_handled(&mut self) -> bool {
        let Some((idx, since)) = self.reset_unacked else {
            return true;
        };
        let now = self.queues[EVQ].avail_idx(&self.mem, Ordering::Acquire);
        if now.ok().map(|n| n.0) != Some(idx) {
            tracing::info!(
                after_ms = since.elapsed().as_millis() as u64,
                "vsock: the driver handled the transport reset"
            );
            self.reset_unacked = None;
            return true;
        }
        if since.elapsed() >= self.reset_ack_limit {
            crate::limited!(
                warn,
                "the vsock driver did not re-post its event buffer after the transport reset; going on"
            );
            self.reset_unacked = None;
            return true;
        }
        false
    }

    /// How long the worker may sleep: the backend's timeout, shortened
    /// while a transport reset waits for the driver.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let backend = self.backend.poll_timeout();
        match self.reset_unacked {
            Some((_, since)) => {
                let left = self.reset_ack_limit.saturating_sub(since.elapsed());
                Some(backend.map_or(left, |b| b.min(left)))
            }
            None => backend,
        }
    }

    /// The device stopped after a broken queue.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The device asked the driver for a reset (DEVICE_NEEDS_RESET).
    pub fn needs_reset(&self) -> bool {
        self.interrupt.needs_reset()
    }

    /// The tx queue waits for the backend (rx progress or a drained socket).
    pub fn is_tx_stalled(&self) -> bool {
        self.tx_stalled
    }

    /// Give the backend back (device reset).
    pub fn into_backend(self) -> B {
        self.backend
    }

    fn mark_broken(&mut self, index: usize, why: &str) {
        if self.broken.is_none() {
            crate::limited!(
                error,
                queue = index,
                why,
                "vsock device broken; it stops processing"
            );
        }
        self.broken.get_or_insert(index);
    }

    fn add_used(&mut self, index: usize, head: u16, len: u32) -> bool {
        match self.queues[index].add_used(&self.mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                crate::limited!(error, error = %e, "vsock used ring update failed");
                self.mark_broken(index, "used ring");
                false
            }
        }
    }

    /// Take guest packets off the tx queue. Returns whether any was used.
    pub fn process_tx(&mut self) -> bool {
        self.tx_stalled = false;
        let mut used = false;
        while let Some(chain) = pop(&mut self.queues, TXQ, &self.mem, &mut self.broken) {
            let head = chain.head_index();
            let checked = packet::collect_descs(chain, false, MAX_CHAIN_DESCS)
                .and_then(|descs| packet::read_tx(&self.mem, &descs, &mut self.pkt))
                .and_then(|()| self.pkt.hdr.check_from_guest(self.cid));
            if let Err(e) = checked {
                crate::limited!(warn, error = %e, "vsock tx packet dropped");
                used |= self.add_used(TXQ, head, 0);
                continue;
            }
            match self.backend.send_pkt(&self.pkt) {
                Err(VsockError::Busy) => {
                    self.queues[TXQ].go_to_previous_position();
                    self.tx_stalled = true;
                    break;
                }
                Err(e) => crate::limited!(warn, error = %e, "vsock backend refused a packet"),
                Ok(()) => {}
            }
            used |= self.add_used(TXQ, head, 0);
        }
        used
    }

    /// Fill guest rx buffers with what the backend has. Returns whether any was used.
    pub fn process_rx(&mut self) -> bool {
        let mut used = false;
        if !self.reset_handled() {
            return false;
        }
        while self.backend.has_pending_rx() {
            let Some(chain) = pop(&mut self.queues, RXQ, &self.mem, &mut self.broken) else {
                break;
            };
            let head = chain.head_index();
            let descs = packet::collect_descs(chain, true, MAX_CHAIN_DESCS)
                .and_then(|d| packet::rx_capacity(&d).map(|cap| (d, cap)));
            let (descs, cap) = match descs {
                Ok(v) => v,
                Err(e) => {
                    crate::limited!(warn, error = %e, "vsock rx buffer unusable; returned empty");
                    used |= self.add_used(RXQ, head, 0);
                    continue;
                }
            };
            self.pkt.set_rx_capacity(cap);
            match self.backend.recv_pkt(&mut self.pkt) {
                Ok(()) => {
                    let len = match packet::write_rx(&self.mem, &descs, &self.pkt) {
                        Ok(n) => n,
                        Err(e) => {
                            crate::limited!(warn, error = %e, "vsock rx write failed");
                            0
                        }
                    };
                    used |= self.add_used(RXQ, head, len);
                }
                Err(_) => {
                    self.queues[RXQ].go_to_previous_position();
                    break;
                }
            }
        }
        used
    }

    /// Run both directions until neither makes progress; raise the
    /// interrupt if a used ring changed.
    pub fn process_all(&mut self) {
        let mut used = false;
        for _ in 0..4 {
            let rx = self.process_rx();
            let tx = self.process_tx();
            used |= rx | tx;
            if !tx && !self.backend.has_pending_rx() {
                break;
            }
        }
        used |= self.process_rx();
        if used {
            self.interrupt.signal_used_queue();
        }
        if self.broken.is_some() {
            self.interrupt.signal_needs_reset();
        }
    }

    /// The backend's fd was readable (or a timeout passed).
    pub fn backend_event(&mut self) {
        self.backend.notify();
        self.process_all();
    }
}

/// The backend token of the backend's polled descriptor.
const BACKEND: u32 = 0;

impl<B: VsockBackend> EventHandler for VsockCore<B> {
    type Error = VsockError;

    fn name(&self) -> String {
        format!("virtio-vsock (guest cid {})", self.cid)
    }

    /// `VsockCore` interrupts the driver itself as buffers are used; a
    /// broken queue ends the pass with an error.
    fn handle(&mut self, event: Event, ctl: &mut Control<'_>) -> Result<bool, VsockError> {
        match event {
            Event::Started => {
                ctl.watch(self.backend.polled_fd(), EventSet::IN, BACKEND)
                    .map_err(|source| VsockError::Sys {
                        what: "epoll registration of the backend",
                        source,
                    })?;
                // A restored VM learns first that its old connections are
                // gone; packets may be waiting from before activation.
                self.announce_transport_reset();
                self.backend_event();
            }
            Event::Queue(_) => self.process_all(),
            Event::Backend(_) | Event::Timeout => self.backend_event(),
        }
        match self.broken {
            Some(q) => Err(VsockError::Queue(q)),
            None => Ok(false),
        }
    }

    fn timeout(&self) -> Option<Duration> {
        self.poll_timeout()
    }
}
