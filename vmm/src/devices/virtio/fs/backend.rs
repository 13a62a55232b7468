//! The vhost-user connection to virtiofsd (PROTOCOLS.md §5; Cloud
//! Hypervisor's `vu_common_ctrl.rs` has the same order):
//!
//! 1. at creation: `set_owner`, `get_features`, `get/set_protocol_features`
//!    (MQ, REPLY_ACK, RESET_DEVICE when offered), `get_queue_num`;
//! 2. on DRIVER_OK: `set_features`, `set_mem_table`, then per ready queue
//!    `set_vring_num/addr/base/call/kick` and `set_vring_enable(true)`;
//! 3. on reset: per started queue `set_vring_enable(false)` and
//!    `get_vring_base` (which stops the ring), then `reset_device`.
//!
//! Every request has a socket timeout so that a stuck backend cannot hang
//! the vCPU thread that wrote the status register.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

use crate::vstate::memory::GuestRam;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::watchdog::Watchdog;
use super::FsError;

/// How long one vhost-user request may take before the backend counts as dead.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Guest-visible features we pass through when the backend has them
/// (the transport adds VERSION_1 itself).
pub const GUEST_FEATURES: u64 = (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// Protocol features we use when offered.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// The outcome of feature negotiation with the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Everything the backend offered.
    pub backend_features: u64,
    /// What we offer the guest driver (without VERSION_1).
    pub guest_features: u64,
    /// Protocol features both sides use.
    pub protocol: VhostUserProtocolFeatures,
}

/// Decide features from what the backend offers. VERSION_1 and
/// PROTOCOL_FEATURES are required (the latter for per-ring enable and MQ).
pub fn negotiate(
    backend_features: u64,
    backend_protocol: VhostUserProtocolFeatures,
) -> Result<Negotiated, FsError> {
    if backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
        return Err(FsError::MissingFeature("VIRTIO_F_VERSION_1"));
    }
    if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
        return Err(FsError::MissingFeature("VHOST_USER_F_PROTOCOL_FEATURES"));
    }
    Ok(Negotiated {
        backend_features,
        guest_features: backend_features & GUEST_FEATURES,
        protocol: backend_protocol & wanted_protocol_features(),
    })
}

/// The features to send with `set_features`: what the driver acked, as far
/// as the backend offers it, plus PROTOCOL_FEATURES.
pub fn backend_ack(n: &Negotiated, driver_acked: u64) -> u64 {
    (driver_acked & n.backend_features) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// Check the backend's vring count (from `get_queue_num`) against ours.
pub fn check_queue_num(backend: Option<u64>, total_queues: usize) -> Result<(), FsError> {
    match backend {
        Some(n) if n < total_queues as u64 => Err(FsError::TooFewQueues {
            requested: total_queues - 1,
            backend: n,
        }),
        // Without MQ the backend cannot tell; one request queue is the norm.
        None if total_queues > 2 => Err(FsError::MissingFeature(
            "VHOST_USER_PROTOCOL_F_MQ (needed for more than one request queue)",
        )),
        _ => Ok(()),
    }
}

/// The memory table: one entry per guest RAM region, each backed by the
/// memfd. A region that privately maps a template's memory image (its
/// kernel text, shared between VMs: `vstate::memory`) is given to the
/// backend as the memfd's pages at the same offset, never the image: a
/// backend maps what it gets shared and writable, and the guest never
/// queues a buffer in its kernel's text.
pub fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, FsError> {
    if mem.num_regions() > vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES {
        return Err(FsError::TooManyRegions(mem.num_regions()));
    }
    let memfd = mem
        .iter()
        .find(|r| !GuestRam::is_private(r))
        .and_then(|r| r.file_offset().map(|f| f.arc().clone()));
    mem.iter()
        .map(|region| {
            let not_shared = || FsError::MemoryNotShared(region.start_addr().0);
            if !GuestRam::is_private(region) {
                return VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(|_| not_shared());
            }
            let (memfd, offset) = memfd
                .as_ref()
                .zip(region.file_offset().map(|f| f.start()))
                .ok_or_else(not_shared)?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                mmap_offset: offset,
                mmap_handle: std::os::fd::AsRawFd::as_raw_fd(memfd.as_ref()),
            })
        })
        .collect()
}

/// Ring addresses of `queue` as VMM virtual addresses (what vhost-user wants).
pub fn vring_config(
    mem: &GuestMemoryMmap,
    index: usize,
    queue: &Queue,
) -> Result<VringConfigData, FsError> {
    let host = |addr: u64| {
        mem.get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|_| FsError::QueueOutsideMemory(index))
    };
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host(queue.desc_table())?,
        used_ring_addr: host(queue.used_ring())?,
        avail_ring_addr: host(queue.avail_ring())?,
        log_addr: None,
    })
}

/// Run one request under the watchdog; a timeout is named as such.
fn call<T>(
    dog: &Watchdog,
    request: &'static str,
    f: impl FnOnce() -> vhost::Result<T>,
) -> Result<T, FsError> {
    let armed = dog.arm(request);
    let result = f();
    drop(armed);
    result.map_err(|e| FsError::Vhost {
        request,
        reason: match dog.fired() {
            Some(_) => format!("no answer within the deadline ({e})"),
            None => e.to_string(),
        },
    })
}

