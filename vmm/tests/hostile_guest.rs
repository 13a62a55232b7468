//! Hostile guest, across devices (issue 3 item 7): a vsock device (real
//! `VsockMuxer` backend, real device thread) and a virtio-rng device share
//! one guest memory, each behind the real `MmioTransport`, driven through
//! its registers the way the guest driver does, with `MockSplitQueue` rings.
//! The vsock tx queue gets malformed packets and bad descriptor chains
//! (thousands of them), then a corrupt avail ring that breaks the device;
//! the rng keeps serving throughout, the vsock thread does not spin, the
//! logging stays within the rate limit, and a device reset brings vsock
//! back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_vmm::devices::bus::BusDevice;
use cocoon_vmm::devices::virtio::mmio::{regs, status};
use cocoon_vmm::devices::virtio::rng::Rng;
use cocoon_vmm::devices::virtio::test_chains::{chained_at, readable, writable, F_NEXT};
use cocoon_vmm::devices::virtio::vsock::{uapi, Vsock, VsockHeader, VsockMuxer};
use cocoon_vmm::devices::virtio::{MmioTransport, VirtioInterrupt};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: u64 = 0x100_0000;
const QSIZE: u16 = 256;
const GUEST_CID: u64 = 3;
/// Rings: vsock rx/tx/event, then rng, 64 KiB apart.
const RING_BASE: [u64; 4] = [0x0, 0x1_0000, 0x2_0000, 0x3_0000];
/// Headers the guest "wrote", one page per kind.
const HDR_AREA: u64 = 0x10_0000;
/// Guest rx buffers and rng buffers.
const RX_AREA: u64 = 0x20_0000;
const RNG_AREA: u64 = 0x30_0000;
/// The limiter of `cocoon_vmm::limited!`: events per call site per second.
const LOG_LIMIT: u32 = 10;

/// The tests share the log counter and look for the vsock thread by name,
/// so they run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- log counting ----

/// Events per (call site, wall-clock second), from every thread.
#[derive(Default)]
struct LogCount {
    per_site_second: HashMap<(String, u64), u32>,
    total: u64,
}

struct Counter(Arc<Mutex<LogCount>>);

impl<S: tracing::Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let m = event.metadata();
        if !m.target().starts_with("cocoon_vmm") {
            return;
        }
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let site = format!("{}:{}", m.file().unwrap_or("?"), m.line().unwrap_or(0));
        let mut c = self.0.lock().unwrap();
        *c.per_site_second.entry((site, second)).or_default() += 1;
        c.total += 1;
    }
}

fn logs() -> &'static Arc<Mutex<LogCount>> {
    static LOGS: OnceLock<Arc<Mutex<LogCount>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(LogCount::default()));
        // HOSTILE_GUEST_LOG=1 also prints the events (debugging).
        let print = std::env::var_os("HOSTILE_GUEST_LOG").map(|_| tracing_subscriber::fmt::layer());
        let subscriber = tracing_subscriber::registry()
            .with(Counter(logs.clone()))
            .with(print);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

/// No call site logged more than the limiter allows in any second.
fn assert_rate_limited() -> u64 {
    let c = logs().lock().unwrap();
    for ((site, second), n) in &c.per_site_second {
        assert!(
            *n <= LOG_LIMIT,
            "{site} logged {n} times in second {second} (limit {LOG_LIMIT})"
        );
    }
    c.total
}

// ---- the guest driver ----

/// Where the used ring goes, from the queue's base. `MockSplitQueue` puts
/// its used ring at `avail.end()`, which counts ring entries as bytes, so
/// for a 256-entry queue the used ring overlaps the upper half of the avail
/// ring (virtio-queue 0.18); a driver that cycles through all entries then
/// sees the device's used writes in its avail ring. Ours lives apart.
const USED_OFFSET: u64 = 0x8000;

/// One virtqueue as the guest driver sees it: descriptor table and avail
/// ring from `MockSplitQueue`, the used ring at `base + USED_OFFSET`.
struct Ring<'m> {
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
    used_addr: u64,
    avail: u16,
}

