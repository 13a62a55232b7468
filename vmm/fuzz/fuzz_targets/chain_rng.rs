//! virtio-rng queue processing over guest memory the fuzzer writes: the
//! descriptor table, the avail ring and the data region come from the
//! input (layout in `cocoon_vmm_fuzz::fill_queues`), then the device is
//! activated and notified twice (the second time after a failure, it must
//! stay quiet until reset).
//!
//! Input: `[queue size selector] [table + avail ring] [data...]`.
#![no_main]

use std::sync::Arc;

use cocoon_vmm::devices::virtio::rng::Rng;
use cocoon_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
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
    let mut rng = Rng::new();
    rng.activate(mem, queues, interrupt).expect("activate");
    rng.queue_notify(0);
    rng.queue_notify(0);
    rng.reset();
});
