//! The Linux zero page (`boot_params`) and its e820 memory map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::layout::{ram_regions, EBDA_START, HIMEM_START, LEGACY_END, ZERO_PAGE_START};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Errors while building or writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More e820 entries than the zero page holds.
    #[error("too many e820 entries ({0})")]
    TooManyE820Entries(usize),
    /// Writing into guest memory failed.
    #[error("cannot write boot_params into guest memory")]
    Write(#[source] linux_loader::configurator::Error),
}

/// One e820 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The e820 map for a guest of `mem_size` bytes: low RAM below the EBDA,
/// the EBDA and legacy area reserved, then RAM from 1 MiB up, skipping
/// the 32-bit MMIO hole.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: LEGACY_END - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_regions(mem_size) {
        let end = start + size;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Where the command line and initrd sit, and how large memory is.
#[derive(Debug, Clone, Default)]
pub struct ZeroPageConfig {
    /// The bzImage setup header, if the kernel was a bzImage.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Command line length including the NUL.
    pub cmdline_size: u32,
    /// Guest address and size of the initrd.
    pub initrd: Option<(u64, u32)>,
    /// Total guest RAM in bytes.
    pub mem_size: u64,
}

/// Build the zero page.
pub fn build_boot_params(cfg: &ZeroPageConfig) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    match cfg.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = cfg.cmdline_addr as u32;
    params.hdr.cmdline_size = cfg.cmdline_size;
    if let Some((addr, size)) = cfg.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size;
    }
    let map = e820_map(cfg.mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Write the zero page at `ZERO_PAGE_START`.
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    params: &boot_params,
) -> Result<(), BootParamsError> {
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::super::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x10_0000 - 0x9fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: MIB,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_just_below_and_at_the_hole() {
        let map = e820_map(MMIO_HOLE_START);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
        let below = e820_map(MMIO_HOLE_START - MIB);
        assert_eq!(below[2].addr + below[2].size, MMIO_HOLE_START - MIB);
    }

    #[test]
    fn e820_above_the_hole() {
        let size = MMIO_HOLE_START + 512 * MIB;
        let map = e820_map(size);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            E820Entry {
                addr: MIB,
                size: MMIO_HOLE_START - MIB,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[3],
            E820Entry {
                addr: MMIO_HOLE_END,
                size: 512 * MIB,
                kind: E820_RAM
            }
        );
        // All RAM except the reserved legacy area is reported.
        assert_eq!(ram_total(&map), size - (MIB - 0x9fc00));
        // Nothing in the hole.
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END));
    }

    #[test]
    fn zero_page_fields_for_elf() {
        let params = build_boot_params(&ZeroPageConfig {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_size: 42,
            initrd: Some((0x7f0_0000, 0x1234)),
            mem_size: 128 * MIB,
        })
        .unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.kernel_alignment }, 0x0100_0000);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries, 3);
    }

    #[test]
    fn zero_page_keeps_bzimage_header() {
        let hdr = setup_header {
            version: 0x20f,
            header: 0x5372_6448,
            ..Default::default()
        };
        let params = build_boot_params(&ZeroPageConfig {
            setup_header: Some(hdr),
            mem_size: 64 * MIB,
            ..Default::default()
        })
        .unwrap();
        assert_eq!({ params.hdr.version }, 0x20f);
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn written_at_the_zero_page() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let params = build_boot_params(&ZeroPageConfig {
            mem_size: 32 * MIB,
            ..Default::default()
        })
        .unwrap();
        write_boot_params(&mem, &params).unwrap();
        // boot_flag lives at offset 0x1fe of the zero page.
        let flag: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap();
        assert_eq!(flag, 0xaa55);
        let entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1e8)).unwrap();
        assert_eq!(entries, 3);
    }
}
