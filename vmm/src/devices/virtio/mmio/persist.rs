//! Snapshot save and restore of the virtio-mmio transport: its registers,
//! the interrupt status and every queue's configuration and progress.
//!
//! The device model's own state (backend connections, buffered frames,
//! a `broken` flag) is not part of this: the caller builds a fresh device
//! with the same configuration and hands it to [`MmioTransport::restore`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::status::{DRIVER_OK, FEATURES_OK};
use super::{ActivationFailure, MmioTransport};
use crate::devices::virtio::device::{
    ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use crate::devices::virtio::device_state::DeviceState;

/// Errors of transport save and restore. The state comes from a host-owned
/// file that may still be corrupt: every inconsistency is an error here,
/// never a panic.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The state could not be encoded.
    #[error("cannot encode the virtio-mmio transport state")]
    Encode(#[source] postcard::Error),
    /// The bytes are not a transport state (truncated or corrupt).
    #[error("cannot decode the virtio-mmio transport state")]
    Decode(#[source] postcard::Error),
    /// Bytes left over after a decoded state.
    #[error("{0} unexpected bytes after the virtio-mmio transport state")]
    TrailingBytes(usize),
    /// The device is not the one saved (another CID, MAC, tag, disk...).
    #[error("the saved device {saved} differs from this VM's {device}")]
    DeviceState {
        /// The saved part.
        saved: String,
        /// This device's.
        device: String,
    },
    /// The state belongs to another kind of device.
    #[error("state of virtio device type {saved} restored onto a device of type {device}")]
    DeviceType {
        /// Device type in the state.
        saved: u32,
        /// Type of the device given to `restore`.
        device: u32,
    },
    /// The device has another number of queues.
    #[error("state has {saved} virtio queues, the device has {device}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        device: usize,
    },
    /// A queue's maximum size differs from the device's.
    #[error("virtio queue {index}: saved maximum size {saved}, the device's is {device}")]
    QueueMaxSize {
        /// Queue index.
        index: usize,
        /// Maximum size in the state.
        saved: u16,
        /// Maximum size of the device.
        device: u16,
    },
    /// The driver accepted features this device does not offer.
    #[error("saved driver features {acked:#x} are not all offered by the device ({offered:#x})")]
    Features {
        /// Features in the state.
        acked: u64,
        /// Features the device offers.
        offered: u64,
    },
    /// A queue's size or ring addresses are not acceptable.
    #[error("virtio queue {index} state is invalid: {source}")]
    BadQueue {
        /// Queue index.
        index: usize,
        /// What virtio-queue refused.
        source: virtio_queue::Error,
    },
    /// A ready queue of an activated device has rings outside guest memory.
    #[error("virtio queue {index} is ready but its rings are not inside guest memory")]
    QueueOutsideMemory {
        /// Queue index.
        index: usize,
    },
    /// More chains in flight than the queue holds.
    #[error("virtio queue {index}: next_avail {next_avail} is more than size {size} ahead of next_used {next_used}")]
    QueueIndices {
        /// Queue index.
        index: usize,
        /// Saved next_avail.
        next_avail: u16,
        /// Saved next_used.
        next_used: u16,
        /// Queue size.
        size: u16,
    },
    /// InterruptStatus has bits no device sets.
    #[error("interrupt status {0:#x} has unknown bits")]
    InterruptStatus(u32),
    /// Fields that contradict each other.
    #[error("inconsistent virtio-mmio transport state: {0}")]
    Inconsistent(&'static str),
    /// Save: a ready queue's used ring index cannot be read.
    #[error("virtio queue {index}: used ring at {addr:#x} cannot be read: {source}")]
    UsedRingUnreadable {
        /// Queue index.
        index: usize,
        /// Guest address of the used ring.
        addr: u64,
        /// The guest memory error.
        source: virtio_queue::Error,
    },
    /// The device refused to start with the restored queues.
    #[error("virtio device activation on restore failed")]
    Activate(#[source] ActivateError),
}

/// One queue: its configuration and how far device and driver got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Maximum size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// Next available ring entry the device will pop.
    pub next_avail: u16,
    /// Next used ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX on this queue copy (the device re-derives
    /// its own from the acknowledged features at activation).
    pub event_idx_enabled: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// Everything the transport needs to continue where it was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// virtio device id, checked on restore.
    pub device_type: u32,
    /// QueueSel.
    pub queue_select: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// Device status.
    pub status: u32,
    /// Whether the device was started (DRIVER_OK accepted).
    pub activated: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The device had asked for a reset (DEVICE_NEEDS_RESET from its thread).
    pub needs_reset: bool,
    /// Per queue, in index order.
    pub queues: Vec<QueueSnapshot>,
    /// The device's own part (its `persist.rs`), checked on restore.
    pub device: DeviceState,
}

impl MmioTransportState {
    /// postcard encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PersistError> {
        postcard::to_stdvec(self).map_err(PersistError::Encode)
    }

    /// Decode `bytes` as written by `to_bytes`, all of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PersistError> {
        let (state, rest) = postcard::take_from_bytes(bytes).map_err(PersistError::Decode)?;
        if !rest.is_empty() {
            return Err(PersistError::TrailingBytes(rest.len()));
        }
        Ok(state)
    }
}

