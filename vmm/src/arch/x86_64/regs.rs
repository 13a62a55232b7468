//! Initial vCPU register state for the 64-bit Linux boot protocol and for
//! raw real-mode test payloads.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{boot_gdt, kvm_segment_from_gdt};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, ZERO_PAGE_START,
};
use super::paging::{setup_page_tables, PagingError};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Errors while setting up registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// `KVM_SET_REGS` failed.
    #[error("KVM_SET_REGS failed")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SREGS` failed.
    #[error("KVM_GET_SREGS failed")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_SREGS` failed.
    #[error("KVM_SET_SREGS failed")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_FPU` failed.
    #[error("KVM_SET_FPU failed")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// Writing the GDT or IDT into guest memory failed.
    #[error("cannot write the boot GDT/IDT into guest memory")]
    WriteDescriptorTables(#[source] vm_memory::GuestMemoryError),
    /// Writing the page tables failed.
    #[error(transparent)]
    Paging(#[from] PagingError),
}

/// General registers for a 64-bit entry at `entry` (Linux: `rsi` = zero page).
pub fn long_mode_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// General registers for a real-mode entry at offset 0 of the code segment.
pub fn real_mode_regs() -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: 0,
        rsp: BOOT_STACK_POINTER,
        ..Default::default()
    }
}

/// The FPU state Linux expects: default control word and MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Fill `sregs` for 64-bit mode with the boot GDT, IDT and page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let gdt = boot_gdt();
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Fill `sregs` for real mode: CS based at `entry` (16-byte aligned, below
/// 1 MiB) so that IP starts at 0; every other segment based at 0.
pub fn real_mode_sregs(sregs: &mut kvm_sregs, entry: u64) {
    sregs.cs.base = entry;
    sregs.cs.selector = (entry >> 4) as u16;
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        seg.base = 0;
        seg.selector = 0;
    }
    sregs.cr0 &= !(X86_CR0_PE | X86_CR0_PG);
}

/// Write the boot GDT, IDT and page tables into guest memory.
pub fn write_long_mode_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(RegsError::WriteDescriptorTables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteDescriptorTables)?;
    setup_page_tables(mem)?;
    Ok(())
}

/// Put a vCPU in 64-bit mode at `entry`.
pub fn setup_long_mode(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    long_mode_sregs(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&long_mode_regs(entry))
        .map_err(RegsError::SetRegs)?;
    vcpu.set_fpu(&boot_fpu()).map_err(RegsError::SetFpu)
}

/// Put a vCPU in real mode at linear address `entry` (`CS:IP` = `entry>>4:0`).
pub fn setup_real_mode(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    real_mode_sregs(&mut sregs, entry);
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&real_mode_regs())
        .map_err(RegsError::SetRegs)?;
    vcpu.set_fpu(&boot_fpu()).map_err(RegsError::SetFpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn long_mode_general_registers() {
        let regs = long_mode_regs(0x100_0000);
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rsp, 0x8ff0);
        assert_eq!(regs.rbp, 0x8ff0);
        assert_eq!(regs.rsi, 0x7000);
    }

    #[test]
    fn long_mode_special_registers() {
        let mut sregs = kvm_sregs::default();
        long_mode_sregs(&mut sregs);
        assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001);
        assert_eq!(sregs.cr4 & 0x20, 0x20);
        assert_eq!(sregs.efer & 0x500, 0x500);
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.gdt.base, 0x500);
        assert_eq!(sregs.gdt.limit, 31);
        assert_eq!(sregs.idt.base, 0x520);
        assert_eq!(sregs.idt.limit, 7);
        assert_eq!(sregs.cs.selector, 0x8);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.ss.selector, 0x10);
        assert_eq!(sregs.tr.selector, 0x18);
    }

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!(fpu.fcw, 0x37f);
        assert_eq!(fpu.mxcsr, 0x1f80);
    }

    #[test]
    fn tables_written_to_memory() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_long_mode_tables(&mem).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(0x508)).unwrap();
        assert_eq!(code, boot_gdt()[1]);
        let idt: u64 = mem.read_obj(GuestAddress(0x520)).unwrap();
        assert_eq!(idt, 0);
    }

    #[test]
    fn real_mode_segments() {
        let mut sregs = kvm_sregs::default();
        sregs.cs.base = 0xffff_0000;
        sregs.cs.selector = 0xf000;
        sregs.ds.base = 0x1234;
        sregs.cr0 = 0x6000_0011;
        real_mode_sregs(&mut sregs, 0x1_0000);
        assert_eq!((sregs.cs.base, sregs.cs.selector), (0x1_0000, 0x1000));
        assert_eq!((sregs.ds.base, sregs.ds.selector), (0, 0));
        assert_eq!(sregs.cr0 & 1, 0);
        assert_eq!(real_mode_regs().rip, 0);
    }
}
