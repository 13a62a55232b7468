//! Guest physical memory layout (mirrors the Firecracker layout).

/// Start of the GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level 4 page table.
pub const PML4_START: u64 = 0x9000;
/// Level 3 page table.
pub const PDPTE_START: u64 = 0xa000;
/// Level 2 page table (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we write (Linux x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of the legacy (VGA/ROM) area that e820 reports as reserved.
pub const LEGACY_END: u64 = 0x10_0000;
/// Where "high memory" starts; the kernel must be loaded above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Address passed to `KVM_SET_TSS_ADDRESS` (three pages, inside the MMIO hole).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Address passed to `KVM_SET_IDENTITY_MAP_ADDR` (one page, below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Start of the 32-bit MMIO hole (devices, IOAPIC, LAPIC) below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Base of the first virtio-mmio device slot.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_HOLE_START;
/// Size of each virtio-mmio device slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Number of virtio-mmio slots (each needs its own GSI).
pub const VIRTIO_MMIO_MAX_SLOTS: u64 = 19;
/// First GSI handed to virtio-mmio devices (0-4 are taken by the legacy devices).
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// Last usable IOAPIC GSI.
pub const IRQ_MAX: u32 = 23;
/// Base of MMIO addresses free for other devices (after the virtio slots).
pub const MMIO_FREE_START: u64 = VIRTIO_MMIO_BASE + VIRTIO_MMIO_SLOT_SIZE * 0x100;
/// IOAPIC base address.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// LAPIC base address.
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// Serial port (COM1) base and its IRQ.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Number of serial registers.
pub const SERIAL_PORT_LEN: u16 = 8;
/// COM1's IRQ line.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

// The fixed structures must not overlap (checked at compile time).
const _: () = {
    assert!(BOOT_IDT_START >= BOOT_GDT_START + 4 * 8);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(MMIO_FREE_START < IOAPIC_ADDR);
    assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 <= KVM_TSS_ADDRESS);
    assert!(VIRTIO_FIRST_GSI as u64 + VIRTIO_MMIO_MAX_SLOTS - 1 == IRQ_MAX as u64);
};

/// Guest RAM regions for a guest of `mem_size` bytes: everything below the
/// MMIO hole when it fits, split around the hole otherwise.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let size = 4u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(
            regions,
            vec![(0, MMIO_HOLE_START), (1 << 32, size - MMIO_HOLE_START)]
        );
        assert_eq!(regions.iter().map(|r| r.1).sum::<u64>(), size);
        assert_eq!(low_ram_end(size), MMIO_HOLE_START);
    }
}
