//! Helpers shared by the VMM fuzz targets: a byte reader that never fails
//! (missing bytes read as zero), the guest memory and split-queue layout the
//! queue targets fill from the fuzzer's bytes, and scratch files that are
//! created once per process and never touch the working tree.

use std::path::PathBuf;
use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Reads little-endian integers and byte runs off the fuzzer's input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes not consumed yet.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Guest memory of the queue targets: 64 KiB at address 0.
pub const MEM_SIZE: usize = 0x1_0000;
/// Each queue's rings live in a 8 KiB slot: queue `i` from `i * QUEUE_SLOT`.
pub const QUEUE_SLOT: u64 = 0x2000;
/// Offset of the avail ring in a queue slot (descriptor table at 0).
pub const AVAIL_OFFSET: u64 = 0x800;
/// Offset of the used ring in a queue slot.
pub const USED_OFFSET: u64 = 0x1000;
/// Where the data region starts; the input's tail is copied there.
pub const DATA_ADDR: u64 = 0x8000;
/// Largest queue the layout holds (the table is 16 bytes an entry, 2 KiB).
pub const MAX_QUEUE_SIZE: u16 = 128;

/// A fresh, zeroed guest memory of `MEM_SIZE` bytes.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("fuzz guest memory")
}

/// The queue size a header byte selects: a power of two, 1..=128.
pub fn queue_size(selector: u8) -> u16 {
    1 << (selector % 8)
}

/// Reads, for each of `queues` queues of `size` entries, the descriptor
/// table (`16 * size` bytes) and the avail ring (`6 + 2 * size` bytes:
/// flags, idx, ring, used_event) off `input` into guest memory, then the
/// rest of the input into the data region. Returns the queues, ready and
/// valid, as a device would get them at activation.
pub fn fill_queues(
    mem: &GuestMemoryMmap,
    input: &mut Input<'_>,
    queues: usize,
    size: u16,
) -> Vec<Queue> {
    let size = size.min(MAX_QUEUE_SIZE);
    let mut out = Vec::with_capacity(queues);
    for i in 0..queues as u64 {
        let base = i * QUEUE_SLOT;
        let table = input.bytes(16 * usize::from(size));
        mem.write_slice(table, GuestAddress(base))
            .expect("descriptor table in guest memory");
        let avail = input.bytes(6 + 2 * usize::from(size));
        mem.write_slice(avail, GuestAddress(base + AVAIL_OFFSET))
            .expect("avail ring in guest memory");
        out.push(queue_at(mem, base, size));
    }
    let data = input.rest();
    let data = &data[..data.len().min(MEM_SIZE - DATA_ADDR as usize)];
    mem.write_slice(data, GuestAddress(DATA_ADDR))
        .expect("data in guest memory");
    out
}

/// A ready queue of `size` entries whose slot starts at `base`.
pub fn queue_at(mem: &GuestMemoryMmap, base: u64, size: u16) -> Queue {
    let mut q = Queue::new(MAX_QUEUE_SIZE.max(size)).expect("queue");
    q.set_size(size);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + AVAIL_OFFSET) as u32), Some(0));
    q.set_used_ring_address(Some((base + USED_OFFSET) as u32), Some(0));
    q.set_ready(true);
    debug_assert!(q.is_valid(mem));
    q
}

/// A directory of this process for scratch files and sockets, under the
/// temp dir (`TMPDIR`, which `scripts/fuzz-smoke.sh` points at a directory
/// it removes afterwards), removed at a normal exit.
pub fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cocoon-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz scratch directory");
        extern "C" fn remove_scratch() {
            if let Some(d) = DIR.get() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        // SAFETY: registers a plain `extern "C"` function without arguments.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

/// An anonymous in-memory file (memfd) of `len` bytes, reachable by path
/// through `/proc/self/fd` (so devices that open a path can use it) and
/// gone with the process.
pub fn memfd_path(name: &str, len: u64) -> PathBuf {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let cname = std::ffi::CString::new(name).expect("memfd name");
    // SAFETY: `cname` is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(len).expect("size the memfd");
    // Kept open for the life of the process: the path stays valid.
    let fd = file.into_raw_fd();
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}