/// A connected, negotiated vhost-user frontend.
pub struct Connection {
    frontend: Frontend,
    socket: UnixStream,
    watchdog: Watchdog,
    negotiated: Negotiated,
    total_queues: usize,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("negotiated", &self.negotiated)
            .field("total_queues", &self.total_queues)
            .finish()
    }
}

/// How long a refused connection is retried: a backend binds its socket
/// (so the file exists) a moment before it listens on it.
const REFUSED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Connect to `path`, naming the usual failures. A refused connection is
/// retried for up to [`REFUSED_RETRY`] (a socket bound but not listening
/// yet); a stale socket is refused after that.
pub fn connect_socket(path: &Path) -> Result<UnixStream, FsError> {
    let deadline = std::time::Instant::now() + REFUSED_RETRY;
    let mut r = UnixStream::connect(path);
    while matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
        r = UnixStream::connect(path);
    }
    r.map_err(|e| match e.kind() {
        ErrorKind::NotFound => FsError::SocketMissing(path.to_owned()),
        ErrorKind::ConnectionRefused => FsError::SocketRefused(path.to_owned()),
        _ => FsError::Connect {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

impl Connection {
    /// Connect to the backend at `path` and negotiate.
    pub fn connect(path: &Path, total_queues: usize) -> Result<Self, FsError> {
        Self::handshake(connect_socket(path)?, total_queues)
    }

    /// Negotiate over an already connected stream.
    pub fn handshake(stream: UnixStream, total_queues: usize) -> Result<Self, FsError> {
        Self::handshake_with_timeout(stream, total_queues, REQUEST_TIMEOUT)
    }

    /// `handshake` with a given per-request deadline.
    pub fn handshake_with_timeout(
        stream: UnixStream,
        total_queues: usize,
        timeout: Duration,
    ) -> Result<Self, FsError> {
        let clone = || {
            stream
                .try_clone()
                .map_err(FsError::resource("vhost-user socket"))
        };
        let socket = clone()?;
        let watchdog = Watchdog::new(clone()?, timeout)?;
        let mut frontend = Frontend::from_stream(stream, total_queues as u64);
        let d = &watchdog;
        call(d, "SET_OWNER", || frontend.set_owner())?;
        let features = call(d, "GET_FEATURES", || frontend.get_features())?;
        let offered = if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            call(d, "GET_PROTOCOL_FEATURES", || {
                frontend.get_protocol_features()
            })?
        } else {
            VhostUserProtocolFeatures::empty()
        };
        let negotiated = negotiate(features, offered)?;
        call(d, "SET_PROTOCOL_FEATURES", || {
            frontend.set_protocol_features(negotiated.protocol)
        })?;
        let backend_queues = if negotiated.protocol.contains(VhostUserProtocolFeatures::MQ) {
            Some(call(d, "GET_QUEUE_NUM", || frontend.get_queue_num())?)
        } else {
            None
        };
        check_queue_num(backend_queues, total_queues)?;
        if negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
        {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        Ok(Connection {
            frontend,
            socket,
            watchdog,
            negotiated,
            total_queues,
        })
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// A second handle on the socket (for the hang-up watch).
    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Close the connection both ways (a live backend then exits).
    pub fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Send features and the memory table (step 2, first half).
    pub fn set_features_and_memory(
        &mut self,
        driver_acked: u64,
        mem: &GuestMemoryMmap,
    ) -> Result<(), FsError> {
        let (fe, d) = (&mut self.frontend, &self.watchdog);
        let features = backend_ack(&self.negotiated, driver_acked);
        call(d, "SET_FEATURES", || fe.set_features(features))?;
        let regions = memory_regions(mem)?;
        call(d, "SET_MEM_TABLE", || fe.set_mem_table(&regions))?;
        Ok(())
    }

    /// Set up and enable every ready queue; returns their indexes.
    pub fn start_vrings(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        irq: &EventFd,
    ) -> Result<Vec<usize>, FsError> {
        let mut started = Vec::new();
        for (index, queue) in queues.iter().enumerate().take(self.total_queues) {
            if !queue.ready() {
                continue;
            }
            let kick = kicks.get(index).ok_or(FsError::QueueOutsideMemory(index))?;
            let config = vring_config(mem, index, queue)?;
            let (fe, d) = (&mut self.frontend, &self.watchdog);
            call(d, "SET_VRING_NUM", || fe.set_vring_num(index, queue.size()))?;
            call(d, "SET_VRING_ADDR", || fe.set_vring_addr(index, &config))?;
            call(d, "SET_VRING_BASE", || {
                fe.set_vring_base(index, queue.next_avail())
            })?;
            call(d, "SET_VRING_CALL", || fe.set_vring_call(index, irq))?;
            call(d, "SET_VRING_KICK", || fe.set_vring_kick(index, kick))?;
            started.push(index);
        }
        for &index in &started {
            let (fe, d) = (&mut self.frontend, &self.watchdog);
            call(d, "SET_VRING_ENABLE", || fe.set_vring_enable(index, true))?;
        }
        Ok(started)
    }

    /// Stop the rings in `started` and reset the backend's device state.
    pub fn stop_vrings(&mut self, started: &[usize]) -> Result<(), FsError> {
        let (fe, d) = (&mut self.frontend, &self.watchdog);
        for &index in started {
            call(d, "SET_VRING_ENABLE", || fe.set_vring_enable(index, false))?;
            call(d, "GET_VRING_BASE", || fe.get_vring_base(index))?;
        }
        if self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            call(d, "RESET_DEVICE", || fe.reset_device())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;
    const PF: u64 = 1 << 30;

    #[test]
    fn negotiation_requires_version_1_and_protocol_features() {
        let p = VhostUserProtocolFeatures::all();
        assert_eq!(
            negotiate(PF, p),
            Err(FsError::MissingFeature("VIRTIO_F_VERSION_1"))
        );
        assert_eq!(
            negotiate(V1, p),
            Err(FsError::MissingFeature("VHOST_USER_F_PROTOCOL_FEATURES"))
        );
        let n = negotiate(V1 | PF | GUEST_FEATURES | (1 << 26), p).unwrap();
        assert_eq!(n.guest_features, GUEST_FEATURES);
        // Only what we want is acked: no CONFIG, no BACKEND_REQ, no DEVICE_STATE.
        assert_eq!(n.protocol, wanted_protocol_features());
    }

    #[test]
    fn negotiation_keeps_only_what_both_have() {
        let n = negotiate(
            V1 | PF | (1 << VIRTIO_RING_F_EVENT_IDX),
            VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIG,
        )
        .unwrap();
        assert_eq!(n.guest_features, 1 << VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(n.protocol, VhostUserProtocolFeatures::REPLY_ACK);
        // The driver cannot ack what the backend lacks; PROTOCOL_FEATURES stays.
        let acked = V1 | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);
        assert_eq!(
            backend_ack(&n, acked),
            V1 | (1 << VIRTIO_RING_F_EVENT_IDX) | PF
        );
    }

    #[test]
    fn queue_count_is_checked() {
        assert!(check_queue_num(Some(2), 2).is_ok());
        assert!(check_queue_num(Some(8), 5).is_ok());
        let err = check_queue_num(Some(2), 3).unwrap_err();
        assert_eq!(
            err,
            FsError::TooFewQueues {
                requested: 2,
                backend: 2
            }
        );
        assert!(err.to_string().contains("use queues=1"));
        assert!(check_queue_num(None, 2).is_ok());
        assert!(check_queue_num(None, 3).is_err());
    }

    #[test]
    fn memory_table_comes_from_the_memfd() {
        let ram = crate::vstate::memory::create_guest_ram(4 << 20).unwrap();
        let regions = memory_regions(&ram.mem).unwrap();
        assert_eq!(regions.len(), 1);
        let r = &regions[0];
        assert_eq!(r.guest_phys_addr, 0);
        assert_eq!(r.memory_size, 4 << 20);
        assert_eq!(r.mmap_offset, 0);
        assert_eq!(
            r.userspace_addr,
            ram.mem.get_host_address(GuestAddress(0)).unwrap() as u64
        );
        assert_eq!(
            r.mmap_handle,
            std::os::fd::AsRawFd::as_raw_fd(ram.memfd.as_ref())
        );
    }

    #[test]
    fn memory_table_spans_the_mmio_hole_with_file_offsets() {
        // 3.5 GiB: low RAM up to the hole, the rest above 4 GiB. The mapping
        // is MAP_NORESERVE on a sparse memfd, so this costs no real memory.
        let size = 3584u64 << 20;
        let ram = crate::vstate::memory::create_guest_ram(size).unwrap();
        let regions = memory_regions(&ram.mem).unwrap();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].guest_phys_addr, 0);
        assert_eq!(regions[1].guest_phys_addr, 1 << 32);
        assert_eq!(regions[1].mmap_offset, regions[0].memory_size);
        assert_eq!(regions[0].memory_size + regions[1].memory_size, size);
    }

    #[test]
    fn anonymous_memory_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert!(matches!(
            memory_regions(&mem),
            Err(FsError::MemoryNotShared(0))
        ));
    }

    #[test]
    fn vring_addresses_are_host_addresses() {
        let ram = crate::vstate::memory::create_guest_ram(4 << 20).unwrap();
        let mut q = Queue::new(256).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(0x1000), None);
        q.set_avail_ring_address(Some(0x2000), None);
        q.set_used_ring_address(Some(0x3000), None);
        let c = vring_config(&ram.mem, 0, &q).unwrap();
        let base = ram.mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert_eq!(c.desc_table_addr, base + 0x1000);
        assert_eq!(c.avail_ring_addr, base + 0x2000);
        assert_eq!(c.used_ring_addr, base + 0x3000);
        assert_eq!((c.queue_size, c.queue_max_size), (16, 256));
        q.set_used_ring_address(Some(0x4000_0000), None);
        assert!(matches!(
            vring_config(&ram.mem, 3, &q),
            Err(FsError::QueueOutsideMemory(3))
        ));
    }
}