impl MmioTransport {
    /// The transport's state for a snapshot.
    ///
    /// Precondition: the vCPUs are paused and the device is quiesced: its
    /// worker finished every chain it popped, so each popped chain is in
    /// the used ring. The device works on its own copies of the queues and
    /// the transport's copies are stale, so a queue's progress is read from
    /// guest memory: next_used = the used ring's `idx`, next_avail =
    /// next_used. A device that keeps popped chains across iterations
    /// (not completed at quiesce time) would lose them here; such devices
    /// need their own in-flight state saved (not done yet).
    pub fn save(&self) -> Result<MmioTransportState, PersistError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            let mut snap = QueueSnapshot::from(q.state());
            if self.activated && q.ready() {
                let used = q.used_idx(&self.mem, Ordering::Acquire).map_err(|source| {
                    PersistError::UsedRingUnreadable {
                        index,
                        addr: q.used_ring(),
                        source,
                    }
                })?;
                snap.next_used = used.0;
                snap.next_avail = used.0;
            }
            queues.push(snap);
        }
        Ok(MmioTransportState {
            device_type: self.device.device_type(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            needs_reset: self.interrupt.needs_reset(),
            queues,
            device: self.device.device_state(),
        })
    }

    /// A transport for `device` continuing from `state`, on the restored
    /// guest memory `mem`. `device` must be freshly built with the same
    /// configuration as the saved one. An activated state acknowledges the
    /// saved features and activates the device with the restored queues,
    /// as DRIVER_OK does; any failure is an error (the guest is not asked
    /// to reset). Ready queues of a never-activated state are checked when
    /// the driver sets DRIVER_OK, as usual.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        state: &MmioTransportState,
    ) -> Result<MmioTransport, PersistError> {
        check_device(device.as_ref(), state)?;
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, snap) in state.queues.iter().enumerate() {
            queues.push(restore_queue(index, snap, &mem, state.activated)?);
        }
        interrupt.restore_state(
            state.interrupt_status,
            state.config_generation,
            state.needs_reset,
        );
        let mut transport = MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_select: state.queue_select,
            device_features_select: state.device_features_select,
            driver_features_select: state.driver_features_select,
            driver_features: state.driver_features,
            status: state.status,
            activated: false,
        };
        if state.status & FEATURES_OK != 0 {
            transport.device.ack_features(state.driver_features);
        }
        if state.activated {
            transport.device.restoring();
            transport.try_activate().map_err(|e| match e {
                ActivationFailure::InvalidQueue(index) => {
                    PersistError::QueueOutsideMemory { index }
                }
                ActivationFailure::CopyQueue(index, source) => {
                    PersistError::BadQueue { index, source }
                }
                ActivationFailure::Device(e) => PersistError::Activate(e),
            })?;
        }
        Ok(transport)
    }
}

/// The state fits `device` and is consistent in itself.
fn check_device(device: &dyn VirtioDevice, state: &MmioTransportState) -> Result<(), PersistError> {
    if state.device_type != device.device_type() {
        return Err(PersistError::DeviceType {
            saved: state.device_type,
            device: device.device_type(),
        });
    }
    let max_sizes = device.queue_max_sizes();
    if state.queues.len() != max_sizes.len() {
        return Err(PersistError::QueueCount {
            saved: state.queues.len(),
            device: max_sizes.len(),
        });
    }
    for (index, (snap, &device)) in state.queues.iter().zip(max_sizes).enumerate() {
        if snap.max_size != device {
            return Err(PersistError::QueueMaxSize {
                index,
                saved: snap.max_size,
                device,
            });
        }
    }
    if state.status & FEATURES_OK != 0 {
        let offered = device.features() | super::VIRTIO_F_VERSION_1;
        if state.driver_features & !offered != 0 {
            return Err(PersistError::Features {
                acked: state.driver_features,
                offered,
            });
        }
    }
    let own = device.device_state();
    if state.device != own {
        return Err(PersistError::DeviceState {
            saved: format!("{:?}", state.device),
            device: format!("{own:?}"),
        });
    }
    if state.interrupt_status & !(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG) != 0 {
        return Err(PersistError::InterruptStatus(state.interrupt_status));
    }
    if state.activated && state.status & (FEATURES_OK | DRIVER_OK) != FEATURES_OK | DRIVER_OK {
        return Err(PersistError::Inconsistent(
            "activated without FEATURES_OK and DRIVER_OK",
        ));
    }
    Ok(())
}

/// Rebuild queue `index`; a ready queue of an activated device must lie in `mem`.
fn restore_queue(
    index: usize,
    snap: &QueueSnapshot,
    mem: &GuestMemoryMmap,
    activated: bool,
) -> Result<Queue, PersistError> {
    let q = Queue::try_from(QueueState::from(*snap))
        .map_err(|source| PersistError::BadQueue { index, source })?;
    if snap.next_avail.wrapping_sub(snap.next_used) > snap.size {
        return Err(PersistError::QueueIndices {
            index,
            next_avail: snap.next_avail,
            next_used: snap.next_used,
            size: snap.size,
        });
    }
    if activated && q.ready() && !q.is_valid(mem) {
        return Err(PersistError::QueueOutsideMemory { index });
    }
    Ok(q)
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
