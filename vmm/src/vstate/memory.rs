//! Guest RAM backed by a memfd, mapped `MAP_SHARED`, so that vhost-user
//! backends (virtiofsd) can map the same pages from the file descriptor.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::arch::x86_64::layout::ram_regions;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `memfd_create` failed.
    #[error("memfd_create failed (is /proc/sys/vm/memfd_noexec or a seccomp filter blocking it?)")]
    Memfd(#[source] std::io::Error),
    /// `ftruncate` on the memfd failed.
    #[error("cannot size the guest memory file to {size} bytes; lower --memory")]
    Truncate {
        /// Requested size.
        size: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error(
        "cannot map {size} bytes of guest memory; lower --memory or raise the address-space limit"
    )]
    Map {
        /// Requested size.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// A range of guest RAM could not be mapped from the memory image.
#[derive(Debug, thiserror::Error)]
#[error("cannot map guest RAM at memfd offset {offset:#x} ({len:#x} bytes): {detail}")]
pub struct SharedMapError {
    /// Where, as a memfd (and image) offset.
    pub offset: u64,
    /// How much.
    pub len: u64,
    /// What failed.
    pub detail: String,
}

/// Guest memory and the memfd behind it.
#[derive(Debug, Clone)]
pub struct GuestRam {
    /// The mapping, one region per RAM range.
    pub mem: GuestMemoryMmap,
    /// The memfd; region `i` starts at file offset = sum of earlier sizes.
    pub memfd: Arc<File>,
    /// Total bytes.
    pub size: u64,
}

/// Create a memfd of `size` bytes and map it as guest RAM around the MMIO hole.
pub fn create_guest_ram(size: u64) -> Result<GuestRam, MemoryError> {
    let memfd = new_memfd(size)?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (start, len) in ram_regions(size) {
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::from_arc(memfd.clone(), offset)),
        ));
        offset += len;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(&ranges)
        .map_err(|source| MemoryError::Map { size, source })?;
    Ok(GuestRam { mem, memfd, size })
}

/// A memfd of `size` bytes (a hole until written).
fn new_memfd(size: u64) -> Result<Arc<File>, MemoryError> {
    let name: &CStr = c"cocoon-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string and the flags are valid;
    // the return value is checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    Ok(Arc::new(file))
}

/// Like [`create_guest_ram`], but the ranges `shared` (memfd offsets and
/// lengths, page aligned, ascending) are private mappings of `image` at
/// the same offsets instead of the memfd: their pages are the image's page
/// cache, shared by every VM that maps it, until the guest writes one
/// (then that page is its own copy). The memfd still spans all of guest
/// RAM (for vhost-user backends); its pages in those ranges stay holes.
pub fn create_guest_ram_sharing(
    size: u64,
    image: &Arc<File>,
    shared: &[(u64, u64)],
) -> Result<GuestRam, SharedMapError> {
    let page = 4096u64;
    let mut prev_end = 0u64;
    for &(s, l) in shared {
        if s % page != 0 || l % page != 0 || l == 0 || s < prev_end || s.saturating_add(l) > size {
            return Err(SharedMapError {
                offset: s,
                len: l,
                detail: format!("not whole pages in ascending order inside {size:#x} bytes of RAM"),
            });
        }
        prev_end = s + l;
    }
    let memfd = new_memfd(size).map_err(|e| SharedMapError {
        offset: 0,
        len: size,
        detail: e.to_string(),
    })?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_regions(size) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let inside = shared.iter().find(|&&(s, l)| at >= s && at < s + l);
            let (seg_end, file, flags) = match inside {
                Some(&(s, l)) => ((s + l).min(end), image, libc::MAP_PRIVATE),
                None => {
                    let next = shared
                        .iter()
                        .map(|&(s, _)| s)
                        .filter(|&s| s > at)
                        .min()
                        .unwrap_or(end);
                    (next.min(end), &memfd, libc::MAP_SHARED)
                }
            };
            let fail = |detail: String| SharedMapError {
                offset: at,
                len: seg_end - at,
                detail,
            };
            let mapping = MmapRegionBuilder::new((seg_end - at) as usize)
                .with_file_offset(FileOffset::from_arc(file.clone(), at))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(start + (at - offset)))
                .ok_or_else(|| fail("the region overflows".into()))?;
            regions.push(region);
            at = seg_end;
        }
        offset = end;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| SharedMapError {
        offset: 0,
        len: size,
        detail: e.to_string(),
    })?;
    Ok(GuestRam { mem, memfd, size })
}

impl GuestRam {
    /// Whether `region` maps the memory image privately (shared pages)
    /// rather than the memfd.
    pub fn is_private(region: &GuestRegionMmap) -> bool {
        region.flags() & libc::MAP_PRIVATE != 0
    }

    /// Guest-physical ranges as memfd offsets (those inside one RAM
    /// region; the rest is dropped).
    pub fn offsets_of(&self, ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for &(gpa, len) in ranges {
            let region = self.mem.iter().find(|r| {
                gpa >= r.start_addr().0 && gpa.saturating_add(len) <= r.start_addr().0 + r.len()
            });
            if let Some(r) = region {
                let base = r.file_offset().map(|f| f.start()).unwrap_or(0);
                out.push((base + (gpa - r.start_addr().0), len));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn memfd_backs_guest_memory() {
        let ram = create_guest_ram(4 << 20).unwrap();
        assert_eq!(ram.mem.num_regions(), 1);
        ram.mem
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.memfd.metadata().unwrap().len(), 4 << 20);
    }
}
