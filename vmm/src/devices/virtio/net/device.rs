//! The virtio-net device model: config space with the MAC, and a worker
//! thread per activation that runs an epoll loop over the TAP and the
//! queue kicks (`queue_notify` only writes an EventFd).

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::config::{MacAddr, NetConfig, TapSource};
use super::tap::{Tap, TapError};
use super::worker::NetQueues;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};

/// virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of the rx and tx queues.
pub const NET_QUEUE_SIZE: u16 = 256;
/// `VIRTIO_NET_F_MAC`.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_MTU`.
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Where `mtu` is in `struct virtio_net_config` (after mac[6], status and
/// max_virtqueue_pairs, which we do not offer).
const CONFIG_MTU_OFFSET: usize = 10;

const STOP: u64 = 0;
const RX_KICK: u64 = 1;
const TX_KICK: u64 = 2;
const TAP: u64 = 3;

/// Errors setting up a net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP cannot be used.
    #[error(transparent)]
    Tap(#[from] TapError),
}

struct Running {
    kicks: [EventFd; 2],
    stop: EventFd,
    handle: crate::threads::Worker<()>,
}

/// A virtio-net device on a TAP.
pub struct Net {
    tap: Tap,
    mac: Option<MacAddr>,
    mtu: Option<u16>,
    running: Option<Running>,
    broken: Arc<AtomicBool>,
}

impl Net {
    /// Attach to the TAP `config` names, or take over its descriptor.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        let tap = match &config.tap {
            TapSource::Name(name) => Tap::open(name)?,
            TapSource::Fd(fd) => Tap::from_fd(*fd)?,
        };
        Ok(Net {
            tap,
            mac: config.mac,
            mtu: config.mtu,
            running: None,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether a malformed chain stopped the device (until the driver resets it).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    fn stop_worker(&mut self) {
        if let Some(r) = self.running.take() {
            if let Err(e) = r.stop.write(1) {
                tracing::error!(error = %e, "cannot stop the virtio-net worker");
            }
            if r.handle.join().is_err() {
                tracing::error!("the virtio-net worker panicked");
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

fn add(epoll: &Epoll, fd: i32, token: u64) -> std::io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

/// The worker: serve kicks and TAP frames until `stop` fires.
fn run(
    mut q: NetQueues<Tap>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    stop: EventFd,
    broken: Arc<AtomicBool>,
) {
    let setup = || -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        add(&epoll, stop.as_raw_fd(), STOP)?;
        add(&epoll, rx_kick.as_raw_fd(), RX_KICK)?;
        add(&epoll, tx_kick.as_raw_fd(), TX_KICK)?;
        add(&epoll, q.io.as_raw_fd(), TAP)?;
        Ok(epoll)
    };
    let epoll = match setup() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "virtio-net worker cannot set up epoll");
            broken.store(true, Ordering::SeqCst);
            q.signal_needs_reset();
            return;
        }
    };
    let mut tap_polled = true;
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "virtio-net worker epoll failed");
                broken.store(true, Ordering::SeqCst);
                q.signal_needs_reset();
                return;
            }
        };
        let (mut rx, mut tx) = (false, false);
        for ev in &events[..n] {
            match ev.data() {
                STOP => return,
                RX_KICK => {
                    let _ = rx_kick.read();
                    rx = true;
                }
                TX_KICK => {
                    let _ = tx_kick.read();
                    tx = true;
                }
                _ => rx = true,
            }
        }
        if broken.load(Ordering::SeqCst) {
            continue; // kicks are drained above; the TAP is no longer polled
        }
        let result = (|| {
            if tx {
                q.process_tx()?;
            }
            if rx {
                let poll = q.process_rx()?;
                if poll != tap_polled {
                    let op = if poll {
                        ControlOperation::Add
                    } else {
                        ControlOperation::Delete
                    };
                    epoll
                        .ctl(op, q.io.as_raw_fd(), EpollEvent::new(EventSet::IN, TAP))
                        .map_err(super::worker::NetQueueError::Backend)?;
                    tap_polled = poll;
                }
            }
            Ok::<(), super::worker::NetQueueError>(())
        })();
        if let Err(e) = result {
            broken.store(true, Ordering::SeqCst);
            q.signal_needs_reset();
            crate::limited!(
                error,
                tap = q.io.name(),
                error = &e as &dyn std::error::Error,
                "virtio-net stopped: the device needs a reset"
            );
            if tap_polled {
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    q.io.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TAP),
                );
                tap_polled = false;
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 0;
        if self.mac.is_some() {
            f |= VIRTIO_NET_F_MAC;
        }
        if self.mtu.is_some() {
            f |= VIRTIO_NET_F_MTU;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if self.mac.is_none() && self.mtu.is_none() {
            return;
        }
        // mac[6], status (le16), max_virtqueue_pairs (le16), mtu (le16).
        let mut config = [0u8; CONFIG_MTU_OFFSET + 2];
        if let Some(mac) = self.mac {
            config[..6].copy_from_slice(&mac.0);
        }
        if let Some(mtu) = self.mtu {
            config[CONFIG_MTU_OFFSET..].copy_from_slice(&mtu.to_le_bytes());
        }
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // VIRTIO_NET_F_CTRL_MAC_ADDR is not offered: the MAC is read-only.
        crate::limited!(debug, offset, "virtio-net configuration write ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let [rxq, txq]: [Queue; 2] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| ActivateError::BadQueue {
                    index: q.len(),
                    reason: "virtio-net has exactly an rx and a tx queue".into(),
                })?;
        self.stop_worker();
        let backend = |e: std::io::Error| ActivateError::Backend(format!("virtio-net: {e}"));
        let tap = self.tap.try_clone().map_err(backend)?;
        let rx_kick = EventFd::new(libc::EFD_NONBLOCK).map_err(backend)?;
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK).map_err(backend)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(backend)?;
        let kicks = [
            rx_kick.try_clone().map_err(backend)?,
            tx_kick.try_clone().map_err(backend)?,
        ];
        let stop_worker = stop.try_clone().map_err(backend)?;
        self.broken.store(false, Ordering::SeqCst);
        let broken = self.broken.clone();
        let q = NetQueues::new(tap, mem, rxq, txq, interrupt);
        let handle = crate::threads::spawn_worker(
            crate::seccomp::ThreadKind::Net,
            format!("net-{}", self.tap.name()),
            move || run(q, rx_kick, tx_kick, stop_worker, broken),
        )
        .map_err(|e| ActivateError::Backend(format!("virtio-net: {e}")))?;
        self.running = Some(Running {
            kicks,
            stop,
            handle,
        });
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) {
        let Some(r) = &self.running else { return };
        if let Some(kick) = r.kicks.get(usize::from(queue)) {
            if let Err(e) = kick.write(1) {
                crate::limited!(warn, error = %e, "cannot kick the virtio-net worker");
            }
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.broken.store(false, Ordering::SeqCst);
    }

    fn quiesce(&mut self) {
        self.stop_worker();
    }
}
