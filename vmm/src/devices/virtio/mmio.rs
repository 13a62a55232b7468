//! The virtio-mmio transport, version 2 register layout (virtio 1.2 §4.2.2).
//!
//! Register accesses below 0x100 must be 4-byte aligned 32-bit accesses;
//! anything else is ignored (reads return all-ones) and logged with a rate
//! limit, since the guest controls it. Device configuration space starts at
//! 0x100 and accepts 1, 2, 4 and 8 byte accesses.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::device::{
    ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use crate::devices::bus::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Transport version 2 (virtio 1.x, no legacy).
pub const MMIO_VERSION: u32 = 2;
/// Our vendor id ("COCO").
pub const VENDOR_ID: u32 = 0x4f43_4f43;
/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub mod persist;
pub mod regs;

pub mod status;

use status::*;

/// Why `MmioTransport::try_activate` did not start the device.
enum ActivationFailure {
    /// This ready queue's rings are not inside guest memory.
    InvalidQueue(usize),
    /// This queue's state could not be copied for the device.
    CopyQueue(usize, virtio_queue::Error),
    /// The device refused to start.
    Device(ActivateError),
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wrap `device`; queue memory is validated against `mem`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| match Queue::new(max) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::error!(max, error = ?e, "virtio device declared an invalid queue size");
                    None
                }
            })
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
        }
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Stop the device's processing before a snapshot (see
    /// [`VirtioDevice::quiesce`]).
    pub fn quiesce(&mut self) {
        self.device.quiesce();
    }

    /// The current device status.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device has been activated.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue and feature registers may only change between DRIVER and
    /// FEATURES_OK (features) or before DRIVER_OK (queues).
    fn features_writable(&self) -> bool {
        self.status & DRIVER != 0 && self.status & (FEATURES_OK | FAILED) == 0
    }

    fn queue_writable(&self) -> bool {
        self.status & FEATURES_OK != 0 && self.status & (DRIVER_OK | FAILED) == 0
    }

    fn reset(&mut self) {
        if self.activated {
            crate::limited!(
                debug,
                device_type = self.device.device_type(),
                "virtio device reset"
            );
        }
        self.device.reset();
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            crate::limited!(
                warn,
                old,
                new = value,
                "virtio driver cleared status bits without a reset; ignored"
            );
            return;
        }
        let added = value & !old;
        if added & FAILED != 0 {
            crate::limited!(
                warn,
                device_type = self.device.device_type(),
                "virtio driver marked the device failed"
            );
            self.status = value;
            return;
        }
        let mut value = value;
        let ordered = |bit: u32, needs: u32| added & bit == 0 || value & needs == needs;
        if !ordered(DRIVER, ACKNOWLEDGE)
            || !ordered(FEATURES_OK, ACKNOWLEDGE | DRIVER)
            || !ordered(DRIVER_OK, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        {
            crate::limited!(
                warn,
                old,
                new = value,
                "virtio status bits set out of order; ignored"
            );
            return;
        }
        if added & FEATURES_OK != 0 {
            let offered = self.offered_features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                crate::limited!(
                    warn,
                    acked = self.driver_features,
                    offered,
                    "virtio driver accepted features we do not offer (or not VERSION_1); FEATURES_OK refused"
                );
                value &= !FEATURES_OK;
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        self.status = value;
        if added & DRIVER_OK != 0 && value & FEATURES_OK != 0 {
            self.activate();
        }
    }

    /// DRIVER_OK: validate the ready queues and start the device with
    /// copies of them (the transport keeps the register view). Shared by
    /// the driver's DRIVER_OK and by snapshot restore.
    fn try_activate(&mut self) -> Result<(), ActivationFailure> {
        for (index, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(ActivationFailure::InvalidQueue(index));
            }
        }
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                Queue::try_from(q.state()).map_err(|e| ActivationFailure::CopyQueue(index, e))
            })
            .collect::<Result<Vec<Queue>, _>>()?;
        self.device
            .activate(self.mem.clone(), queues, self.interrupt.clone())
            .map_err(ActivationFailure::Device)?;
        self.activated = true;
        Ok(())
    }

    fn activate(&mut self) {
        match self.try_activate() {
            Ok(()) => return,
            Err(ActivationFailure::InvalidQueue(index)) => crate::limited!(
                warn,
                index,
                "virtio queue is ready but invalid; device needs reset"
            ),
            Err(ActivationFailure::CopyQueue(index, e)) => crate::limited!(
                warn,
                index,
                error = ?e,
                "virtio queue state cannot be copied; device needs reset"
            ),
            Err(ActivationFailure::Device(e)) => {
                crate::limited!(warn, error = %e, "virtio device activation failed")
            }
        }
        self.needs_reset();
    }

    fn needs_reset(&mut self) {
        self.status |= DEVICE_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            regs::INTERRUPT_STATUS => {
                let status = self.interrupt.status();
                // As Firecracker does for vhost-user: the backend's irqfd
                // writes cannot set the status bit, so report a used ring.
                if self.device.is_vhost_user() && status != VIRTIO_MMIO_INT_CONFIG {
                    status | VIRTIO_MMIO_INT_VRING
                } else {
                    status
                }
            }
            // A device that broke on its own thread says so through its
            // interrupt line.
            regs::STATUS if self.interrupt.needs_reset() => self.status | DEVICE_NEEDS_RESET,
            regs::STATUS => self.status,
            // No shared memory regions: length all-ones means "absent".
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH => u32::MAX,
            regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => u32::MAX,
            regs::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                crate::limited!(
                    debug,
                    offset,
                    "virtio-mmio read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_writable() {
            crate::limited!(
                warn,
                offset,
                status = self.status,
                "virtio queue register written in the wrong state; ignored"
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            crate::limited!(
                warn,
                offset,
                "virtio queue register written with an invalid QueueSel; ignored"
            );
            return;
        };
        if q.ready() && offset != regs::QUEUE_READY {
            crate::limited!(warn, offset, "virtio queue changed while ready; ignored");
            return;
        }
        match offset {
            regs::QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => q.set_size(size),
                Err(_) => crate::limited!(warn, value, "virtio queue size above 65535; ignored"),
            },
            regs::QUEUE_READY => q.set_ready(value == 1),
            regs::QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            regs::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            regs::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
            regs::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
            regs::QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
            regs::QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_select = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            regs::DRIVER_FEATURES => {
                if !self.features_writable() {
                    crate::limited!(
                        warn,
                        status = self.status,
                        "virtio driver features written in the wrong state; ignored"
                    );
                    return;
                }
                match self.driver_features_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    sel => crate::limited!(
                        warn,
                        sel,
                        "virtio driver features written with a selector above 1; ignored"
                    ),
                }
            }
            regs::QUEUE_SEL => self.queue_select = value,
            regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_AVAIL_LOW
            | regs::QUEUE_AVAIL_HIGH
            | regs::QUEUE_USED_LOW
            | regs::QUEUE_USED_HIGH => self.write_queue_register(offset, value),
            regs::QUEUE_NOTIFY => {
                if !self.activated {
                    crate::limited!(
                        debug,
                        value,
                        "virtio queue notified before DRIVER_OK; ignored"
                    );
                } else if let Some(kick) = self
                    .device
                    .queue_events()
                    .get(value as usize)
                    .filter(|_| (value as usize) < self.queues.len())
                {
                    // KVM matched no ioeventfd (none registered: tests, or
                    // a VM without them): the same kick, by hand.
                    if let Err(e) = kick.write(1) {
                        crate::limited!(warn, error = %e, "cannot kick a virtio queue");
                    }
                } else {
                    crate::limited!(
                        warn,
                        value,
                        "virtio notify of a queue that does not exist; ignored"
                    );
                }
            }
            regs::INTERRUPT_ACK => self.interrupt.ack(value),
            regs::STATUS => self.set_status(value),
            regs::SHM_SEL => {}
            _ => crate::limited!(
                debug,
                offset,
                value,
                "virtio-mmio write to a read-only or unknown register"
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            data.fill(0);
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - regs::CONFIG, data);
            } else {
                crate::limited!(
                    debug,
                    len = data.len(),
                    "virtio config read with a bad size"
                );
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            crate::limited!(
                debug,
                offset,
                len = data.len(),
                "virtio-mmio register read with a bad size or alignment"
            );
            data.fill(0xff);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                crate::limited!(
                    debug,
                    len = data.len(),
                    "virtio config write with a bad size"
                );
            } else if self.status & FAILED != 0 {
                crate::limited!(debug, "virtio config write after FAILED; ignored");
            } else {
                self.device.write_config(offset - regs::CONFIG, data);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            crate::limited!(
                debug,
                offset,
                len = data.len(),
                "virtio-mmio register write with a bad size or alignment"
            );
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, value);
    }
}

#[cfg(test)]
mod tests;
