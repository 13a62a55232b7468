//! virtio-rng queue processing over guest memory the fuzzer writes: the
//! descriptor table, the avail ring and the data region come from the
//! input (layout in `cocoon_vmm_fuzz::fill_queues`), then the device's
//! queue handler serves two notifies (the second time after a failure it
//! must stay quiet).
//!
//! Input: `[queue size selector] [table + avail ring] [data...]`.
#![no_main]

use std::sync::Arc;

use cocoon_vmm::devices::virtio::event_loop::{Event, Inline};
use cocoon_vmm::devices::virtio::rng::RngHandler;
use cocoon_vmm::devices::virtio::VirtioInterrupt;
use cocoon_vmm_fuzz::{fill_queues, guest_memory, queue_size, Input};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = queue_size(input.u8());
    let mem = guest_memory();
    let queues = fill_queues(&mem, &mut input, 1, size);
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("eventfd")));
    let [queue]: [_; 1] = queues.try_into().expect("one queue");
    // The device thread's passes, run inline (the event loop's `Inline`).
    let mut d = Inline::new(RngHandler::new(mem, queue), interrupt, 1).expect("inline loop");
    d.event(Event::Queue(0));
    d.event(Event::Queue(0));
});
