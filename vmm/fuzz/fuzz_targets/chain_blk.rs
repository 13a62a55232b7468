//! virtio-blk queue processing over guest memory the fuzzer writes: the
//! descriptor table, the avail ring and the data region (request headers,
//! data, status bytes) come from the input, then the device's queue
//! handler, backed by a 32 KiB in-memory file, serves the queue twice.
//!
//! Input: `[queue size selector] [flags: bit 0 read-only, bit 1 serial]
//! [table + avail ring] [data...]`.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cocoon_vmm::devices::virtio::block::{Block, BlockConfig};
use cocoon_vmm::devices::virtio::event_loop::{Event, Inline};
use cocoon_vmm::devices::virtio::VirtioInterrupt;
use cocoon_vmm_fuzz::{fill_queues, guest_memory, memfd_path, queue_size, Input};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

/// 64 sectors.
const DISK_LEN: u64 = 64 * 512;

fn disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| memfd_path("fuzz-blk", DISK_LEN))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = queue_size(input.u8());
    let flags = input.u8();
    let mem = guest_memory();
    let queues = fill_queues(&mem, &mut input, 1, size);
    let mut config = BlockConfig::new(disk());
    config.read_only = flags & 1 != 0;
    if flags & 2 != 0 {
        config.serial = Some("fuzz-serial-0123456789".into());
    }
    let blk = Block::new(&config).expect("open the fuzz disk");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("eventfd")));
    let [queue]: [_; 1] = queues.try_into().expect("one queue");
    // The device thread's passes, run inline (the event loop's `Inline`).
    let mut d = Inline::new(blk.handler(mem, queue), interrupt, 1).expect("inline loop");
    d.event(Event::Queue(0));
    d.event(Event::Queue(0));
});
