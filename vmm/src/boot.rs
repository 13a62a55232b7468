//! Loading the guest: Linux kernel (ELF vmlinux or bzImage), initrd,
//! command line, zero page and MP table; or a raw payload.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::boot_params::{self, BootParamsError, ZeroPageConfig};
use crate::arch::x86_64::layout::{low_ram_end, CMDLINE_START, HIMEM_START};
use crate::arch::x86_64::mptable::{setup_mptable, MptableError};
use crate::arch::x86_64::regs::{write_long_mode_tables, RegsError};
use crate::cmdline::{self, CmdlineError, MmioDeclaration};
use crate::config::{EntryMode, KernelBoot, RawPayload};
use crate::vstate::vcpu::BootEntry;

/// Offset of the 64-bit entry point from a bzImage's protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_HDRS_OFFSET: u64 = 0x202;
const PAGE_SIZE: u64 = 0x1000;

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Kernel file does not exist.
    #[error(
        "kernel {0} does not exist; build it with guest-kernel/build.sh or pass --kernel PATH"
    )]
    KernelMissing(PathBuf),
    /// Kernel file cannot be read.
    #[error("cannot read kernel {path}; check its permissions")]
    KernelUnreadable {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage; pass the vmlinux from guest-kernel/build.sh")]
    KernelFormat(PathBuf),
    /// The loader refused the image.
    #[error("cannot load kernel {path}: {detail}; is it a 64-bit x86 kernel that fits in guest memory (raise --memory)?")]
    KernelLoad {
        /// The path.
        path: PathBuf,
        /// The loader's complaint.
        detail: String,
    },
    /// Initrd missing.
    #[error("initrd {0} does not exist; build it with `make initrd` or drop --initrd")]
    InitrdMissing(PathBuf),
    /// Initrd unreadable.
    #[error("cannot read initrd {path}")]
    InitrdUnreadable {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Initrd too large for the guest.
    #[error("initrd {path} ({size} bytes) does not fit between the kernel and the end of low memory; raise --memory")]
    InitrdTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Writing something into guest memory failed.
    #[error("cannot write {what} into guest memory")]
    GuestWrite {
        /// What was written.
        what: &'static str,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Command line problem.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// Writing the command line failed.
    #[error("cannot write the kernel command line into guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// Zero page problem.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// MP table problem.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// GDT/page tables problem.
    #[error(transparent)]
    Tables(#[from] RegsError),
}

/// The kernel formats we can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux`.
    Elf,
    /// A bzImage.
    BzImage,
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BootError::KernelMissing(path.to_owned())
        } else {
            BootError::KernelUnreadable {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Identify a kernel image by its magic numbers.
pub fn detect_format(path: &Path) -> Result<KernelFormat, BootError> {
    let mut file = open(path)?;
    let unreadable = |source| BootError::KernelUnreadable {
        path: path.to_owned(),
        source,
    };
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    file.seek(SeekFrom::Start(BZIMAGE_HDRS_OFFSET))
        .map_err(unreadable)?;
    if file.read_exact(&mut magic).is_ok() && &magic == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::KernelFormat(path.to_owned()))
}

/// A loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage setup header, if any.
    pub setup_header: Option<setup_header>,
}

/// The guest-physical ranges (start, length; whole pages inside them) of
/// an ELF kernel's text that stays as loaded: sections that are allocated,
/// executable and not writable, in a loaded segment that is executable and
/// not writable. Not the rest of such a segment (x86 frees the gap between
/// its text and read-only data at boot, to be used as any memory), not
/// the init text (in a writable segment, freed at boot). A guest never
/// queues I/O buffers there. Empty for a bzImage or an ELF that cannot be
/// read.
pub fn read_only_text(path: &Path) -> Vec<(u64, u64)> {
    const PT_LOAD: u32 = 1;
    const PF_X: u32 = 1;
    const PF_W: u32 = 2;
    const SHF_WRITE: u64 = 1;
    const SHF_ALLOC: u64 = 2;
    const SHF_EXECINSTR: u64 = 4;
    const PAGE: u64 = 4096;
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let mut ehdr = [0u8; 64];
    // ELF64, little endian.
    if file.read_exact(&mut ehdr).is_err()
        || &ehdr[..4] != b"\x7fELF"
        || ehdr[4] != 2
        || ehdr[5] != 1
    {
        return Vec::new();
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let mut table = |off: u64, entsize: u16, num: u16, min: usize| -> Option<Vec<u8>> {
        let (entsize, num) = (usize::from(entsize), usize::from(num).min(256));
        if entsize < min {
            return None;
        }
        let mut t = vec![0u8; entsize * num];
        file.seek(SeekFrom::Start(off)).ok()?;
        file.read_exact(&mut t).ok()?;
        Some(t)
    };
    let (phentsize, shentsize) = (u16_at(&ehdr, 54), u16_at(&ehdr, 58));
    let Some(phdrs) = table(u64_at(&ehdr, 32), phentsize, u16_at(&ehdr, 56), 56) else {
        return Vec::new();
    };
    let Some(shdrs) = table(u64_at(&ehdr, 40), shentsize, u16_at(&ehdr, 60), 64) else {
        return Vec::new();
    };
    // Loaded, executable, read-only segments: (vaddr, paddr, memsz).
    let text_segments: Vec<(u64, u64, u64)> = phdrs
        .chunks_exact(usize::from(phentsize))
        .filter(|ph| u32_at(ph, 0) == PT_LOAD && u32_at(ph, 4) & (PF_X | PF_W) == PF_X)
        .map(|ph| (u64_at(ph, 16), u64_at(ph, 24), u64_at(ph, 40)))
        .collect();
    let mut out = Vec::new();
    for sh in shdrs.chunks_exact(usize::from(shentsize)) {
        let (flags, addr, size) = (u64_at(sh, 8), u64_at(sh, 16), u64_at(sh, 32));
        if flags & (SHF_ALLOC | SHF_EXECINSTR | SHF_WRITE) != SHF_ALLOC | SHF_EXECINSTR {
            continue;
        }
        let Some(&(vaddr, paddr, _)) = text_segments.iter().find(|&&(v, _, m)| {
            addr >= v && addr.checked_add(size).is_some_and(|end| end <= v + m)
        }) else {
            continue;
        };
        let phys = paddr + (addr - vaddr);
        let start = phys.div_ceil(PAGE) * PAGE;
        let end = (phys + size) / PAGE * PAGE;
        if end > start {
            out.push((start, end - start));
        }
    }
    out.sort_unstable();
    out
}

/// Load a kernel image into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let format = detect_format(path)?;
    let mut file = open(path)?;
    let load_err = |e: linux_loader::loader::Error| BootError::KernelLoad {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
    }
}

/// Where an initrd of `size` bytes goes: the top of low RAM, page aligned.
pub fn initrd_address(mem_size: u64, size: u64, kernel_end: u64) -> Option<u64> {
    let top = low_ram_end(mem_size);
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Load the initrd; returns its address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
) -> Result<(u64, u32), BootError> {
    let data = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BootError::InitrdMissing(path.to_owned())
        } else {
            BootError::InitrdUnreadable {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let size = data.len() as u64;
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    };
    let size32 = u32::try_from(size).map_err(|_| too_large())?;
    let addr = initrd_address(mem_size, size, kernel_end).ok_or_else(too_large)?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|source| BootError::GuestWrite {
            what: "the initrd",
            source,
        })?;
    Ok((addr, size32))
}

/// Load a Linux kernel and everything it needs; returns the boot entry and
/// the final command line.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    vcpus: u8,
    boot: &KernelBoot,
    devices: &[MmioDeclaration],
) -> Result<(BootEntry, String), BootError> {
    let cmdline = cmdline::build_cmdline(boot.cmdline_extra.as_deref(), devices)?;
    let kernel = load_kernel(mem, &boot.kernel)?;
    let initrd = match &boot.initrd {
        Some(path) => Some(load_initrd(mem, path, mem_size, kernel.end)?),
        None => None,
    };
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BootError::CmdlineWrite)?;
    let cmdline_text = cmdline::to_string(&cmdline);
    let params = boot_params::build_boot_params(&ZeroPageConfig {
        setup_header: kernel.setup_header,
        cmdline_addr: CMDLINE_START,
        cmdline_size: cmdline_text.len() as u32 + 1,
        initrd,
        mem_size,
    })?;
    boot_params::write_boot_params(mem, &params)?;
    setup_mptable(mem, vcpus)?;
    write_long_mode_tables(mem)?;
    let entry = BootEntry {
        addr: kernel.entry,
        mode: EntryMode::LongMode,
    };
    Ok((entry, cmdline_text))
}

