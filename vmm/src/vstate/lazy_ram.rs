//! Guest RAM restored lazily from a memory image: a page of the image is
//! copied into guest memory when it is first touched, not before.
//!
//! Why: a restored VM touches a fraction of what its template touched
//! (boot-time code and data are not run again), and a page copied but
//! never touched is host memory the pod pays for. So nothing is copied up
//! front: the runs of data pages in guest RAM (the image's index, gaps of
//! a few pages merged) are registered with a userfaultfd for missing-page
//! faults, and a loader thread ([`PageSource::serve`]) answers each fault
//! with the page from the image, checked against its digest
//! ([`memory_image`]), through `UFFDIO_COPY`, or, between data pages of a
//! run, with a zero page. The rest of guest RAM is not registered: a page
//! that was a hole in the image faults in as a zero page the usual way,
//! at no cost to the loader.
//!
//! One page per fault ([`LOAD_BLOCK`]), not a block around it: in the
//! nested test host a page copied into guest RAM costs about half a
//! millisecond of CPU, as much as a fault's round trip, and a restored
//! guest's first touches are scattered. Measured there: in its first 2 s
//! after a restore (agent initrd) the guest touched 690 data pages; with
//! 64 KiB blocks the loader copied 2300 for them and the agent accepted
//! its first connection after 1.7 s (median of 4), with single pages
//! after 0.9 s (8 and 16 KiB blocks in between). Over a whole `ctr run
//! --rm` (the `ctr` bench, 6 runs each in one run) single pages and 64 KiB
//! blocks cost the same (7.6 s): the agent answers 1 s sooner and the
//! first container's create takes 0.8 s longer (its code runs in longer
//! stretches). Single pages win on memory: a restored VM holds half the
//! pages (PSS 6.0 MiB instead of 12.6 MiB in the `restore` bench).
//!
//! The template kernel's text is the exception: mapped privately from the
//! image (the snapshot's `shared` ranges, see [`load`]), shared between
//! VMs, never registered or copied.
//!
//! Guest RAM stays a shared memfd (vhost-user backends map it). Faults
//! come only from the VMM's own mapping: the guest (through KVM) and the
//! VMM's devices. A backend's mapping (virtiofsd's) does not report
//! faults: if it touched a data page before the guest did, it would see
//! a zero page, and the page would stay zero. It does not happen: a
//! backend only reads and writes the buffers the guest's driver put in
//! its queues after the restore, and the driver wrote or read each of
//! them first (descriptors, headers, and pages it allocated, which the
//! template's `init_on_free=1` zeroed when they were freed, so they are
//! holes in the image), and the template never used the virtio-fs queues
//! (the share is mounted only after the restore).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use super::memory::{
    create_guest_ram, create_guest_ram_sharing, GuestRam, MemoryError, SharedMapError,
};
use super::memory_image::{self, ImageIndex, MemoryImageError, PAGE};
use super::uffd::{Uffd, UffdError};
use super::working_set::{self, WorkingSetError};

/// Data pages closer than this (in pages) are registered as one range:
/// fewer ranges (each one splits the mapping), a few more zero-page
/// faults.
const MERGE_GAP: u64 = 16;
/// The loader says what a burst of faults cost once the guest has not
/// faulted for this long.
const BURST_QUIET: Duration = Duration::from_millis(500);
/// A fault on a data page loads the data pages of its aligned block of
/// this many bytes (see the module's text).
pub const LOAD_BLOCK: usize = 4 << 10;

