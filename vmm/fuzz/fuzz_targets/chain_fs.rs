//! The virtio-fs queues as the VMM serves them once virtiofsd is gone
//! (`fs::request::fail_pending`, run by the device's worker): every guest
//! FUSE request is answered with EIO. The hiprio and request queues'
//! descriptor tables and avail rings, the used rings' index (where a dead
//! backend left it) and the data region come from the input.
//!
//! Input: `[queue size selector] [flags: bit 0 resync to the used index,
//! bit 1 EVENT_IDX] [2 x le16 used index] [hiprio, request table + avail
//! ring] [data...]`.
#![no_main]

use cocoon_vmm::devices::virtio::fs::request::fail_pending;
use cocoon_vmm_fuzz::{fill_queues, guest_memory, queue_size, Input, QUEUE_SLOT, USED_OFFSET};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = queue_size(input.u8());
    let flags = input.u8();
    let used: Vec<u16> = (0..2).map(|_| input.u16()).collect();
    let mem = guest_memory();
    let mut queues = fill_queues(&mem, &mut input, 2, size);
    for (i, (q, idx)) in queues.iter_mut().zip(&used).enumerate() {
        let used_idx = GuestAddress(i as u64 * QUEUE_SLOT + USED_OFFSET + 2);
        mem.write_obj(*idx, used_idx).expect("used idx");
        q.set_event_idx(flags & 2 != 0);
    }
    for (i, q) in queues.iter_mut().enumerate() {
        let resync = flags & 1 != 0;
        let first = fail_pending(q, &mem, i == 0, resync);
        // After the first pass the worker serves kicks without resync.
        let second = fail_pending(q, &mem, i == 0, false);
        for d in [first, second] {
            assert!(d.completed + d.malformed <= usize::from(size));
        }
    }
});
