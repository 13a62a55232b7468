//! Local APIC setup: LINT0 delivers ExtINT (the legacy PIC), LINT1 NMI.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while programming the local APIC.
#[derive(Debug, thiserror::Error)]
pub enum InterruptsError {
    /// `KVM_GET_LAPIC` failed.
    #[error("KVM_GET_LAPIC failed (was the irqchip created?)")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// `KVM_SET_LAPIC` failed.
    #[error("KVM_SET_LAPIC failed")]
    SetLapic(#[source] kvm_ioctls::Error),
}

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Set LINT0 to ExtINT and LINT1 to NMI in a LAPIC state.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let lint0 = get_reg(lapic, APIC_LVT0);
    set_reg(
        lapic,
        APIC_LVT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lint1, APIC_MODE_NMI));
}

/// Program LINT0/LINT1 of a vCPU's in-kernel LAPIC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), InterruptsError> {
    let mut lapic = vcpu.get_lapic().map_err(InterruptsError::GetLapic)?;
    set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(InterruptsError::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_LVT0, 0x1_0000 | 0x300);
        set_lint_modes(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x1_0700);
        assert_eq!(get_reg(&lapic, APIC_LVT1), 0x400);
    }
}
