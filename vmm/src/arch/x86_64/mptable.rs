//! Intel MultiProcessor Specification 1.4 table, so that a guest without
//! ACPI finds every vCPU, the IOAPIC and the ISA interrupt routing.
//!
//! Layout at `EBDA_START` (Linux scans the last KiB of base memory):
//! floating pointer (16 bytes), then the configuration table header (44
//! bytes) followed by processor, bus, IOAPIC, I/O interrupt and local
//! interrupt entries.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX, LEGACY_END};

const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MPC_SPEC: u8 = 4;
const MPC_OEM: &[u8; 8] = b"COCOON  ";
const MPC_PRODUCT_ID: &[u8; 12] = b"000000000000";
const BUS_TYPE_ISA: &[u8; 6] = b"ISA   ";
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const MPC_CPU_SIZE: usize = 20;

/// Largest vCPU count the table supports (APIC ids are 8 bits, the IOAPIC
/// takes the id after the last CPU).
pub const MAX_SUPPORTED_CPUS: u8 = 254;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero or too many vCPUs.
    #[error("cannot describe {0} vCPUs in the MP table (1 to {MAX_SUPPORTED_CPUS} supported)")]
    TooManyCpus(u8),
    /// The table does not fit in the legacy area.
    #[error("the MP table ({0} bytes) does not fit below 1 MiB")]
    TooLarge(usize),
    /// Writing guest memory failed.
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

fn fix_checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    bytes[at] = 0u8.wrapping_sub(checksum(bytes));
}

/// Build the floating pointer and configuration table for `num_cpus` at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_SUPPORTED_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;
    let table_addr = base + MPF_SIZE as u64;

    // Entries after the configuration table header.
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.push(MP_PROCESSOR);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.push(flags);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(BUS_TYPE_ISA);
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // type, irq type, flags (conforming: 2 bytes), source bus, source irq, dest apic, dest pin
        // ISA irq N goes to IOAPIC pin N, as KVM's default GSI routing does.
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 ExtINT on the BSP, LINT1 NMI on all.
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    debug_assert!(entries.len() >= usize::from(num_cpus) * MPC_CPU_SIZE);

    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(MPC_SIGNATURE);
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MPC_SPEC);
    table.push(0); // checksum
    table.extend_from_slice(MPC_OEM);
    table.extend_from_slice(MPC_PRODUCT_ID);
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended length + checksum + reserved
    debug_assert_eq!(table.len(), MPC_HEADER_SIZE);
    table.extend_from_slice(&entries);
    fix_checksum(&mut table, 7);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MPC_SPEC);
    mpf.push(0); // checksum
    mpf.extend_from_slice(&[0u8; 5]); // feature bytes: no default configuration
    fix_checksum(&mut mpf, 10);

    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Write the MP table for `num_cpus` vCPUs at `EBDA_START`.
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    if EBDA_START + bytes.len() as u64 > LEGACY_END {
        return Err(MptableError::TooLarge(bytes.len()));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn checksums_are_zero() {
        for cpus in [1u8, 2, 8, 64, MAX_SUPPORTED_CPUS] {
            let bytes = build(cpus, EBDA_START).unwrap();
            assert_eq!(
                checksum(&bytes[..MPF_SIZE]),
                0,
                "floating pointer, {cpus} cpus"
            );
            let len = u16::from_le_bytes([bytes[MPF_SIZE + 4], bytes[MPF_SIZE + 5]]) as usize;
            assert_eq!(len, bytes.len() - MPF_SIZE);
            assert_eq!(checksum(&bytes[MPF_SIZE..]), 0, "table, {cpus} cpus");
        }
    }

    #[test]
    fn header_fields() {
        let bytes = build(2, EBDA_START).unwrap();
        assert_eq!(&bytes[0..4], b"_MP_");
        let ptr = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), EBDA_START + 16);
        assert_eq!(&bytes[16..20], b"PCMP");
        let count = u16::from_le_bytes(bytes[16 + 34..16 + 36].try_into().unwrap());
        // 2 cpus + bus + ioapic + 24 irqs + 2 lints
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        let lapic = u32::from_le_bytes(bytes[16 + 36..16 + 40].try_into().unwrap());
        assert_eq!(u64::from(lapic), APIC_ADDR);
        // First CPU entry is the enabled boot processor; second is only enabled.
        let cpu0 = &bytes[16 + 44..];
        assert_eq!((cpu0[0], cpu0[1], cpu0[3]), (MP_PROCESSOR, 0, 3));
        let cpu1 = &cpu0[20..];
        assert_eq!((cpu1[0], cpu1[1], cpu1[3]), (MP_PROCESSOR, 1, 1));
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(
            build(0, EBDA_START),
            Err(MptableError::TooManyCpus(0))
        ));
        assert!(build(255, EBDA_START).is_err());
    }

    #[test]
    fn written_to_guest_memory() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 4).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
