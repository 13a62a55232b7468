//! virtio-fs request framing (`fs/request.rs`): the FUSE request header
//! parser on raw bytes, and `fail_chain`, which gathers a request header
//! from a chain's readable buffers and scatters the EIO reply over its
//! writable ones, on a descriptor list and guest memory from the input.
//!
//! Input: `[flags: bit 0 hiprio] [descriptor count] [count x (le16 addr,
//! le16 len, u8 flags)] [guest memory from 0...]`.
#![no_main]

use cocoon_vmm::devices::virtio::fs::request::{
    eio_reply, fail_chain, parse_fuse_in_header, FUSE_OUT_HEADER_LEN,
};
use cocoon_vmm_fuzz::{guest_memory, Input, MEM_SIZE};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_fuse_in_header(data) {
        let reply = eio_reply(h.unique);
        assert_eq!(reply.len(), FUSE_OUT_HEADER_LEN);
    }
    let mut input = Input::new(data);
    let hiprio = input.u8() & 1 != 0;
    let count = input.u8() % 32;
    let descs: Vec<Descriptor> = (0..count)
        .map(|_| {
            // Addresses past the end of the 64 KiB memory reach the
            // out-of-memory paths; lengths up to 64 KiB cross it.
            let addr = u64::from(input.u16()) * 2;
            let len = u32::from(input.u16());
            let flags = u16::from(input.u8() & 3);
            Descriptor::new(addr, len, flags, 0)
        })
        .collect();
    let mem = guest_memory();
    let image = input.rest();
    mem.write_slice(&image[..image.len().min(MEM_SIZE)], GuestAddress(0))
        .expect("guest memory image");
    if let Ok(n) = fail_chain(&mem, &descs, hiprio) {
        assert!(
            n == 0 || n as usize == FUSE_OUT_HEADER_LEN,
            "reply of {n} bytes"
        );
    }
});
