//! Guest RAM backed by a memfd, mapped `MAP_SHARED`, so that vhost-user
//! backends (virtiofsd) can map the same pages from the file descriptor.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

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
    let memfd = Arc::new(file);

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
