//! A template's working set: the data pages of its memory image that a
//! restored VM loaded between its restore and its first container's
//! create, recorded once and loaded up front by later restores
//! (`--working-set`), so the guest does not stop on a fault for each.
//!
//! The file crosses pods (one pod's VMM writes it, the shim keeps it in
//! the template, every later pod's VMM reads it), so it is parsed
//! strictly: a magic and version, a count no larger than [`MAX_PAGES`],
//! page offsets strictly ascending and page aligned, and an XXH3-64 of
//! everything before it. What it names can only make a restore load a
//! page of the template early: every page still comes from the template's
//! image, checked against its digest, and a page that is not a data page
//! of the image makes the restore ignore the whole set.
//!
//! Layout (little endian): `b"COCOONWS"`, u32 version, u32 count, count ×
//! u64 offsets, u64 XXH3-64 (seed 0) of the bytes before it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use super::memory_image::PAGE;

const MAGIC: &[u8; 8] = b"COCOONWS";
const VERSION: u32 = 1;
const HEADER: usize = 16;
/// At most this many pages (4 GiB of guest RAM): bounds what a reader
/// allocates for a file it did not write.
pub const MAX_PAGES: usize = 1 << 20;
/// The largest valid file.
pub const MAX_BYTES: usize = HEADER + MAX_PAGES * 8 + 8;

/// Errors of a working-set file.
#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    /// Reading or writing the file failed.
    #[error("cannot {what} the working set {path}")]
    Io {
        /// "read" or "write".
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a working set.
    #[error("the working set {path} is malformed: {why}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The file's bytes for `pages` (sorted and deduplicated here).
pub fn encode(pages: &[u64]) -> Vec<u8> {
    let mut pages = pages.to_vec();
    pages.sort_unstable();
    pages.dedup();
    pages.truncate(MAX_PAGES);
    let mut out = Vec::with_capacity(HEADER + pages.len() * 8 + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for p in &pages {
        out.extend_from_slice(&p.to_le_bytes());
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The page offsets in `bytes` (the file at `path`, for messages).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<u64>, WorkingSetError> {
    let bad = |why: String| WorkingSetError::Malformed {
        path: path.display().to_string(),
        why,
    };
    if bytes.len() < HEADER + 8 || &bytes[..8] != MAGIC {
        return Err(bad("no working-set header".into()));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != VERSION {
        return Err(bad(format!("version {version}, expected {VERSION}")));
    }
    let count = word(12) as usize;
    if count > MAX_PAGES {
        return Err(bad(format!("{count} pages, more than {MAX_PAGES}")));
    }
    let body = HEADER + count * 8;
    if bytes.len() != body + 8 {
        return Err(bad(format!(
            "{} bytes, {} expected for {count} pages",
            bytes.len(),
            body + 8
        )));
    }
    let sum = u64::from_le_bytes(bytes[body..].try_into().expect("8 bytes"));
    if sum != xxhash_rust::xxh3::xxh3_64(&bytes[..body]) {
        return Err(bad("its checksum does not match".into()));
    }
    let mut pages = Vec::with_capacity(count);
    for c in bytes[HEADER..body].chunks_exact(8) {
        let p = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        if p % PAGE as u64 != 0 {
            return Err(bad(format!("offset {p:#x} is not page aligned")));
        }
        if pages.last().is_some_and(|&last| p <= last) {
            return Err(bad(format!("offset {p:#x} is out of order")));
        }
        pages.push(p);
    }
    Ok(pages)
}

/// Read and check the working set at `path` (at most [`MAX_BYTES`] read).
pub fn read(path: &Path) -> Result<Vec<u64>, WorkingSetError> {
    let io = |source| WorkingSetError::Io {
        what: "read",
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    decode(path, &bytes)
}

/// Write the working set `pages` to `file` (named `path` in messages).
pub fn write(file: &mut File, path: &Path, pages: &[u64]) -> Result<(), WorkingSetError> {
    file.write_all(&encode(pages))
        .map_err(|source| WorkingSetError::Io {
            what: "write",
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("ws")
    }

    #[test]
    fn a_working_set_round_trips_sorted_and_deduplicated() {
        let bytes = encode(&[0x3000, 0x1000, 0x3000, 0]);
        assert_eq!(decode(p(), &bytes).unwrap(), vec![0, 0x1000, 0x3000]);
        assert_eq!(decode(p(), &encode(&[])).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn every_malformed_file_is_refused_with_its_reason() {
        let good = encode(&[0x1000, 0x2000]);
        let err = |b: &[u8]| decode(p(), b).unwrap_err().to_string();
        assert!(err(&good[..good.len() - 1]).contains("bytes"));
        assert!(err(b"not a working set at all").contains("header"));
        let mut v = good.clone();
        v[8] = 9;
        assert!(err(&v).contains("version 9"));
        // A count that would make the reader allocate without bound.
        let mut v = good.clone();
        v[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&v).contains("more than"));
        // One flipped bit of an offset: the checksum.
        let mut v = good.clone();
        v[HEADER] ^= 1;
        assert!(err(&v).contains("checksum"));
        // Checksummed but unaligned, or out of order: refused all the same.
        let raw = |pages: &[u64]| {
            let mut out = Vec::new();
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
            for q in pages {
                out.extend_from_slice(&q.to_le_bytes());
            }
            let sum = xxhash_rust::xxh3::xxh3_64(&out);
            out.extend_from_slice(&sum.to_le_bytes());
            out
        };
        assert!(err(&raw(&[0x1001])).contains("not page aligned"));
        assert!(err(&raw(&[0x2000, 0x1000])).contains("out of order"));
        assert!(err(&raw(&[0x1000, 0x1000])).contains("out of order"));
        assert!(decode(p(), &raw(&[0x1000, 0x2000])).is_ok());
    }

    #[test]
    fn read_bounds_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws");
        std::fs::write(&path, vec![0u8; MAX_BYTES + 100]).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("header"));
        std::fs::write(&path, encode(&[0x5000])).unwrap();
        assert_eq!(read(&path).unwrap(), vec![0x5000]);
    }
}
