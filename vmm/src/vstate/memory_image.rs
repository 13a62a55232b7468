//! Guest memory saved as a sparse file: only the pages that hold data.
//!
//! Guest RAM is a memfd, so pages the guest never touched are holes in it
//! (`SEEK_DATA`/`SEEK_HOLE` skip them without reading). Of the rest, pages
//! that are all zeroes are left out too: a guest kernel booted with
//! `init_on_free=1` zeroes every page it frees, so its free memory costs
//! the image (and every VM restored from it) nothing. A hole reads back as
//! zeroes, which is exactly what the guest left there.
//!
//! Restoring copies the data pages into a fresh memfd (vhost-user backends
//! such as virtiofsd need guest memory they can map shared, so a private
//! copy-on-write mapping of the image cannot be guest RAM).
//!
//! Saving computes a digest of the data pages (XXH3-64 over each page's
//! offset and bytes, all-zero pages left out, in offset order); the state
//! file (itself under SHA-256) keeps it, and loading recomputes it over what
//! it loads and refuses an image that does not match. XXH3 and not
//! SHA-256: the digest guards against damage (a cut or changed file), not
//! against an attacker who can already write a root-only directory, and it
//! is paid on every restore.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};
use xxhash_rust::xxh3::Xxh3;

use super::memory::{create_guest_ram, GuestRam, MemoryError};

/// The unit of the zero-page check.
pub const PAGE: usize = 4096;
/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