/// Copy a raw payload into memory (plus page tables for long mode).
pub fn load_payload(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    payload: &RawPayload,
) -> Result<BootEntry, BootError> {
    mem.write_slice(&payload.code, GuestAddress(payload.load_addr))
        .map_err(|source| BootError::GuestWrite {
            what: "the payload",
            source,
        })?;
    if payload.mode == EntryMode::LongMode {
        write_long_mode_tables(mem)?;
    }
    setup_mptable(mem, vcpus)?;
    Ok(BootEntry {
        addr: payload.load_addr,
        mode: payload.mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::MMIO_HOLE_START;

    /// A file with these bytes, removed when the returned path is dropped.
    fn temp(name: &str, bytes: &[u8]) -> tempfile::TempPath {
        let mut file = tempfile::Builder::new()
            .prefix(&format!("cocoon-boot-{name}-"))
            .tempfile()
            .unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file.into_temp_path()
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    /// An ELF64 file: program headers (type, flags, vaddr, paddr, memsz)
    /// and section headers (flags, addr, size).
    fn elf_with(phdrs: &[(u32, u32, u64, u64, u64)], shdrs: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        let shoff = 64 + 56 * phdrs.len() as u64;
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[40..48].copy_from_slice(&shoff.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&(shdrs.len() as u16).to_le_bytes());
        for &(kind, flags, vaddr, paddr, memsz) in phdrs {
            let mut ph = vec![0u8; 56];
            ph[0..4].copy_from_slice(&kind.to_le_bytes());
            ph[4..8].copy_from_slice(&flags.to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[24..32].copy_from_slice(&paddr.to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
            b.extend_from_slice(&ph);
        }
        for &(flags, addr, size) in shdrs {
            let mut sh = vec![0u8; 64];
            sh[8..16].copy_from_slice(&flags.to_le_bytes());
            sh[16..24].copy_from_slice(&addr.to_le_bytes());
            sh[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&sh);
        }
        b
    }

    #[test]
    fn read_only_text_is_the_kernels_lasting_text_in_whole_pages() {
        const V: u64 = 0xffff_ffff_8000_0000;
        // The layout of today's guest kernel: text, a gap freed at boot,
        // rodata in the same R E segment; data and init text (freed at
        // boot) in writable segments.
        let path = temp(
            "text",
            &elf_with(
                &[
                    (1, 5, V + 0x100_0000, 0x100_0000, 0x8a_1f00),
                    (1, 6, V + 0x1a0_0000, 0x1a0_0000, 0xcd000),
                    (1, 7, V + 0x1af_0000, 0x1af_0000, 0x126000),
                ],
                &[
                    (0, 0, 0),
                    // .text (AX): its last partial page left out.
                    (6, V + 0x100_0000, 0x60_0110),
                    // .rodata (WA), .data (WA): not executable.
                    (3, V + 0x180_0000, 0x9_f8e8),
                    (3, V + 0x1a0_0000, 0xb_f300),
                    // .init.text (AX) in the writable segment: freed at boot.
                    (6, V + 0x1af_0000, 0x2_972f),
                    // Executable but not allocated (not loaded).
                    (4, V + 0x100_0000, 0x1000),
                ],
            ),
        );
        assert_eq!(read_only_text(&path), vec![(0x100_0000, 0x60_0000)]);
        assert!(read_only_text(&temp("junk", b"not an elf at all, no")).is_empty());
        assert!(read_only_text(Path::new("/nonexistent/vmlinux")).is_empty());
    }

    #[test]
    fn missing_kernel() {
        let err = load_kernel(&mem(), Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(err, BootError::KernelMissing(_)));
        assert!(err.to_string().contains("guest-kernel/build.sh"));
    }

    #[test]
    fn non_elf_kernel() {
        let path = temp("notelf", b"this is not a kernel at all, just some text ................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................");
        let err = load_kernel(&mem(), &path).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat(_)), "{err:?}");
        let empty = temp("empty", b"");
        assert!(matches!(
            detect_format(&empty),
            Err(BootError::KernelFormat(_))
        ));
    }

    #[test]
    fn unreadable_kernel_is_a_directory() {
        let err = load_kernel(&mem(), &std::env::temp_dir()).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::KernelUnreadable { .. } | BootError::KernelFormat(_)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn broken_elf_is_a_load_error() {
        let mut bytes = b"\x7fELF".to_vec();
        bytes.extend_from_slice(&[0u8; 60]);
        let path = temp("badelf", &bytes);
        assert_eq!(detect_format(&path).unwrap(), KernelFormat::Elf);
        let err = load_kernel(&mem(), &path).unwrap_err();
        assert!(matches!(err, BootError::KernelLoad { .. }), "{err:?}");
    }

    #[test]
    fn bzimage_magic_detected() {
        let mut bytes = vec![0u8; 0x300];
        bytes[0x202..0x206].copy_from_slice(b"HdrS");
        let path = temp("bz", &bytes);
        assert_eq!(detect_format(&path).unwrap(), KernelFormat::BzImage);
    }

    #[test]
    fn initrd_placement() {
        let mib = 1u64 << 20;
        assert_eq!(
            initrd_address(128 * mib, 0x1800, 17 * mib),
            Some(128 * mib - 0x2000)
        );
        assert_eq!(
            initrd_address(8 * MMIO_HOLE_START, 0x1000, 17 * mib),
            Some(MMIO_HOLE_START - 0x1000)
        );
        assert_eq!(initrd_address(32 * mib, 20 * mib, 17 * mib), None);
        assert_eq!(initrd_address(mib, 2 * mib, 0), None);
    }

    #[test]
    fn initrd_errors() {
        let m = mem();
        let err =
            load_initrd(&m, Path::new("/nonexistent/initrd"), 32 << 20, 16 << 20).unwrap_err();
        assert!(matches!(err, BootError::InitrdMissing(_)));
        let big = temp("bigrd", &vec![0u8; 20 << 20]);
        let err = load_initrd(&m, &big, 32 << 20, 16 << 20).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }));
        let ok = temp("rd", b"070701");
        let (addr, size) = load_initrd(&m, &ok, 32 << 20, 16 << 20).unwrap();
        assert_eq!((addr, size), ((32 << 20) - 0x1000, 6));
    }

    #[test]
    fn payload_is_copied() {
        let m = mem();
        let p = RawPayload {
            code: vec![0xf4],
            load_addr: 0x10000,
            mode: EntryMode::LongMode,
        };
        let entry = load_payload(&m, 1, &p).unwrap();
        assert_eq!(entry.addr, 0x10000);
        let b: u8 = m.read_obj(GuestAddress(0x10000)).unwrap();
        assert_eq!(b, 0xf4);
    }
}