impl<'m> Ring<'m> {
    fn new(mem: &'m GuestMemoryMmap, base: u64) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(base), QSIZE);
        let used_addr = base + USED_OFFSET;
        assert!(used_addr >= vq.used().end().0 + 2);
        mem.write_slice(&[0u8; 8 + 8 * QSIZE as usize], GuestAddress(used_addr))
            .unwrap();
        Ring {
            vq,
            mem,
            used_addr,
            avail: 0,
        }
    }

    /// Store `descs` as they are from table slot `slot` and make `slot`
    /// available as a chain head.
    fn post_raw(&mut self, slot: u16, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            self.vq.desc_table().store(slot + i as u16, *d).unwrap();
        }
        self.vq
            .avail()
            .ring()
            .ref_at(usize::from(self.avail % QSIZE))
            .unwrap()
            .store(slot);
        self.avail = self.avail.wrapping_add(1);
        self.vq.avail().idx().store(self.avail);
    }

    /// Link `descs` into one chain at `slot` and post it.
    fn post(&mut self, slot: u16, descs: &[RawDescriptor]) {
        self.post_raw(slot, &chained_at(slot, descs));
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_addr + 2)).unwrap()
    }

    /// Used entry `n` (counting from 0 since activation): (head, len).
    fn used(&self, n: u16) -> (u32, u32) {
        let at = self.used_addr + 4 + 8 * u64::from(n % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// Wait until the device used `want` chains in total.
    fn wait_used(&self, want: u16, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.used_idx() != want {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

fn w32(m: &mut MmioTransport, off: u64, v: u32) {
    m.write(0, off, &v.to_le_bytes());
}

fn r32(m: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read(0, off, &mut b);
    u32::from_le_bytes(b)
}

/// The driver's init sequence (virtio 1.2 §3.1.1) over the registers.
fn bring_up(m: &mut MmioTransport, rings: &[&Ring]) {
    use status::*;
    w32(m, regs::STATUS, 0);
    w32(m, regs::STATUS, ACKNOWLEDGE);
    w32(m, regs::STATUS, ACKNOWLEDGE | DRIVER);
    w32(m, regs::DRIVER_FEATURES_SEL, 1);
    w32(m, regs::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
    w32(m, regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_ne!(r32(m, regs::STATUS) & FEATURES_OK, 0, "features refused");
    for (i, ring) in rings.iter().enumerate() {
        w32(m, regs::QUEUE_SEL, i as u32);
        w32(m, regs::QUEUE_NUM, u32::from(QSIZE));
        let addrs = [
            (regs::QUEUE_DESC_LOW, ring.vq.desc_table_addr().0),
            (regs::QUEUE_AVAIL_LOW, ring.vq.avail_addr().0),
            (regs::QUEUE_USED_LOW, ring.used_addr),
        ];
        for (low, addr) in addrs {
            w32(m, low, addr as u32);
            w32(m, low + 4, (addr >> 32) as u32);
        }
        w32(m, regs::QUEUE_READY, 1);
    }
    w32(
        m,
        regs::STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(m.is_activated(), "device did not activate");
}

// ---- the guest ----

/// vsock rx, tx, event and the rng queue, on `mem`.
fn make_rings(mem: &GuestMemoryMmap) -> [Ring<'_>; 4] {
    RING_BASE.map(|b| Ring::new(mem, b))
}

/// The ids of the process's threads named `vsock` (the device thread).
fn vsock_threads() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|tid: &u32| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == "vsock")
        })
        .collect()
}

/// utime + stime of thread `tid`, in clock ticks.
fn cpu_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

struct Guest {
    mem: GuestMemoryMmap,
    vsock: MmioTransport,
    rng: MmioTransport,
    vsock_thread: u32,
    dir: PathBuf,
}

impl Guest {
    fn new(name: &str) -> Guest {
        logs();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let dir =
            std::env::temp_dir().join(format!("cocoon-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let muxer = VsockMuxer::new(GUEST_CID, &dir.join("v.sock")).unwrap();
        let irq = || {
            Arc::new(VirtioInterrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ))
        };
        let vsock = Box::new(Vsock::new(GUEST_CID, muxer).unwrap());
        let vsock = MmioTransport::new(vsock, mem.clone(), irq());
        let rng = MmioTransport::new(Box::new(Rng::new().unwrap()), mem.clone(), irq());
        Guest {
            mem,
            vsock,
            rng,
            vsock_thread: 0,
            dir,
        }
    }

    /// Activate both devices; returns the vsock thread's id.
    fn bring_up(&mut self, rings: &[Ring]) {
        let before = vsock_threads();
        bring_up(&mut self.vsock, &[&rings[0], &rings[1], &rings[2]]);
        // The thread names itself once it runs.
        let deadline = Instant::now() + Duration::from_secs(5);
        let new = loop {
            let new: Vec<u32> = vsock_threads()
                .into_iter()
                .filter(|t| !before.contains(t))
                .collect();
            if !new.is_empty() || Instant::now() > deadline {
                break new;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(new.len(), 1, "expected one new vsock thread, got {new:?}");
        self.vsock_thread = new[0];
        bring_up(&mut self.rng, &[&rings[3]]);
    }

    /// The rng (on its own device thread) answers one 64-byte request
    /// with random bytes.
    fn rng_serves(&mut self, ring: &mut Ring, round: u16) {
        let addr = RNG_AREA + u64::from(round % 64) * 64;
        self.mem
            .write_slice(&[0u8; 64], GuestAddress(addr))
            .unwrap();
        let before = ring.used_idx();
        ring.post(round % QSIZE, &[writable(addr, 64)]);
        w32(&mut self.rng, regs::QUEUE_NOTIFY, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ring.used_idx() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            ring.used_idx(),
            before.wrapping_add(1),
            "rng stopped serving"
        );
        assert_eq!(ring.used(before).1, 64, "rng wrote a short buffer");
        let mut got = [0u8; 64];
        self.mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
        assert!(got.iter().any(|&b| b != 0), "rng bytes are all zero");
    }

    /// Kick the vsock tx queue; the write itself must return at once.
    fn kick_tx(&mut self) {
        let t = Instant::now();
        w32(&mut self.vsock, regs::QUEUE_NOTIFY, 1);
        assert!(t.elapsed() < Duration::from_secs(1), "QueueNotify blocked");
    }

    /// The vsock thread's CPU ticks over `window` of idling.
    fn idle_ticks(&self, window: Duration) -> u64 {
        let start = cpu_ticks(self.vsock_thread);
        std::thread::sleep(window);
        cpu_ticks(self.vsock_thread) - start
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        w32(&mut self.vsock, regs::STATUS, 0);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn good_header() -> VsockHeader {
    VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: 2,
        src_port: 1234,
        dst_port: 5555,
        len: 0,
        type_: uapi::VSOCK_TYPE_STREAM,
        op: uapi::OP_RW,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// Header variants the guest writes once, one page each.
const H_TOO_LONG: u64 = 0;
const H_LEN_PAST_CHAIN: u64 = 1;
const H_SPOOFED: u64 = 2;
const H_WRONG_DST: u64 = 3;
const H_OK_NO_CONN: u64 = 4;

fn write_headers(mem: &GuestMemoryMmap) {
    let mut too_long = good_header();
    too_long.len = 1 << 20;
    let mut past = good_header();
    past.len = 4096;
    let mut spoofed = good_header();
    spoofed.src_cid = 77;
    let mut wrong_dst = good_header();
    wrong_dst.dst_cid = 9;
    let ok = good_header();
    for (kind, h) in [
        (H_TOO_LONG, too_long),
        (H_LEN_PAST_CHAIN, past),
        (H_SPOOFED, spoofed),
        (H_WRONG_DST, wrong_dst),
        (H_OK_NO_CONN, ok),
    ] {
        mem.write_slice(&h.to_bytes(), GuestAddress(hdr_addr(kind)))
            .unwrap();
    }
}

fn hdr_addr(kind: u64) -> u64 {
    HDR_AREA + kind * 0x1000
}

/// Malformed tx chain number `k` (of `MALFORMED_KINDS`), stored from `slot`
/// (it uses at most `SLOTS_PER_CHAIN` table entries).
const MALFORMED_KINDS: u16 = 10;
const SLOTS_PER_CHAIN: u16 = 2;

fn post_malformed(ring: &mut Ring, slot: u16, k: u16) {
    let h = |kind| readable(hdr_addr(kind), 44);
    match k {
        // Header shorter than 44 bytes.
        0 => ring.post(slot, &[readable(hdr_addr(H_OK_NO_CONN), 10)]),
        // Device-writable buffer on the tx queue.
        1 => ring.post(slot, &[writable(hdr_addr(H_OK_NO_CONN), 44)]),
        // Buffer outside guest memory.
        2 => ring.post(slot, &[readable(MEM_SIZE + 0x1000, 44)]),
        // Buffer straddling the end of guest memory.
        3 => ring.post(slot, &[readable(MEM_SIZE - 20, 44)]),
        // Data length over the 64 KiB packet limit.
        4 => ring.post(slot, &[h(H_TOO_LONG), readable(RX_AREA, 4096)]),
        // Data length past the end of the chain.
        5 => ring.post(slot, &[h(H_LEN_PAST_CHAIN)]),
        // Spoofed source cid, wrong destination cid.
        6 => ring.post(slot, &[h(H_SPOOFED)]),
        7 => ring.post(slot, &[h(H_WRONG_DST)]),
        // A descriptor that links to itself (a loop).
        8 => ring.post_raw(
            slot,
            &[RawDescriptor::from(SplitDescriptor::new(
                hdr_addr(H_OK_NO_CONN),
                44,
                F_NEXT,
                slot,
            ))],
        ),
        // NEXT pointing outside the descriptor table.
        _ => ring.post_raw(
            slot,
            &[RawDescriptor::from(SplitDescriptor::new(
                hdr_addr(H_OK_NO_CONN),
                44,
                F_NEXT,
                QSIZE + 7,
            ))],
        ),
    }
}

/// Send `count` malformed chains in batches; every one must be returned
/// (used, length 0) and the rng must serve between batches.
fn flood(g: &mut Guest, rings: &mut [Ring], count: u32) -> Duration {
    const BATCH: u16 = QSIZE / SLOTS_PER_CHAIN;
    let start = Instant::now();
    let mut sent = 0u32;
    let mut round = 0u16;
    while sent < count {
        let n = BATCH.min((count - sent) as u16);
        let base = rings[1].used_idx();
        for i in 0..n {
            post_malformed(
                &mut rings[1],
                i * SLOTS_PER_CHAIN,
                (sent as u16 + i) % MALFORMED_KINDS,
            );
        }
        g.kick_tx();
        let want = base.wrapping_add(n);
        assert!(
            rings[1].wait_used(want, Duration::from_secs(30)),
            "vsock used {} of {n} malformed chains",
            rings[1].used_idx().wrapping_sub(base)
        );
        for j in 0..n {
            assert_eq!(rings[1].used(base.wrapping_add(j)).1, 0);
        }
        g.rng_serves(&mut rings[3], round);
        round = round.wrapping_add(1);
        sent += u32::from(n);
    }
    start.elapsed()
}

#[test]
fn malformed_vsock_packets_are_dropped_while_rng_keeps_serving() {
    let _s = serial();
    let mut g = Guest::new("drop");
    write_headers(&g.mem);
    let mem = g.mem.clone();
    let mut rings = make_rings(&mem);
    g.bring_up(&rings);
    let took = flood(&mut g, &mut rings, u32::from(MALFORMED_KINDS) * 3);
    println!("30 malformed chains in {took:?}");

    // vsock still works: a well-formed packet for no connection gets an RST.
    let base = rings[1].used_idx();
    rings[0].post(0, &[writable(RX_AREA, 4096)]);
    rings[1].post(0, &[readable(hdr_addr(H_OK_NO_CONN), 44)]);
    g.kick_tx();
    assert!(rings[1].wait_used(base.wrapping_add(1), Duration::from_secs(10)));
    assert!(
        rings[0].wait_used(1, Duration::from_secs(10)),
        "no RST for the guest"
    );
    let mut rst = [0u8; 44];
    g.mem.read_slice(&mut rst, GuestAddress(RX_AREA)).unwrap();
    let rst = cocoon_vmm::devices::virtio::vsock::parse_header(&rst).unwrap();
    assert_eq!((rst.op, rst.dst_cid), (uapi::OP_RST, GUEST_CID));

    let idle = g.idle_ticks(Duration::from_secs(1));
    assert!(idle <= 5, "vsock thread used {idle} ticks while idle");
    g.rng_serves(&mut rings[3], 200);
    assert_rate_limited();
}

#[test]
fn a_flood_of_malformed_chains_is_bounded_in_time_and_logging() {
    let _s = serial();
    let mut g = Guest::new("flood");
    write_headers(&g.mem);
    let mem = g.mem.clone();
    let mut rings = make_rings(&mem);
    g.bring_up(&rings);
    let logged_before = assert_rate_limited();
    let busy_before = cpu_ticks(g.vsock_thread);
    let count = 5000;
    let took = flood(&mut g, &mut rings, count);
    let busy = cpu_ticks(g.vsock_thread) - busy_before;
    let logged = assert_rate_limited() - logged_before;
    println!(
        "{count} malformed chains in {took:?}, vsock thread {busy} ticks, {logged} log events"
    );
    assert!(took < Duration::from_secs(60), "flood took {took:?}");
    // Every malformed chain is a possible log line; the limiter lets through
    // at most LOG_LIMIT per call site per second.
    let secs = took.as_secs() + 2;
    assert!(
        logged <= u64::from(LOG_LIMIT) * 12 * secs,
        "{logged} log events for {count} chains in {took:?}"
    );
    let idle = g.idle_ticks(Duration::from_secs(1));
    assert!(idle <= 5, "vsock thread used {idle} ticks while idle");
}

#[test]
fn a_corrupt_avail_ring_breaks_only_vsock_until_reset() {
    let _s = serial();
    let mut g = Guest::new("broken");
    write_headers(&g.mem);
    let mem = g.mem.clone();
    let mut rings = make_rings(&mem);
    g.bring_up(&rings);

    // avail.idx jumps 1000 entries ahead of a 256-entry queue.
    let base = rings[1].used_idx();
    rings[1].avail = rings[1].avail.wrapping_add(1000);
    rings[1].vq.avail().idx().store(rings[1].avail);
    for _ in 0..100 {
        g.kick_tx();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rings[1].used_idx(), base, "a broken queue was used");
    let idle = g.idle_ticks(Duration::from_secs(1));
    assert!(idle <= 5, "broken vsock thread used {idle} ticks");
    for round in 0..50 {
        g.rng_serves(&mut rings[3], round);
    }
    assert_ne!(g.vsock.status() & status::FAILED, status::FAILED);
    assert_rate_limited();

    // The driver resets vsock with fresh rings; it serves again.
    drop(rings);
    let mem = g.mem.clone();
    let mut rings = make_rings(&mem);
    g.bring_up(&rings);
    rings[0].post(0, &[writable(RX_AREA, 4096)]);
    rings[1].post(0, &[readable(hdr_addr(H_OK_NO_CONN), 44)]);
    g.kick_tx();
    assert!(
        rings[1].wait_used(1, Duration::from_secs(10)),
        "vsock did not recover"
    );
    assert!(
        rings[0].wait_used(1, Duration::from_secs(10)),
        "no RST after reset"
    );
}
