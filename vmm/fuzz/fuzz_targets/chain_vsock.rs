//! virtio-vsock rx and tx processing over guest memory the fuzzer writes:
//! the rx, tx and event queues' descriptor tables and avail rings and the
//! data region (packet headers and payloads) come from the input; the
//! backend records the guest's packets and has up to three packets of
//! fuzzer-chosen lengths for the guest, or refuses packets as busy.
//!
//! Input: `[queue size selector] [flags: bits 0-1 packets for the guest,
//! bit 2 busy backend] [3 x le16 payload length] [rx, tx, event table +
//! avail ring] [data...]`.
#![no_main]

use std::sync::Arc;

use cocoon_vmm::devices::virtio::vsock::test_utils::{TestBackend, TEST_CID};
use cocoon_vmm::devices::virtio::vsock::uapi::{OP_RW, VSOCK_TYPE_STREAM};
use cocoon_vmm::devices::virtio::vsock::{VsockCore, VsockHeader, MAX_PKT_DATA, VSOCK_HOST_CID};
use cocoon_vmm::devices::virtio::VirtioInterrupt;
use cocoon_vmm_fuzz::{fill_queues, guest_memory, queue_size, Input};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = queue_size(input.u8());
    let flags = input.u8();
    let lens: Vec<usize> = (0..3).map(|_| usize::from(input.u16())).collect();
    let mem = guest_memory();
    let queues = fill_queues(&mem, &mut input, 3, size);
    let mut backend = TestBackend::default();
    backend.busy = flags & 4 != 0;
    for (i, len) in lens.iter().take(usize::from(flags & 3)).enumerate() {
        let hdr = VsockHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: TEST_CID,
            src_port: 1024,
            dst_port: 5000 + i as u32,
            type_: VSOCK_TYPE_STREAM,
            op: OP_RW,
            buf_alloc: 65536,
            ..Default::default()
        };
        backend
            .to_guest
            .push_back((hdr, vec![i as u8; len % (MAX_PKT_DATA + 1)]));
    }
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("eventfd")));
    let mut core = VsockCore::new(mem, queues, interrupt, backend, TEST_CID);
    core.process_all();
    // A kick after the backend drained (as the device thread would do).
    core.backend.busy = false;
    core.process_all();
    for (hdr, data) in &core.backend.sent {
        // What reaches the backend passed the guest checks.
        assert_eq!(hdr.src_cid, TEST_CID);
        assert_eq!(hdr.dst_cid, VSOCK_HOST_CID);
        assert_eq!(data.len(), hdr.len as usize);
    }
});
