//! The pages of a booted guest that hold its initrd's files.
//!
//! The kernel unpacks the initramfs (a `newc` cpio archive) into the
//! guest's root file system (tmpfs): each regular file's data lives in
//! page-cache pages that hold exactly its bytes, 4 KiB at a time (the
//! last one zero-padded). The agent is such a file (`/init`, about 7 MB),
//! and nothing in the guest changes it. Like the kernel's text, those
//! pages can be mapped from a template's memory image by every VM
//! restored from it instead of copied into each (see `lazy_ram`): one
//! page-cache copy for all pods, and nothing for the loader to copy.
//!
//! They are found by content when a snapshot is saved: every data page of
//! the image whose XXH3-128 is that of a block of a file of the initrd.
//! A page found so is the guest's own content whatever it holds (the
//! image is mapped, not the initrd). The guest kernel has no page
//! migration or compaction (guest-kernel/fragments: no COMPACTION, THP or
//! NUMA), so such a page keeps holding its file while the file exists.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

use super::memory::GuestRam;
use super::memory_image::{ImageIndex, PAGE};

/// At most this many ranges of initrd pages are shared (the largest):
/// each one splits guest RAM into more regions, and vhost-user takes at
/// most 32.
pub const MAX_RANGES: usize = 8;

/// Errors finding the initrd's pages.
#[derive(Debug, thiserror::Error)]
pub enum InitrdPagesError {
    /// The initrd file cannot be read.
    #[error("cannot read the initrd {path}")]
    ReadInitrd {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A data page of guest RAM cannot be read.
    #[error("cannot read guest RAM at offset {offset:#x}")]
    ReadRam {
        /// The memfd offset.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The hash a page (4 KiB) is matched by.
pub fn page_hash(page: &[u8]) -> u128 {
    xxh3_128(page)
}

/// The [`page_hash`] of every 4 KiB block of every regular file in the `newc`
/// cpio archive `cpio` (the last block of a file zero-padded; blocks of
/// zeros left out: they are never data pages). What is not such an
/// archive, or its malformed rest, adds nothing.
pub fn file_blocks(cpio: &[u8]) -> HashSet<u128> {
    let mut blocks = HashSet::new();
    let mut pos = 0usize;
    let mut page = [0u8; PAGE];
    while let Some(header) = cpio.get(pos..pos + 110) {
        if &header[..6] != b"070701" && &header[..6] != b"070702" {
            break;
        }
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .ok()
                .and_then(|h| usize::from_str_radix(h, 16).ok())
        };
        let (Some(mode), Some(size), Some(name_size)) = (field(1), field(6), field(11)) else {
            break;
        };
        let Some(name) = cpio.get(pos + 110..(pos + 110).saturating_add(name_size)) else {
            break;
        };
        if name.starts_with(b"TRAILER!!!") {
            break;
        }
        let data = (pos + 110 + name_size).next_multiple_of(4);
        let Some(content) = cpio.get(data..data.saturating_add(size)) else {
            break;
        };
        if mode & 0o170000 == 0o100000 {
            for block in content.chunks(PAGE) {
                page[..block.len()].copy_from_slice(block);
                page[block.len()..].fill(0);
                if page.iter().any(|&b| b != 0) {
                    blocks.insert(page_hash(&page));
                }
            }
        }
        pos = (data + size).next_multiple_of(4);
    }
    blocks
}

/// The data pages of `ram` (those `index` names) that hold a block of a
/// file of the initrd at `initrd`, as ascending memfd ranges (offset,
/// bytes): the [`MAX_RANGES`] largest runs of them.
pub fn find(
    initrd: &Path,
    ram: &GuestRam,
    index: &ImageIndex,
) -> Result<Vec<(u64, u64)>, InitrdPagesError> {
    let cpio = std::fs::read(initrd).map_err(|source| InitrdPagesError::ReadInitrd {
        path: initrd.to_owned(),
        source,
    })?;
    matching_ranges(ram, index, &file_blocks(&cpio))
}

/// The data pages of `ram` whose [`page_hash`] is in `blocks`, as in
/// [`find`].
pub fn matching_ranges(
    ram: &GuestRam,
    index: &ImageIndex,
    blocks: &HashSet<u128>,
) -> Result<Vec<(u64, u64)>, InitrdPagesError> {
    let page = PAGE as u64;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    if blocks.is_empty() {
        return Ok(runs);
    }
    let mut buf = [0u8; PAGE];
    for offset in index.offsets() {
        ram.memfd
            .read_exact_at(&mut buf, offset)
            .map_err(|source| InitrdPagesError::ReadRam { offset, source })?;
        if !blocks.contains(&page_hash(&buf)) {
            continue;
        }
        match runs.last_mut() {
            Some((start, len)) if *start + *len == offset => *len += page,
            _ => runs.push((offset, page)),
        }
    }
    if runs.len() > MAX_RANGES {
        runs.sort_by_key(|&(start, len)| (std::cmp::Reverse(len), start));
        runs.truncate(MAX_RANGES);
        runs.sort_unstable();
    }
    Ok(runs)
}

/// The union of two lists of ascending, disjoint ranges (offset, bytes),
/// ascending, touching ranges joined.
pub fn merge(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().filter(|r| r.1 > 0).collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (start, len) in all {
        match out.last_mut() {
            Some((s, l)) if start <= *s + *l => *l = (*l).max(start + len - *s),
            _ => out.push((start, len)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_ram;
    use crate::vstate::memory_image;
    use vm_memory::{Bytes, GuestAddress};

    /// One `newc` entry: header, name, padding, data, padding.
    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
        let start = out.len();
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while (out.len() - start) % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }

    /// `len` bytes that differ from page to page.
    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| seed ^ (i / 7) as u8 ^ (i / PAGE) as u8)
            .collect()
    }

    fn archive(init: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        entry(&mut a, "dev", 0o040755, &[]);
        entry(&mut a, "init", 0o100755, init);
        entry(&mut a, "bin/sh", 0o120777, b"/init");
        entry(&mut a, "TRAILER!!!", 0, &[]);
        a
    }

    #[test]
    fn every_block_of_every_regular_file_and_nothing_else() {
        // Two and a half pages, and a page of zeros in the middle.
        let mut init = pattern(1, 2 * PAGE + PAGE / 2);
        init[PAGE..2 * PAGE].fill(0);
        let blocks = file_blocks(&archive(&init));
        let mut last = [0u8; PAGE];
        last[..PAGE / 2].copy_from_slice(&init[2 * PAGE..]);
        let want: HashSet<u128> = [xxh3_128(&init[..PAGE]), xxh3_128(&last)].into();
        assert_eq!(blocks, want);
        // Not a newc archive, or cut short: what was whole counts, no more.
        assert!(file_blocks(b"\x1f\x8b gzip, not cpio").is_empty());
        assert!(file_blocks(&[]).is_empty());
        let whole = archive(&init);
        let cut = &whole[..whole.len() / 2];
        assert!(file_blocks(cut).is_empty());
        let mut huge = whole.clone();
        // A file size field far past the end of the archive.
        let second = 1 + whole[1..].windows(6).position(|w| w == b"070701").unwrap();
        let at = second + 6 + 6 * 8;
        huge[at..at + 8].copy_from_slice(b"7FFFFFFF");
        assert!(file_blocks(&huge).len() <= blocks.len());
    }

    #[test]
    fn the_guest_pages_holding_initrd_blocks_are_found_in_runs() {
        let dir = tempfile::tempdir().unwrap();
        let init = pattern(9, 3 * PAGE);
        let path = dir.path().join("initrd");
        std::fs::write(&path, archive(&init)).unwrap();
        let ram = create_guest_ram(8 << 20).unwrap();
        // The file's pages at 0x10_0000.. (a run of 2) and 0x30_0000, and
        // other data around them.
        ram.mem
            .write_slice(&init[..2 * PAGE], GuestAddress(0x10_0000))
            .unwrap();
        ram.mem
            .write_slice(&init[2 * PAGE..], GuestAddress(0x30_0000))
            .unwrap();
        ram.mem
            .write_slice(&pattern(3, PAGE), GuestAddress(0x10_2000))
            .unwrap();
        ram.mem.write_obj(7u8, GuestAddress(0x5000)).unwrap();
        let image = memory_image::save(&ram, &dir.path().join("memory")).unwrap();
        let ranges = find(&path, &ram, &image.index).unwrap();
        assert_eq!(ranges, vec![(0x10_0000, 0x2000), (0x30_0000, 0x1000)]);
        // Without the initrd: nothing, and why.
        let err = find(&dir.path().join("gone"), &ram, &image.index).unwrap_err();
        assert!(err.to_string().contains("cannot read the initrd"), "{err}");
    }

    #[test]
    fn only_the_largest_runs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let init = pattern(5, (MAX_RANGES + 2) * PAGE);
        let blocks = file_blocks(&archive(&init));
        let ram = create_guest_ram(16 << 20).unwrap();
        // MAX_RANGES + 2 runs, apart; the first two of one page, the rest
        // of two (the second page of each also a file block).
        for i in 0..MAX_RANGES + 2 {
            let at = 0x10_0000 * (i as u64 + 1);
            let len = if i < 2 { PAGE } else { 2 * PAGE };
            let block = &init[i * PAGE..(i + 1) * PAGE];
            for p in 0..len / PAGE {
                ram.mem
                    .write_slice(block, GuestAddress(at + (p * PAGE) as u64))
                    .unwrap();
            }
        }
        let image = memory_image::save(&ram, &dir.path().join("memory")).unwrap();
        let ranges = matching_ranges(&ram, &image.index, &blocks).unwrap();
        assert_eq!(ranges.len(), MAX_RANGES);
        assert!(ranges.iter().all(|&(_, len)| len == 2 * PAGE as u64));
        assert!(ranges.windows(2).all(|w| w[0].0 < w[1].0), "{ranges:x?}");
    }

    #[test]
    fn merged_ranges_are_ascending_and_disjoint() {
        assert_eq!(
            merge(
                &[(0x1000, 0x2000), (0x10_0000, 0x1000)],
                &[(0x3000, 0x1000), (0x8000, 0x1000), (0x0, 0)]
            ),
            vec![(0x1000, 0x3000), (0x8000, 0x1000), (0x10_0000, 0x1000)]
        );
        assert_eq!(merge(&[], &[(0x2000, 0x1000)]), vec![(0x2000, 0x1000)]);
        assert_eq!(
            merge(&[(0x2000, 0x3000)], &[(0x3000, 0x1000)]),
            vec![(0x2000, 0x3000)]
        );
    }
}
