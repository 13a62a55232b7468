//! Fuzzes the vsock packet header parser and the checks applied to every
//! header a guest puts on the tx queue.
#![no_main]

use cocoon_vmm::devices::virtio::vsock::packet::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(data) {
        // The guest's CID in these runs; any header must be judged without
        // panicking, whatever its cids, ports, type, op or length.
        let _ = h.check_from_guest(3);
    }
});