/// Errors of lazy guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum LazyRamError {
    /// The image is unusable (or one of its pages is corrupt).
    #[error(transparent)]
    Image(#[from] MemoryImageError),
    /// Guest RAM cannot be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The shared ranges cannot be mapped from the image.
    #[error(transparent)]
    Shared(#[from] SharedMapError),
    /// The userfaultfd failed.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// Reading a page of the image failed.
    #[error("cannot read the page at offset {offset:#x} of the memory image {path}")]
    ReadPage {
        /// The image.
        path: PathBuf,
        /// Offset in it.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A guest RAM region without a host mapping (a bug).
    #[error("a guest RAM region has no host address: {0}")]
    HostAddress(String),
    /// A fault outside guest RAM (a bug: only guest RAM is registered).
    #[error("a fault at {addr:#x}, outside guest RAM")]
    Stray {
        /// The address.
        addr: u64,
    },
    /// Waiting for faults failed.
    #[error("cannot wait for guest memory faults")]
    Poll(#[source] io::Error),
    /// The page buffer cannot be mapped.
    #[error("cannot map the loader's page buffer")]
    Buffer(#[source] io::Error),
    /// The working set could not be written.
    #[error(transparent)]
    WorkingSet(#[from] WorkingSetError),
    /// The record signal could not be read.
    #[error("cannot read the working-set signal")]
    Signal(#[source] io::Error),
}

/// Records the data pages the loader copies until a signal arrives, then
/// writes them as a working set ([`working_set`]).
#[derive(Debug)]
pub struct Recorder {
    /// Where the working set goes (opened by the caller, before any jail).
    pub file: File,
    /// Its name, for messages.
    pub path: PathBuf,
    /// Readable once the VMM was asked to write the working set (a
    /// signalfd).
    pub signal: OwnedFd,
}

/// A guest RAM region: where it is mapped and where it starts in the memfd.
#[derive(Debug, Clone, Copy)]
struct Region {
    host: u64,
    offset: u64,
    len: u64,
}

/// What answers the faults of lazily restored guest RAM.
#[derive(Debug)]
pub struct PageSource {
    uffd: Uffd,
    image: Arc<File>,
    path: PathBuf,
    index: ImageIndex,
    regions: Vec<Region>,
    /// Pages loaded up front (the working set).
    prefetched: u64,
    recorder: Option<Recorder>,
    recorded: Vec<u64>,
}

/// What the loader did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadStats {
    /// Pages copied from the image.
    pub copied: u64,
    /// Zero pages mapped (between data pages of a registered run).
    pub zeroed: u64,
    /// Faults answered.
    pub faults: u64,
}

/// One burst of faults: from its first fault until the loader went quiet.
struct Burst {
    start: Instant,
    busy: Duration,
    before: LoadStats,
}

impl Burst {
    /// Logs what the burst cost (where a restored guest waits on its
    /// memory).
    fn report(self, now: &LoadStats, since_serve: Duration) {
        let span = self.start.elapsed();
        tracing::info!(
            faults = now.faults - self.before.faults,
            copied = now.copied - self.before.copied,
            zeroed = now.zeroed - self.before.zeroed,
            busy_ms = self.busy.as_millis() as u64,
            span_ms = span.saturating_sub(BURST_QUIET).as_millis() as u64,
            began_ms = since_serve.saturating_sub(span).as_millis() as u64,
            "guest memory loader: a burst of faults"
        );
    }
}

/// New guest RAM of `size` bytes that will hold the image at `path`, whose
/// data pages `index` names, each page loaded (and checked) when first
/// touched once [`PageSource::serve`] runs. Nothing may touch guest RAM
/// before.
///
/// The data pages `prefetch` names (a working set: ascending data pages of
/// `index`, checked by the caller) are loaded now, in runs, each page
/// checked: the guest never faults on them.
///
/// The ranges `shared` (memfd offsets; the template kernel's text) are
/// mapped privately from the image instead ([`create_guest_ram_sharing`]):
/// their pages are the image's page cache, the same for every VM restored
/// from it, never copied unless the guest writes one. Their data pages are
/// checked against their digests now; they are neither registered with
/// the userfaultfd nor prefetched.
pub fn load(
    path: &Path,
    size: u64,
    index: ImageIndex,
    prefetch: &[u64],
    shared: &[(u64, u64)],
) -> Result<(GuestRam, PageSource), LazyRamError> {
    let image = Arc::new(memory_image::open(path, size, &index)?);
    let ram = if shared.is_empty() {
        create_guest_ram(size)?
    } else {
        let ram = create_guest_ram_sharing(size, &image, shared)?;
        check_shared(&ram, path, &index)?;
        ram
    };
    let in_shared = |p: u64| shared.iter().any(|&(s, l)| p >= s && p < s + l);
    let prefetch: Vec<u64> = prefetch
        .iter()
        .copied()
        .filter(|&p| !in_shared(p))
        .collect();
    let runs = page_runs(&prefetch);
    memory_image::load_runs(&image, path, &ram, &index, &runs)?;
    let uffd = Uffd::new()?;
    let mut regions = Vec::new();
    for r in ram.mem.iter().filter(|r| !GuestRam::is_private(r)) {
        let host = r
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| LazyRamError::HostAddress(e.to_string()))? as u64;
        let offset = r.file_offset().map(|f| f.start()).unwrap_or(0);
        regions.push(Region {
            host,
            offset,
            len: r.len(),
        });
    }
    for (start, len) in index.runs(MERGE_GAP) {
        let end = start + len;
        for r in &regions {
            let (from, to) = (start.max(r.offset), end.min(r.offset + r.len));
            if from < to {
                uffd.register(r.host + (from - r.offset), to - from)?;
            }
        }
    }
    let source = PageSource {
        uffd,
        image,
        path: path.to_owned(),
        index,
        regions,
        prefetched: prefetch.len() as u64,
        recorder: None,
        recorded: Vec::new(),
    };
    Ok((ram, source))
}

/// Check every data page of the privately mapped (shared) regions of
/// `ram` against its digest, in place: the mapping is populated for
/// reading in one call (the image's page cache mapped, nothing copied),
/// then each page is hashed where it is.
fn check_shared(ram: &GuestRam, path: &Path, index: &ImageIndex) -> Result<(), LazyRamError> {
    for r in ram.mem.iter().filter(|r| GuestRam::is_private(r)) {
        let base = r.file_offset().map(|f| f.start()).unwrap_or(0);
        let host = r.as_ptr();
        // SAFETY: advice on the region's own live mapping; a read
        // populate does not change its contents (nor copy a page). A
        // kernel without MADV_POPULATE_READ refuses it: the reads below
        // fault the pages in instead.
        unsafe {
            libc::madvise(host.cast(), r.len() as usize, libc::MADV_POPULATE_READ);
        }
        for at in (0..r.len()).step_by(PAGE) {
            if !index.is_data(base + at) {
                continue;
            }
            // SAFETY: `at + PAGE` is inside the region's mapping, which
            // lives as long as `ram`; nothing writes it before the guest
            // runs, and the guest runs only after this returns.
            let page = unsafe { std::slice::from_raw_parts(host.add(at as usize), PAGE) };
            index.check(path, base + at, page)?;
        }
    }
    Ok(())
}

/// Ascending page offsets as runs of contiguous pages (offset, bytes).
fn page_runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == p => *len += PAGE as u64,
            _ => runs.push((p, PAGE as u64)),
        }
    }
    runs
}

/// One block of anonymous memory (`UFFDIO_COPY` wants an aligned source).
struct PageBuf(*mut u8);

impl PageBuf {
    fn new() -> Result<Self, LazyRamError> {
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LOAD_BLOCK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(LazyRamError::Buffer(io::Error::last_os_error()));
        }
        Ok(PageBuf(p.cast()))
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is LOAD_BLOCK bytes, readable and writable,
        // and only reachable through this value.
        unsafe { std::slice::from_raw_parts_mut(self.0, LOAD_BLOCK) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`, used by nobody else.
        unsafe { libc::munmap(self.0.cast(), LOAD_BLOCK) };
    }
}

impl PageSource {
    /// The pages of the image that hold data.
    pub fn data_pages(&self) -> u64 {
        self.index.data_pages()
    }

    /// The pages loaded before the guest ran (the working set).
    pub fn prefetched(&self) -> u64 {
        self.prefetched
    }

    /// Record the data pages loaded from now on, until `recorder.signal`
    /// is readable, then write them to `recorder.file`.
    pub fn record(&mut self, recorder: Recorder) {
        self.recorder = Some(recorder);
    }

    /// Write what was recorded and stop recording.
    fn write_working_set(&mut self) -> Result<(), LazyRamError> {
        let Some(mut r) = self.recorder.take() else {
            return Ok(());
        };
        let mut info = [0u8; 128];
        // SAFETY: reads one signalfd_siginfo (128 bytes) into a buffer of
        // that size that we own.
        let n = unsafe { libc::read(r.signal.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
        if n < 0 {
            return Err(LazyRamError::Signal(io::Error::last_os_error()));
        }
        let pages = std::mem::take(&mut self.recorded);
        working_set::write(&mut r.file, &r.path, &pages)?;
        tracing::info!(
            pages = pages.len(),
            path = %r.path.display(),
            "guest memory loader: working set written"
        );
        Ok(())
    }

    /// The region holding host address `addr`.
    fn region_of(&self, addr: u64) -> Option<Region> {
        self.regions
            .iter()
            .find(|r| addr >= r.host && addr < r.host + r.len)
            .copied()
    }

    /// Load the data pages of the aligned [`LOAD_BLOCK`] around the data
    /// page at `addr` (memfd offset `offset`) in region `r`: one read, each
    /// page checked against its digest, one copy per run of data pages.
    /// Pages already there are left alone.
    fn load_block(
        &mut self,
        buf: &mut PageBuf,
        r: Region,
        addr: u64,
        offset: u64,
        stats: &mut LoadStats,
    ) -> Result<(), LazyRamError> {
        let page = PAGE as u64;
        // The block, clipped to the region (whose offset and size are
        // page aligned).
        let start = (offset & !(LOAD_BLOCK as u64 - 1)).max(r.offset);
        let end = (start + LOAD_BLOCK as u64).min(r.offset + r.len);
        let bytes = &mut buf.as_mut_slice()[..(end - start) as usize];
        self.image
            .read_exact_at(bytes, start)
            .map_err(|source| LazyRamError::ReadPage {
                path: self.path.clone(),
                offset: start,
                source,
            })?;
        let host = |off: u64| r.host + (off - r.offset);
        let mut at = start;
        while at < end {
            if !self.index.is_data(at) {
                at += page;
                continue;
            }
            let mut run_end = at;
            while run_end < end && self.index.is_data(run_end) {
                let from = (run_end - start) as usize;
                self.index
                    .check(&self.path, run_end, &bytes[from..from + PAGE])?;
                run_end += page;
            }
            let src = bytes[(at - start) as usize..].as_ptr();
            if self.uffd.copy(host(at), src, run_end - at)? {
                stats.copied += (run_end - at) / page;
                if self.recorder.is_some() {
                    self.recorded.extend((at..run_end).step_by(PAGE));
                }
            } else {
                // Part of the run was there already: page by page.
                for p in (at..run_end).step_by(PAGE) {
                    let src = bytes[(p - start) as usize..].as_ptr();
                    if self.uffd.copy(host(p), src, page)? {
                        stats.copied += 1;
                        if self.recorder.is_some() {
                            self.recorded.push(p);
                        }
                    }
                }
            }
            at = run_end;
        }
        // The faulting page is a data page of this block: it was copied
        // now or before, and either way its waiters were woken.
        debug_assert!(addr >= host(start) && addr < host(end));
        Ok(())
    }

    /// Answer faults until `stop` is signalled; an error (a corrupt page
    /// among them) leaves the faulting threads waiting: the caller ends
    /// the VM.
    pub fn serve(mut self, stop: &EventFd) -> Result<LoadStats, LazyRamError> {
        let mut buf = PageBuf::new()?;
        let mut stats = LoadStats::default();
        let page_mask = !(PAGE as u64 - 1);
        let served = Instant::now();
        let mut burst: Option<Burst> = None;
        loop {
            let record_fd = self.recorder.as_ref().map(|r| r.signal.as_raw_fd());
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    // poll ignores a negative descriptor.
                    fd: record_fd.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let wait = match burst {
                Some(_) => BURST_QUIET.as_millis() as libc::c_int,
                None => -1,
            };
            // SAFETY: `fds` is an array of three pollfds we own.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, wait) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(LazyRamError::Poll(e));
            }
            // Before any fault: pages loaded after the signal are not the
            // working set.
            if fds[2].revents != 0 {
                self.write_working_set()?;
            }
            if n == 0 || fds[1].revents != 0 {
                if let Some(b) = burst.take() {
                    b.report(&stats, served.elapsed());
                }
                if n == 0 {
                    continue;
                }
                return Ok(stats);
            }
            if fds[0].revents == 0 {
                continue;
            }
            let busy = Instant::now();
            let b = burst.get_or_insert(Burst {
                start: busy,
                busy: Duration::ZERO,
                before: stats,
            });
            while let Some(fault) = self.uffd.read_fault()? {
                stats.faults += 1;
                let addr = fault.addr & page_mask;
                let r = self
                    .region_of(addr)
                    .ok_or(LazyRamError::Stray { addr: fault.addr })?;
                let offset = r.offset + (addr - r.host);
                if self.index.is_data(offset) {
                    self.load_block(&mut buf, r, addr, offset, &mut stats)?;
                } else if self.uffd.zero(addr, PAGE as u64)? {
                    stats.zeroed += 1;
                }
            }
            b.busy += busy.elapsed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// Pages of the memfd that hold memory (allocated), by SEEK_DATA.
    fn allocated_pages(ram: &GuestRam) -> u64 {
        let fd = ram.memfd.as_raw_fd();
        let (mut pos, mut pages) = (0i64, 0u64);
        loop {
            // SAFETY: lseek on a descriptor we own.
            let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
            if start < 0 {
                return pages;
            }
            // SAFETY: as above.
            let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
            pages += (end - start) as u64 / PAGE as u64;
            pos = end;
        }
    }

    #[test]
    fn pages_come_from_the_image_when_touched_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let saved = create_guest_ram(8 << 20).unwrap();
        saved
            .mem
            .write_obj(0x1111u32, GuestAddress(0x1000))
            .unwrap();
        saved
            .mem
            .write_obj(0x2222u32, GuestAddress(0x5ffc))
            .unwrap();
        saved
            .mem
            .write_obj(0x3333u32, GuestAddress(0x70_0000))
            .unwrap();
        let path = dir.path().join("memory");
        let image = memory_image::save(&saved, &path).unwrap();

        let (ram, source) = load(&path, 8 << 20, image.index, &[], &[]).unwrap();
        assert_eq!(source.data_pages(), 3);
        assert_eq!(allocated_pages(&ram), 0, "loaded before being touched");
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop2 = stop.try_clone().unwrap();
        let loader = std::thread::spawn(move || source.serve(&stop2));

        let mem = ram.mem.clone();
        let reader = std::thread::spawn(move || {
            (
                mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
                mem.read_obj::<u32>(GuestAddress(0x5ffc)).unwrap(),
                // Between data pages of one registered run: zero.
                mem.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
                // A hole far from any data page: never registered.
                mem.read_obj::<u32>(GuestAddress(0x40_0000)).unwrap(),
            )
        });
        assert_eq!(reader.join().unwrap(), (0x1111, 0x2222, 0, 0));
        // Written before read: the page still comes from the image first.
        ram.mem.write_obj(0x44u8, GuestAddress(0x70_0001)).unwrap();
        assert_eq!(
            ram.mem.read_obj::<u32>(GuestAddress(0x70_0000)).unwrap(),
            0x4433
        );
        stop.write(1).unwrap();
        let stats = loader.join().unwrap().unwrap();
        assert_eq!(stats.copied, 3, "{stats:?}");
        assert_eq!(stats.zeroed, 1, "{stats:?}");
        assert!(
            allocated_pages(&ram) <= 5,
            "{} pages allocated",
            allocated_pages(&ram)
        );
    }

    #[test]
    fn a_corrupt_page_ends_the_loader_when_touched_and_names_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let saved = create_guest_ram(4 << 20).unwrap();
        saved.mem.write_obj(7u8, GuestAddress(0x2000)).unwrap();
        saved.mem.write_obj(9u8, GuestAddress(0x30_0000)).unwrap();
        let path = dir.path().join("memory");
        let image = memory_image::save(&saved, &path).unwrap();
        // An image of another size is refused before guest RAM exists.
        assert!(matches!(
            load(&path, 8 << 20, image.index.clone(), &[], &[]),
            Err(LazyRamError::Image(MemoryImageError::SizeMismatch { .. }))
        ));
        // One changed byte: nothing reads it until the guest touches it.
        overwrite(&path, 0x2000, 8u8);
        let (ram, source) = load(&path, 4 << 20, image.index, &[], &[]).unwrap();
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop2 = stop.try_clone().unwrap();
        let loader = std::thread::spawn(move || source.serve(&stop2));
        // An intact page loads.
        assert_eq!(ram.mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(), 9);
        // The corrupt one is refused; once the loader (and its
        // userfaultfd) is gone the reader goes on, never with the byte.
        let mem = ram.mem.clone();
        let reader = std::thread::spawn(move || mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap());
        assert_ne!(
            reader.join().unwrap(),
            8,
            "the corrupt byte reached the guest"
        );
        stop.write(1).unwrap();
        let err = loader.join().unwrap().unwrap_err();
        assert!(
            matches!(
                &err,
                LazyRamError::Image(MemoryImageError::PageDigest { offset: 0x2000, .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("is corrupt"), "{err}");
    }

    /// The memory image of 8 MiB of RAM holding these bytes (address,
    /// value), saved in `dir`, and its index.
    fn image_with(dir: &Path, bytes: &[(u64, u8)]) -> (PathBuf, ImageIndex) {
        let saved = create_guest_ram(8 << 20).unwrap();
        for &(addr, value) in bytes {
            saved.mem.write_obj(value, GuestAddress(addr)).unwrap();
        }
        let path = dir.join("memory");
        let image = memory_image::save(&saved, &path).unwrap();
        (path, image.index)
    }

    /// Write `byte` at `offset` of the memory image at `path` (corrupting
    /// the page there).
    fn overwrite(path: &Path, offset: u64, byte: u8) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[byte], offset).unwrap();
    }

    /// Saved RAM with data at 0x1000, 0x2000 (a run) and 0x70_0000.
    fn three_pages(dir: &Path) -> (PathBuf, ImageIndex) {
        image_with(dir, &[(0x1000, 0x11), (0x2000, 0x22), (0x70_0000, 0x33)])
    }
    #[test]
    fn a_working_set_is_loaded_before_the_guest_runs_and_never_faults() {
        let dir = tempfile::tempdir().unwrap();
        let (path, index) = three_pages(dir.path());
        let (ram, source) = load(&path, 8 << 20, index, &[0x1000, 0x2000], &[]).unwrap();
        assert_eq!(source.prefetched(), 2);
        assert_eq!(allocated_pages(&ram), 2, "the working set is not loaded");
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop2 = stop.try_clone().unwrap();
        let loader = std::thread::spawn(move || source.serve(&stop2));
        assert_eq!(ram.mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0x11);
        assert_eq!(ram.mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0x22);
        assert_eq!(
            ram.mem.read_obj::<u8>(GuestAddress(0x70_0000)).unwrap(),
            0x33
        );
        stop.write(1).unwrap();
        let stats = loader.join().unwrap().unwrap();
        // Only the page outside the working set was a fault.
        assert_eq!((stats.faults, stats.copied), (1, 1), "{stats:?}");
    }

    #[test]
    fn a_corrupt_page_of_the_working_set_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let (path, index) = three_pages(dir.path());
        overwrite(&path, 0x2000, 0x99u8);
        let err = load(&path, 8 << 20, index, &[0x1000, 0x2000], &[]).unwrap_err();
        assert!(
            matches!(
                &err,
                LazyRamError::Image(MemoryImageError::PageDigest { offset: 0x2000, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn the_recorder_writes_the_pages_loaded_before_its_signal_only() {
        let dir = tempfile::tempdir().unwrap();
        let (path, index) = three_pages(dir.path());
        let (ram, mut source) = load(&path, 8 << 20, index, &[], &[]).unwrap();
        let ws = dir.path().join("working-set");
        let signal = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fd = signal.try_clone().unwrap();
        // SAFETY: the descriptor was just duplicated for the recorder
        // alone.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd.as_raw_fd()) };
        std::mem::forget(fd);
        source.record(Recorder {
            file: File::create(&ws).unwrap(),
            path: ws.clone(),
            signal: owned,
        });
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop2 = stop.try_clone().unwrap();
        let loader = std::thread::spawn(move || source.serve(&stop2));
        assert_eq!(ram.mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0x22);
        signal.write(1).unwrap();
        crate::devices::virtio::test_chains::wait_until("the working set is written", || {
            std::fs::metadata(&ws).map(|m| m.len() > 0).unwrap_or(false)
        });
        // After the signal: loaded, not recorded.
        assert_eq!(
            ram.mem.read_obj::<u8>(GuestAddress(0x70_0000)).unwrap(),
            0x33
        );
        stop.write(1).unwrap();
        loader.join().unwrap().unwrap();
        assert_eq!(working_set::read(&ws).unwrap(), vec![0x2000]);
    }

    #[test]
    fn shared_pages_are_the_images_own_and_a_guest_write_stays_in_its_vm() {
        let dir = tempfile::tempdir().unwrap();
        let (path, index) = image_with(
            dir.path(),
            &[(0x10_0000, 0x11), (0x10_1000, 0x22), (0x70_0000, 0x33)],
        );
        let before = std::fs::read(&path).unwrap();
        // The working set names a shared page too: not copied.
        let (ram, source) = load(
            &path,
            8 << 20,
            index.clone(),
            &[0x10_0000, 0x70_0000],
            &[(0x10_0000, 0x2000)],
        )
        .unwrap();
        assert_eq!(ram.mem.num_regions(), 3);
        assert_eq!(allocated_pages(&ram), 1, "only the unshared page is copied");
        // No loader runs: shared pages are there without a fault.
        assert_eq!(
            ram.mem.read_obj::<u8>(GuestAddress(0x10_1000)).unwrap(),
            0x22
        );
        ram.mem.write_obj(0x99u8, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(
            ram.mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(),
            0x99
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the guest wrote the image"
        );
        // A second VM from the same image sees the saved byte.
        let (other, _s2) = load(&path, 8 << 20, index, &[], &[(0x10_0000, 0x2000)]).unwrap();
        assert_eq!(
            other.mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(),
            0x11
        );
        // virtio-fs gets the memfd for every region, the shared ones too.
        let table = crate::devices::virtio::fs::backend::memory_regions(&ram.mem).unwrap();
        assert_eq!(table.len(), 3);
        for (i, r) in table.iter().enumerate() {
            assert_eq!(r.mmap_handle, ram.memfd.as_raw_fd(), "region {i}");
            assert_eq!(r.mmap_offset, r.guest_phys_addr, "region {i}");
        }
        drop(source);
    }

    #[test]
    fn a_corrupt_shared_page_fails_the_load_and_bad_ranges_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, index) = three_pages(dir.path());
        overwrite(&path, 0x2000, 0x98u8);
        let err = load(&path, 8 << 20, index.clone(), &[], &[(0x1000, 0x2000)]).unwrap_err();
        assert!(
            matches!(
                &err,
                LazyRamError::Image(MemoryImageError::PageDigest { offset: 0x2000, .. })
            ),
            "{err}"
        );
        // The VMM ends with its snapshot-memory exit code for it.
        assert!(crate::VmmError::from(err).is_corrupt_memory());
        for bad in [
            vec![(0x1001, 0x1000)],
            vec![(0x1000, 0)],
            vec![(0x3000, 0x1000), (0x1000, 0x1000)],
            vec![(0x7f_f000, 0x2000)],
        ] {
            let err = load(&path, 8 << 20, index.clone(), &[], &bad).unwrap_err();
            assert!(matches!(err, LazyRamError::Shared(_)), "{bad:x?}: {err}");
            assert!(!crate::VmmError::from(err).is_corrupt_memory());
        }
    }
}
