//! Fuzzes the virtio-blk request parser with guest-controlled bytes: the
//! 16-byte header and the lengths of the readable and writable streams.
#![no_main]

use cocoon_vmm::devices::virtio::block::request::{parse, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    if data.len() < 16 {
        return;
    }
    let readable = u64::from_le_bytes(data[0..8].try_into().unwrap());
    let writable = u64::from_le_bytes(data[8..16].try_into().unwrap());
    if let Ok(req) = parse_request(&data[16..], readable, writable) {
        // Whatever the guest sends, a parsed request never claims more data
        // than its buffers hold.
        let _ = req.offset();
    }
});
