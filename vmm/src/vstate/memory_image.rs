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
//! Saving also writes an [`ImageIndex`]: which pages hold data, each with
//! its XXH3-64 digest seeded with its offset (a page moved within the file
//! is as wrong as a changed one). The state file keeps the index under its
//! own SHA-256. A restore reads nothing of the image up front: each page
//! is checked against its digest as it is copied into guest memory (every
//! data page before the guest runs for an eager restore, each one as the
//! guest first touches it for a lazy one), and a page that does not match
//! is refused, naming the image and the offset. So the guest never sees a
//! byte that was not saved, and a restore pays for the pages it uses, not
//! for the image: checking the whole image before the guest ran read and
//! hashed every page on every restore, 0.25-0.5 s of a restore's set-up in
//! the nested test host, for an image of which a restored guest touches a
//! quarter. XXH3 and not SHA-256: the digests guard against damage (a cut
//! or changed file), not against an attacker who can already write a
//! root-only directory, and they are paid on every restore.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::memory::{create_guest_ram, GuestRam, MemoryError};

/// The unit of the zero-page check, the index and the digests.
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
    /// The index names pages the image cannot hold (a bug or a state file
    /// written for another image).
    #[error("the memory image {path} does not fit its index: {why}")]
    BadIndex {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A data page is not the one the snapshot saved.
    #[error("the memory image {path} is corrupt: the page at offset {offset:#x} has the digest {found:#018x}, the snapshot saved {expected:#018x}")]
    PageDigest {
        /// The image.
        path: PathBuf,
        /// The page's offset.
        offset: u64,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Bytes of guest RAM the memfd had allocated.
    pub allocated: u64,
    /// Bytes written to the image (allocated minus zero pages).
    pub written: u64,
    /// The data pages and their digests (for the state file).
    pub index: ImageIndex,
}

/// The digest of the page at `offset`.
fn page_digest(offset: u64, page: &[u8]) -> u64 {
    xxh3_64_with_seed(page, offset)
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// The data pages of an image, each with its digest (see the module's
/// text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Page numbers (offset / [`PAGE`]) of the data pages, ascending.
    pages: Vec<u64>,
    /// Each data page's digest, in the same order.
    digests: Vec<u64>,
}

impl ImageIndex {
    /// Add the data page at `offset` (above every page added before).
    fn push(&mut self, offset: u64, page: &[u8]) {
        self.pages.push(offset / PAGE as u64);
        self.digests.push(page_digest(offset, page));
    }

    /// The number of data pages.
    pub fn data_pages(&self) -> u64 {
        self.pages.len() as u64
    }

    fn position(&self, offset: u64) -> Option<usize> {
        self.pages.binary_search(&(offset / PAGE as u64)).ok()
    }

    /// The memfd offsets of the data pages, ascending.
    pub fn offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.iter().map(|p| p * PAGE as u64)
    }

    /// Whether the page at memfd offset `offset` holds data.
    pub fn is_data(&self, offset: u64) -> bool {
        self.position(offset).is_some()
    }

    /// Check `page`, read from the image at `offset` (page aligned), against
    /// its digest; a page that is not a data page is refused too.
    pub fn check(&self, path: &Path, offset: u64, page: &[u8]) -> Result<(), MemoryImageError> {
        let found = page_digest(offset, page);
        let expected = match self.position(offset) {
            Some(i) => self.digests[i],
            None => {
                return Err(MemoryImageError::BadIndex {
                    path: path.to_owned(),
                    why: format!("offset {offset:#x} is not a data page"),
                })
            }
        };
        if found == expected {
            Ok(())
        } else {
            Err(MemoryImageError::PageDigest {
                path: path.to_owned(),
                offset,
                expected,
                found,
            })
        }
    }

    /// The runs of data pages as `(offset, len)` in bytes, runs less than
    /// `gap` pages apart merged into one (`gap` 1: adjacent pages only).
    pub fn runs(&self, gap: u64) -> Vec<(u64, u64)> {
        let page = PAGE as u64;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &p in &self.pages {
            let (start, end) = (p * page, (p + 1) * page);
            match runs.last_mut() {
                Some((s, len)) if start - (*s + *len) < gap * page => *len = end - *s,
                _ => runs.push((start, end - start)),
            }
        }
        runs
    }

    /// Whether the index fits an image of `size` bytes: as many digests as
    /// pages, pages ascending and inside the image.
    fn fits(&self, size: u64) -> Result<(), String> {
        if self.pages.len() != self.digests.len() {
            return Err(format!(
                "{} pages but {} digests",
                self.pages.len(),
                self.digests.len()
            ));
        }
        if self.pages.windows(2).any(|w| w[0] >= w[1]) {
            return Err("its pages are not in ascending order".into());
        }
        match self.pages.last() {
            Some(&last) if last >= size / PAGE as u64 => Err(format!(
                "page {last} is beyond the image's {} pages",
                size / PAGE as u64
            )),
            _ => Ok(()),
        }
    }
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
                    stats.index.push(at, page);
                    stats.written += page.len() as u64;
                }
            }
            offset += len as u64;
        }
        pos = end;
    }
    out.sync_all().map_err(werr)?;
    Ok(stats)
}

