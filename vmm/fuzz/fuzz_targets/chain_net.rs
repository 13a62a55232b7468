//! virtio-net rx and tx processing over guest memory the fuzzer writes:
//! the rx and tx queues' descriptor tables and avail rings and the data
//! region come from the input; a fake TAP holds up to three frames of
//! fuzzer-chosen lengths for the guest and takes what the guest sends.
//!
//! Input: `[queue size selector] [frame count] [3 x le16 frame length]
//! [rx table + avail ring] [tx table + avail ring] [data...]`.
#![no_main]

use std::sync::Arc;

use cocoon_vmm::devices::virtio::net::test_utils::{frame, FakeTap};
use cocoon_vmm::devices::virtio::net::{NetQueues, MAX_FRAME_LEN};
use cocoon_vmm::devices::virtio::VirtioInterrupt;
use cocoon_vmm_fuzz::{fill_queues, guest_memory, queue_size, Input};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = queue_size(input.u8());
    let frames = input.u8() % 4;
    let lens: Vec<usize> = (0..3).map(|_| usize::from(input.u16())).collect();
    let mem = guest_memory();
    let mut queues = fill_queues(&mem, &mut input, 2, size);
    let txq = queues.pop().expect("tx queue");
    let rxq = queues.pop().expect("rx queue");
    let tap = FakeTap::default();
    for (i, len) in lens.iter().take(usize::from(frames)).enumerate() {
        // Longer than a frame may be: the TAP truncates like the real one.
        tap.push(&frame(len % (MAX_FRAME_LEN + 64), i as u8));
    }
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("eventfd")));
    let mut q = NetQueues::new(tap.clone(), mem, rxq, txq, interrupt);
    let tx = q.process_tx();
    let rx = q.process_rx();
    for sent in tap.sent() {
        assert!(sent.len() <= MAX_FRAME_LEN, "tx frame over the limit");
    }
    if tx.is_ok() && rx.is_ok() {
        // A second pass as after the next kick.
        let _ = q.process_tx();
        let _ = q.process_rx();
    }
});
