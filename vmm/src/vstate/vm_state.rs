//! Saving and restoring the VM-wide KVM state: the in-kernel interrupt
//! controllers (PIC pair and IOAPIC), the PIT and the kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Errors while saving or restoring VM-wide state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    /// A `KVM_GET_*` ioctl failed.
    #[error("{what} failed while saving the VM")]
    Get {
        /// The ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A `KVM_SET_*` ioctl failed.
    #[error("{what} failed while restoring the VM")]
    Set {
        /// The ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The snapshot and the VM disagree on the in-kernel irqchip.
    #[error("the snapshot was taken {} an in-kernel irqchip but the VM is built {}", if *.saved { "with" } else { "without" }, if *.saved { "without" } else { "with" })]
    IrqchipMismatch {
        /// Whether the snapshot has irqchip state.
        saved: bool,
    },
}

/// The in-kernel irqchip and PIT.
#[derive(Clone, Serialize, Deserialize)]
pub struct IrqchipState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
}

/// VM-wide state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// Present when the VM has the in-kernel irqchip.
    pub irqchip: Option<IrqchipState>,
    /// kvmclock's value when the VM was paused.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("irqchip", &self.irqchip.is_some())
            .field("clock_ns", &self.clock.clock)
            .finish()
    }
}

fn get_chip(fd: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(|source| VmStateError::Get { what, source })?;
    Ok(chip)
}

impl VmState {
    /// Read the state of a VM whose vCPUs are paused.
    pub fn save(fd: &VmFd, irqchip: bool) -> Result<Self, VmStateError> {
        let irqchip = if irqchip {
            Some(IrqchipState {
                pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
                pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
                ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
                pit: fd.get_pit2().map_err(|source| VmStateError::Get {
                    what: "KVM_GET_PIT2",
                    source,
                })?,
            })
        } else {
            None
        };
        let clock = fd.get_clock().map_err(|source| VmStateError::Get {
            what: "KVM_GET_CLOCK",
            source,
        })?;
        Ok(VmState { irqchip, clock })
    }

    /// Write this state into a fresh VM (built with the same irqchip
    /// choice) before its vCPUs run.
    pub fn restore(&self, fd: &VmFd, irqchip: bool) -> Result<(), VmStateError> {
        if self.irqchip.is_some() != irqchip {
            return Err(VmStateError::IrqchipMismatch {
                saved: self.irqchip.is_some(),
            });
        }
        if let Some(chips) = &self.irqchip {
            for (chip, what) in [
                (&chips.pic_master, "KVM_SET_IRQCHIP (PIC master)"),
                (&chips.pic_slave, "KVM_SET_IRQCHIP (PIC slave)"),
                (&chips.ioapic, "KVM_SET_IRQCHIP (IOAPIC)"),
            ] {
                fd.set_irqchip(chip)
                    .map_err(|source| VmStateError::Set { what, source })?;
            }
            fd.set_pit2(&chips.pit)
                .map_err(|source| VmStateError::Set {
                    what: "KVM_SET_PIT2",
                    source,
                })?;
        }
        // Only the clock value: the flags describe the host it was read on
        // (TSC_STABLE, REALTIME), which KVM_SET_CLOCK would misread.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        fd.set_clock(&clock).map_err(|source| VmStateError::Set {
            what: "KVM_SET_CLOCK",
            source,
        })?;
        Ok(())
    }
}
