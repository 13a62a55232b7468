//! The interface every virtio device implements, and the interrupt a
//! device raises towards the driver.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::Queue;

use super::device_state::DeviceState;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// InterruptStatus bit: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// Errors a device returns from `activate`.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver gave us a queue layout the device cannot use.
    #[error("queue {index} is not usable: {reason}")]
    BadQueue {
        /// Queue index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The device's backend failed to start.
    #[error("device backend failed to start: {0}")]
    Backend(String),
}

/// The interrupt line of one virtio-mmio device: a status word the driver
/// reads at `InterruptStatus` and an EventFd registered as a KVM irqfd.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    /// The device is in an error state only a reset clears (the transport
    /// reports DEVICE_NEEDS_RESET in the status register).
    needs_reset: AtomicBool,
    irq_evt: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt raised by writing to `irq_evt`.
    pub fn new(irq_evt: EventFd) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq_evt,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq_evt.write(1) {
            crate::limited!(warn, error = %e, "cannot raise virtio interrupt");
        }
    }

    /// Tell the driver that used rings changed.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tell the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The device broke and needs a reset: DEVICE_NEEDS_RESET is reported
    /// from now on, and the driver gets one configuration-change
    /// notification (virtio 1.1, 2.1.2). Callable from any device thread.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config_change();
        }
    }

    /// After a pass over a queue: interrupt the driver if buffers were
    /// used; on an error raise DEVICE_NEEDS_RESET and hand the error back,
    /// for the device to stop serving and log it with its own context.
    pub fn after_queue_pass<E>(&self, pass: Result<bool, E>) -> Result<(), E> {
        match pass {
            Ok(true) => {
                self.signal_used_queue();
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.signal_needs_reset();
                Err(e)
            }
        }
    }

    /// Whether the device asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The current InterruptStatus value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The configuration generation counter.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Clear the status (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// A restored VM starts: raise the interrupt again if InterruptStatus
    /// has bits set. A device that signalled while the VM was being built
    /// (a restored device activates then) did so before the saved
    /// interrupt controller state was put back, which drops the edge.
    /// Returns whether it raised.
    pub fn reraise_pending(&self) -> bool {
        if self.status() == 0 {
            return false;
        }
        if let Err(e) = self.irq_evt.write(1) {
            crate::limited!(warn, error = %e, "cannot raise virtio interrupt");
        }
        true
    }

    /// Snapshot restore: set InterruptStatus, the configuration generation
    /// and the needs-reset flag to saved values. Nothing is written to the
    /// EventFd: an interrupt pending at snapshot time is part of the
    /// interrupt controller's saved state, not re-raised here.
    pub fn restore_state(&self, status: u32, config_generation: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// The EventFd behind the interrupt (for the irqfd registration).
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (1 = net, 2 = block, 4 = rng, 19 = vsock, 26 = fs...).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers. The transport adds `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;

    /// The features the driver accepted (called when it sets FEATURES_OK).
    fn ack_features(&mut self, _features: u64) {}

    /// Read from the device configuration space; out-of-range bytes must
    /// be left as they are (the transport pre-fills them with zeroes).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Write to the device configuration space; out-of-range writes must
    /// be ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Start the device with the queues the driver set up.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError>;

    /// Stop the device and forget its queues (status written to 0).
    fn reset(&mut self);

    /// Before a snapshot (vCPUs paused): stop processing so that every
    /// chain the device popped is in the used ring, which is what the
    /// transport's save reads its queue progress from. The VM is not run
    /// again after this; its snapshot is.
    fn quiesce(&mut self) {}

    /// Before a restored transport activates this device: the guest's
    /// driver state comes from a VM with other backends.
    fn restoring(&mut self) {}

    /// The queue kicks, index = queue (`event_loop::QueueEvents`): KVM
    /// signals them as ioeventfds on QueueNotify (datamatch = the queue
    /// index), and the transport writes them for a notify KVM did not
    /// match. Made with the device, the same for every activation.
    fn queue_events(&self) -> &[EventFd];

    /// The device's own part of a snapshot (its `persist.rs`): what the
    /// driver learned from it. A restore onto a device whose part differs
    /// is refused.
    fn device_state(&self) -> DeviceState {
        DeviceState::Stateless
    }

    /// A vhost-user backend signals used buffers straight through the
    /// irqfd, which cannot set InterruptStatus; the transport then reports
    /// `VIRTIO_MMIO_INT_VRING` unless only a config change is pending.
    fn is_vhost_user(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_status_and_ack() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = VirtioInterrupt::new(evt.try_clone().unwrap());
        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.config_generation(), 1);
        assert_eq!(evt.read().unwrap(), 2);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.reset();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn restore_state_sets_the_saved_values_without_interrupting() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = VirtioInterrupt::new(evt.try_clone().unwrap());
        irq.restore_state(VIRTIO_MMIO_INT_VRING, 7, true);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.config_generation(), 7);
        assert!(irq.needs_reset());
        assert!(evt.read().is_err(), "restore must not raise the interrupt");
    }

    #[test]
    fn a_pending_status_is_raised_again_and_a_clear_one_is_not() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = VirtioInterrupt::new(evt.try_clone().unwrap());
        assert!(!irq.reraise_pending());
        assert!(evt.read().is_err());
        irq.restore_state(VIRTIO_MMIO_INT_VRING, 0, false);
        assert!(irq.reraise_pending());
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(
            irq.status(),
            VIRTIO_MMIO_INT_VRING,
            "the status stays for the driver"
        );
    }

    #[test]
    fn after_queue_pass_interrupts_only_for_used_buffers_and_breaks_on_errors() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = VirtioInterrupt::new(evt.try_clone().unwrap());
        assert_eq!(
            irq.after_queue_pass::<std::io::Error>(Ok(false)).ok(),
            Some(())
        );
        assert_eq!(irq.status(), 0);
        assert!(evt.read().is_err(), "no interrupt when nothing was used");
        assert!(irq.after_queue_pass::<std::io::Error>(Ok(true)).is_ok());
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(evt.read().unwrap(), 1);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        let err = irq.after_queue_pass(Err(std::io::Error::other("bad chain")));
        assert_eq!(err.unwrap_err().to_string(), "bad chain");
        assert!(irq.needs_reset());
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.config_generation(), 1);
    }
}
