//! Identity-mapped boot page tables: the first 1 GiB with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// Present + writable.
const PRESENT_RW: u64 = 0x3;
/// Present + writable + 2 MiB page size.
const PRESENT_RW_HUGE: u64 = 0x83;

/// Writing the page tables failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot page tables into guest memory (is the guest smaller than 64 KiB?)")]
pub struct PagingError(#[source] pub vm_memory::GuestMemoryError);

/// The 512 PDE values that identity-map `[0, 1 GiB)`.
pub fn boot_pdes() -> impl Iterator<Item = u64> {
    (0..512u64).map(|i| (i << 21) | PRESENT_RW_HUGE)
}

/// Write PML4 -> PDPTE -> PDE identity tables; CR3 must be `PML4_START`.
pub fn setup_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), PagingError> {
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))
        .map_err(PagingError)?;
    mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(PagingError)?;
    for (i, pde) in boot_pdes().enumerate() {
        mem.write_obj(pde, GuestAddress(PDE_START + (i as u64) * 8))
            .map_err(PagingError)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn tables_identity_map_first_gib() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0xa003);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, 0xb003);
        let first: u64 = mem.read_obj(GuestAddress(PDE_START)).unwrap();
        assert_eq!(first, 0x83);
        let second: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(second, 0x20_0083);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        // Nothing else in the PML4 or PDPTE.
        let next: u64 = mem.read_obj(GuestAddress(PML4_START + 8)).unwrap();
        assert_eq!(next, 0);
    }

    #[test]
    fn too_small_memory_is_an_error() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(setup_page_tables(&mem).is_err());
    }
}