/// Errors while saving or loading a memory image.
#[derive(Debug, thiserror::Error)]
pub enum MemoryImageError {
    /// The image file cannot be created or written.
    #[error("cannot write the memory image {path}")]
    Write {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image file cannot be opened or read.
    #[error("cannot read the memory image {path}")]
    Read {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading guest memory failed.
    #[error("cannot read guest memory at offset {offset:#x}")]
    Guest {
        /// Offset in guest RAM.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image does not match the VM's memory size.
    #[error("the memory image {path} holds {found} bytes but the VM has {expected}")]
    SizeMismatch {
        /// The image.
        path: PathBuf,
        /// The image's size.
        found: u64,
        /// The VM's memory size.
        expected: u64,
    },
    /// The image's data pages are not the ones the snapshot saved.
    #[error("the memory image {path} is corrupt: its digest is {found:#018x}, the snapshot saved {expected:#018x}")]
    Digest {
        /// The image.
        path: PathBuf,
        /// The digest recorded when it was saved.
        expected: u64,
        /// The digest of what was read.
        found: u64,
    },
    /// Creating the new guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// What a save wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Bytes of guest RAM the memfd had allocated.
    pub allocated: u64,
    /// Bytes written to the image (allocated minus zero pages).
    pub written: u64,
    /// The digest of the data pages (see the module's text).
    pub digest: u64,
}

/// The running digest of an image's data pages.
struct PageDigest(Xxh3);

impl PageDigest {
    fn new() -> Self {
        PageDigest(Xxh3::new())
    }

    fn page(&mut self, offset: u64, page: &[u8]) {
        self.0.update(&offset.to_le_bytes());
        self.0.update(page);
    }

    fn finish(&self) -> u64 {
        self.0.digest()
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// The next `(start, end)` data extent of `file` at or after `from`, or
/// `None` past the last one.
fn next_extent(file: &File, from: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence| {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    if from >= size {
        return Ok(None);
    }
    let start = match seek(from, libc::SEEK_DATA) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) => return Err(e),
    };
    if start >= size {
        return Ok(None);
    }
    let end = seek(start, libc::SEEK_HOLE)?.min(size);
    Ok(Some((start, end)))
}

/// Write the data pages of `ram` to a new file at `path` (which must not
/// exist), as a sparse file of the same size.
pub fn save(ram: &GuestRam, path: &Path) -> Result<ImageStats, MemoryImageError> {
    let werr = |source| MemoryImageError::Write {
        path: path.to_owned(),
        source,
    };
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(werr)?;
    out.set_len(ram.size).map_err(werr)?;
    let mut stats = ImageStats::default();
    let mut digest = PageDigest::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0;
    while let Some((start, end)) =
        next_extent(&ram.memfd, pos, ram.size).map_err(|source| MemoryImageError::Guest {
            offset: pos,
            source,
        })?
    {
        let mut offset = start;
        while offset < end {
            let len = usize::try_from(end - offset).unwrap_or(CHUNK).min(CHUNK);
            let chunk = &mut buf[..len];
            ram.memfd
                .read_exact_at(chunk, offset)
                .map_err(|source| MemoryImageError::Guest { offset, source })?;
            stats.allocated += len as u64;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if !is_zero(page) {
                    let at = offset + (i * PAGE) as u64;
                    out.write_all_at(page, at).map_err(werr)?;
                    digest.page(at, page);
                    stats.written += page.len() as u64;
                }
            }
            offset += len as u64;
        }
        pos = end;
    }
    out.sync_all().map_err(werr)?;
    stats.digest = digest.finish();
    Ok(stats)
}

/// Which pages of an image hold data, after its digest was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    /// One bit per page of guest RAM: set for a data (non-zero) page.
    data: Vec<u64>,
    /// The number of data pages.
    pub data_pages: u64,
}

impl ImageIndex {
    fn new(size: u64) -> Self {
        let pages = size.div_ceil(PAGE as u64);
        ImageIndex {
            data: vec![0; pages.div_ceil(64) as usize],
            data_pages: 0,
        }
    }

    fn set(&mut self, page: u64) {
        self.data[(page / 64) as usize] |= 1 << (page % 64);
        self.data_pages += 1;
    }

    /// Whether the page at memfd offset `offset` holds data.
    pub fn is_data(&self, offset: u64) -> bool {
        let page = offset / PAGE as u64;
        self.data
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// The runs of data pages as `(offset, len)` in bytes, runs less than
    /// `gap` pages apart merged into one.
    pub fn runs(&self, gap: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let pages = self.data.len() as u64 * 64;
        let mut page = 0;
        while page < pages {
            if self.data[(page / 64) as usize] == 0 {
                page = (page / 64 + 1) * 64;
                continue;
            }
            if self.is_data(page * PAGE as u64) {
                let (start, end) = (page * PAGE as u64, (page + 1) * PAGE as u64);
                match runs.last_mut() {
                    Some((s, len)) if start - (*s + *len) < gap * PAGE as u64 => *len = end - *s,
                    _ => runs.push((start, end - start)),
                }
            }
            page += 1;
        }
        runs
    }
}

/// Open the image at `path` for a VM of `size` bytes, read it whole and
/// check its digest against `expected` (see [`load`]); nothing is copied
/// into guest memory. Returns the open image and which pages hold data.
pub fn scan(path: &Path, size: u64, expected: u64) -> Result<(File, ImageIndex), MemoryImageError> {
    let rerr = |source| MemoryImageError::Read {
        path: path.to_owned(),
        source,
    };
    let image = File::open(path).map_err(rerr)?;
    let found = image.metadata().map_err(rerr)?.len();
    if found != size {
        return Err(MemoryImageError::SizeMismatch {
            path: path.to_owned(),
            found,
            expected: size,
        });
    }
    let mut index = ImageIndex::new(size);
    let mut digest = PageDigest::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0;
    while let Some((start, end)) = next_extent(&image, pos, size).map_err(rerr)? {
        let mut offset = start;
        while offset < end {
            let len = usize::try_from(end - offset).unwrap_or(CHUNK).min(CHUNK);
            let chunk = &mut buf[..len];
            image.read_exact_at(chunk, offset).map_err(rerr)?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if !is_zero(page) {
                    let at = offset + (i * PAGE) as u64;
                    digest.page(at, page);
                    index.set(at / PAGE as u64);
                }
            }
            offset += len as u64;
        }
        pos = end;
    }
    let found = digest.finish();
    if found != expected {
        return Err(MemoryImageError::Digest {
            path: path.to_owned(),
            expected,
            found,
        });
    }
    Ok((image, index))
}

/// New guest RAM of `size` bytes holding the image at `path`, whose data
/// pages must have the digest `expected` (the one [`save`] returned).
/// Zero pages the image's file system keeps as data are not copied: guest
/// RAM keeps holes there.
pub fn load(path: &Path, size: u64, expected: u64) -> Result<GuestRam, MemoryImageError> {
    let rerr = |source| MemoryImageError::Read {
        path: path.to_owned(),
        source,
    };
    let image = File::open(path).map_err(rerr)?;
    let found = image.metadata().map_err(rerr)?.len();
    if found != size {
        return Err(MemoryImageError::SizeMismatch {
            path: path.to_owned(),
            found,
            expected: size,
        });
    }
    let ram = create_guest_ram(size)?;
    let mut digest = PageDigest::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0;
    while let Some((start, end)) = next_extent(&image, pos, size).map_err(rerr)? {
        let mut offset = start;
        while offset < end {
            let len = usize::try_from(end - offset).unwrap_or(CHUNK).min(CHUNK);
            let chunk = &mut buf[..len];
            image.read_exact_at(chunk, offset).map_err(rerr)?;
            // Runs of data pages, each written with one copy.
            let mut run: Option<usize> = None;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                let zero = is_zero(page);
                if !zero {
                    digest.page(offset + (i * PAGE) as u64, page);
                }
                match (run, zero) {
                    (None, false) => run = Some(i * PAGE),
                    (Some(from), true) => {
                        write_through_mapping(&ram, offset + from as u64, &chunk[from..i * PAGE])?;
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(from) = run {
                write_through_mapping(&ram, offset + from as u64, &chunk[from..])?;
            }
            offset += len as u64;
        }
        pos = end;
    }
    let found = digest.finish();
    if found != expected {
        return Err(MemoryImageError::Digest {
            path: path.to_owned(),
            expected,
            found,
        });
    }
    Ok(ram)
}

/// Write `bytes` at memfd offset `offset` through the VMM's own mapping
/// of guest RAM (not `pwrite` on the memfd): the pages are then mapped in
/// the VMM, so its RSS and PSS show the memory a restored VM holds.
fn write_through_mapping(
    ram: &GuestRam,
    offset: u64,
    bytes: &[u8],
) -> Result<(), MemoryImageError> {
    let mut done = 0usize;
    while done < bytes.len() {
        let at = offset + done as u64;
        let region = ram
            .mem
            .iter()
            .find(|r| {
                r.file_offset().is_some_and(|f| {
                    let start = f.start();
                    at >= start && at < start + r.len()
                })
            })
            .ok_or_else(|| MemoryImageError::Guest {
                offset: at,
                source: io::ErrorKind::InvalidInput.into(),
            })?;
        let start = region.file_offset().map(|f| f.start()).unwrap_or(0);
        let within = at - start;
        let n = usize::try_from(region.len() - within)
            .unwrap_or(usize::MAX)
            .min(bytes.len() - done);
        let addr = region.start_addr().unchecked_add(within);
        ram.mem
            .write_slice(&bytes[done..done + n], addr)
            .map_err(|e| MemoryImageError::Guest {
                offset: at,
                source: io::Error::other(e.to_string()),
            })?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn only_data_pages_are_written_and_they_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let ram = create_guest_ram(8 << 20).unwrap();
        ram.mem
            .write_obj(0x1234_5678u32, GuestAddress(0x1000))
            .unwrap();
        ram.mem
            .write_obj(0xabcdu16, GuestAddress(0x70_0ffe))
            .unwrap();
        // Touched but zero: allocated, not written.
        ram.mem.write_obj(0u64, GuestAddress(0x20_0000)).unwrap();
        let path = dir.path().join("memory");
        let stats = save(&ram, &path).unwrap();
        assert_eq!(stats.written, 2 * PAGE as u64, "{stats:?}");
        assert!(stats.allocated >= 3 * PAGE as u64, "{stats:?}");
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
        assert!(
            blocks * 512 <= 64 * 1024,
            "image is not sparse: {blocks} blocks"
        );

        let back = load(&path, 8 << 20, stats.digest).unwrap();
        assert_eq!(
            back.mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1234_5678
        );
        assert_eq!(
            back.mem.read_obj::<u16>(GuestAddress(0x70_0ffe)).unwrap(),
            0xabcd
        );
        assert_eq!(
            back.mem.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(),
            0
        );
        // The restored memfd holds (about) only the data pages too: the
        // image's file system may round its extents up.
        let mut extents = 0;
        let mut pos = 0;
        while let Some((s, e)) = next_extent(&back.memfd, pos, back.size).unwrap() {
            extents += (e - s) / PAGE as u64;
            pos = e;
        }
        assert!((2..=16).contains(&extents), "{extents} pages allocated");
    }

    #[test]
    fn an_image_of_another_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ram = create_guest_ram(4 << 20).unwrap();
        let path = dir.path().join("memory");
        save(&ram, &path).unwrap();
        let err = load(&path, 8 << 20, 0).unwrap_err();
        assert!(
            matches!(err, MemoryImageError::SizeMismatch { found, expected, .. } if found == 4 << 20 && expected == 8 << 20),
            "{err}"
        );
        assert!(
            matches!(save(&ram, &path), Err(MemoryImageError::Write { .. })),
            "save over an existing image must fail"
        );
    }

    #[test]
    fn scan_checks_the_digest_and_indexes_the_data_pages() {
        let dir = tempfile::tempdir().unwrap();
        let ram = create_guest_ram(4 << 20).unwrap();
        for page in [3u64, 4, 9, 700] {
            ram.mem
                .write_obj(0x77u8, GuestAddress(page * PAGE as u64 + 5))
                .unwrap();
        }
        let path = dir.path().join("memory");
        let stats = save(&ram, &path).unwrap();
        let (_, index) = scan(&path, 4 << 20, stats.digest).unwrap();
        assert_eq!(index.data_pages, 4);
        assert!(index.is_data(3 * PAGE as u64 + 100));
        assert!(!index.is_data(5 * PAGE as u64));
        let p = PAGE as u64;
        assert_eq!(
            index.runs(1),
            vec![(3 * p, 2 * p), (9 * p, p), (700 * p, p)]
        );
        assert_eq!(index.runs(5), vec![(3 * p, 7 * p), (700 * p, p)]);
        assert!(matches!(
            scan(&path, 4 << 20, stats.digest ^ 1),
            Err(MemoryImageError::Digest { .. })
        ));
        assert!(matches!(
            scan(&path, 8 << 20, stats.digest),
            Err(MemoryImageError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn a_changed_or_moved_page_is_refused_and_zero_data_blocks_are_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let ram = create_guest_ram(4 << 20).unwrap();
        ram.mem.write_obj(0x5au8, GuestAddress(0x3000)).unwrap();
        ram.mem.write_obj(0xa5u8, GuestAddress(0x9000)).unwrap();
        let path = dir.path().join("memory");
        let stats = save(&ram, &path).unwrap();
        assert!(load(&path, 4 << 20, stats.digest).is_ok());
        assert!(matches!(
            load(&path, 4 << 20, stats.digest ^ 1),
            Err(MemoryImageError::Digest { .. })
        ));

        // A zero block the file system keeps as data (an image copied
        // without holes) is the same image.
        let image = OpenOptions::new().write(true).open(&path).unwrap();
        image.write_all_at(&[0u8; PAGE], 0x5000).unwrap();
        let back = load(&path, 4 << 20, stats.digest).unwrap();
        assert_eq!(back.mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(), 0xa5);

        // One flipped bit.
        image.write_all_at(&[0x5b], 0x3000).unwrap();
        let err = load(&path, 4 << 20, stats.digest).unwrap_err();
        assert!(
            matches!(&err, MemoryImageError::Digest { expected, .. } if *expected == stats.digest),
            "{err}"
        );
        assert!(err.to_string().contains("is corrupt"), "{err}");

        // The same bytes at another offset.
        image.write_all_at(&[0x5a], 0x3000).unwrap();
        image.write_all_at(&[0u8; PAGE], 0x9000).unwrap();
        image.write_all_at(&[0xa5], 0xa000).unwrap();
        assert!(matches!(
            load(&path, 4 << 20, stats.digest),
            Err(MemoryImageError::Digest { .. })
        ));
    }
}
