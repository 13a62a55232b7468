//! x86-64 boot: memory layout, zero page, GDT, page tables, registers,
//! CPUID, MSRs, LAPIC and the MP table.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