/// Open the image at `path` for a VM of `size` bytes whose data pages
/// `index` names: the file must be that size and the index fit it.
/// Nothing is read.
pub fn open(path: &Path, size: u64, index: &ImageIndex) -> Result<File, MemoryImageError> {
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
    index.fits(size).map_err(|why| MemoryImageError::BadIndex {
        path: path.to_owned(),
        why,
    })?;
    Ok(image)
}

/// New guest RAM of `size` bytes holding the image at `path`: every data
/// page of `index` read, checked against its digest and copied; the other
/// pages stay holes.
pub fn load(path: &Path, size: u64, index: &ImageIndex) -> Result<GuestRam, MemoryImageError> {
    let image = open(path, size, index)?;
    let ram = create_guest_ram(size)?;
    load_runs(&image, path, &ram, index, &index.runs(1))?;
    Ok(ram)
}

/// Copy the pages of `runs` (memfd offset, length; data pages of `index`)
/// from `image` into `ram` through its mapping, each page checked against
/// its digest: a read per [`CHUNK`], no fault per page.
pub fn load_runs(
    image: &File,
    path: &Path,
    ram: &GuestRam,
    index: &ImageIndex,
    runs: &[(u64, u64)],
) -> Result<(), MemoryImageError> {
    let mut buf = vec![0u8; CHUNK];
    for &(start, len) in runs {
        let mut offset = start;
        while offset < start + len {
            let n = usize::try_from(start + len - offset)
                .unwrap_or(CHUNK)
                .min(CHUNK);
            let chunk = &mut buf[..n];
            image
                .read_exact_at(chunk, offset)
                .map_err(|source| MemoryImageError::Read {
                    path: path.to_owned(),
                    source,
                })?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                index.check(path, offset + (i * PAGE) as u64, page)?;
            }
            write_through_mapping(ram, offset, chunk)?;
            offset += n as u64;
        }
    }
    Ok(())
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

        let back = load(&path, 8 << 20, &stats.index).unwrap();
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
        let err = load(&path, 8 << 20, &ImageIndex::default()).unwrap_err();
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
    fn the_index_names_the_data_pages_and_must_fit_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let ram = create_guest_ram(4 << 20).unwrap();
        for page in [3u64, 4, 9, 700] {
            ram.mem
                .write_obj(0x77u8, GuestAddress(page * PAGE as u64 + 5))
                .unwrap();
        }
        let path = dir.path().join("memory");
        let index = save(&ram, &path).unwrap().index;
        assert_eq!(index.data_pages(), 4);
        assert!(index.is_data(3 * PAGE as u64 + 100));
        assert!(!index.is_data(5 * PAGE as u64));
        let p = PAGE as u64;
        assert_eq!(
            index.runs(1),
            vec![(3 * p, 2 * p), (9 * p, p), (700 * p, p)]
        );
        assert_eq!(index.runs(5), vec![(3 * p, 7 * p), (700 * p, p)]);
        assert!(open(&path, 4 << 20, &index).is_ok());
        // An index of another image: pages beyond this one's end.
        let mut beyond = index.clone();
        beyond.pages.push(1 << 20);
        beyond.digests.push(0);
        let err = open(&path, 4 << 20, &beyond).unwrap_err();
        assert!(
            matches!(&err, MemoryImageError::BadIndex { why, .. } if why.contains("beyond")),
            "{err}"
        );
        let mut unsorted = index.clone();
        unsorted.pages.swap(0, 1);
        assert!(matches!(
            open(&path, 4 << 20, &unsorted),
            Err(MemoryImageError::BadIndex { .. })
        ));
        let mut short = index;
        short.digests.pop();
        assert!(matches!(
            open(&path, 4 << 20, &short),
            Err(MemoryImageError::BadIndex { .. })
        ));
    }

    #[test]
    fn a_changed_or_moved_page_is_refused_and_zero_data_blocks_are_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let ram = create_guest_ram(4 << 20).unwrap();
        ram.mem.write_obj(0x5au8, GuestAddress(0x3000)).unwrap();
        ram.mem.write_obj(0xa5u8, GuestAddress(0x9000)).unwrap();
        let path = dir.path().join("memory");
        let index = save(&ram, &path).unwrap().index;
        assert!(load(&path, 4 << 20, &index).is_ok());

        // A zero block the file system keeps as data (an image copied
        // without holes) is the same image.
        let image = OpenOptions::new().write(true).open(&path).unwrap();
        image.write_all_at(&[0u8; PAGE], 0x5000).unwrap();
        let back = load(&path, 4 << 20, &index).unwrap();
        assert_eq!(back.mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(), 0xa5);

        // One flipped bit.
        image.write_all_at(&[0x5b], 0x3000).unwrap();
        let err = load(&path, 4 << 20, &index).unwrap_err();
        assert!(
            matches!(&err, MemoryImageError::PageDigest { offset: 0x3000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("is corrupt"), "{err}");
        assert!(err.to_string().contains("offset 0x3000"), "{err}");

        // The same bytes at another offset.
        image.write_all_at(&[0x5a], 0x3000).unwrap();
        image.write_all_at(&[0u8; PAGE], 0x9000).unwrap();
        image.write_all_at(&[0xa5], 0xa000).unwrap();
        assert!(matches!(
            load(&path, 4 << 20, &index),
            Err(MemoryImageError::PageDigest { offset: 0x9000, .. })
        ));
    }
}
