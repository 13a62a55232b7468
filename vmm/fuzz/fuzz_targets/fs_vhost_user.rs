//! What the VMM decodes from a vhost-user backend (virtiofsd): the replies
//! to the handshake (features, protocol features, queue count), the
//! REPLY_ACKs of the activation (features, memory table, vrings) and the
//! reset (vring enable, GET_VRING_BASE, RESET_DEVICE), through the `vhost`
//! crate's frontend and `fs::backend::Connection`, and the `Fs` device built
//! over a negotiated connection. The backend's side of the socket is the
//! input, written up front and then closed for writing, so every read ends.
//!
//! Input: `[flags: bit 0 three vrings instead of two, bit 1 EVENT_IDX
//! acked, bits 2-3 which queues are ready] [backend reply stream...]`.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use cocoon_vmm::devices::virtio::fs::backend::Connection;
use cocoon_vmm::devices::virtio::fs::{Fs, FsConfig};
use cocoon_vmm::devices::virtio::VirtioDevice;
use cocoon_vmm::vstate::memory::{create_guest_ram, GuestRam};
use cocoon_vmm_fuzz::{queue_at, Input, QUEUE_SLOT};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

/// Reply bytes used per input: well under a socket buffer, so writing
/// them up front never blocks.
const MAX_REPLY: usize = 32 * 1024;

fn ram() -> &'static GuestRam {
    static RAM: OnceLock<GuestRam> = OnceLock::new();
    RAM.get_or_init(|| create_guest_ram(1 << 20).expect("memfd guest RAM"))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let replies = input.rest();
    let total_queues = if flags & 1 != 0 { 3 } else { 2 };
    let (ours, mut theirs) = UnixStream::pair().expect("socket pair");
    theirs
        .write_all(&replies[..replies.len().min(MAX_REPLY)])
        .expect("backend replies");
    // EOF after the replies; our requests still fit in the socket buffer.
    theirs
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let Ok(mut conn) =
        Connection::handshake_with_timeout(ours, total_queues, Duration::from_secs(5))
    else {
        return;
    };
    let n = *conn.negotiated();
    assert_eq!(
        n.guest_features & !cocoon_vmm::devices::virtio::fs::backend::GUEST_FEATURES,
        0
    );
    let ram = ram();
    let acked = if flags & 2 != 0 { n.guest_features } else { 0 };
    let queues: Vec<_> = (0..total_queues)
        .map(|i| {
            let mut q = queue_at(&ram.mem, i as u64 * QUEUE_SLOT, 16);
            if flags >> (2 + i) & 1 == 0 && i < 2 {
                virtio_queue::QueueT::set_ready(&mut q, false);
            }
            q
        })
        .collect();
    let kicks: Vec<EventFd> = (0..total_queues)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("kick"))
        .collect();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("call");
    if conn.set_features_and_memory(acked, &ram.mem).is_ok() {
        if let Ok(started) = conn.start_vrings(&ram.mem, &queues, &kicks, &irq) {
            assert!(started.iter().all(|&i| i < total_queues));
            let _ = conn.stop_vrings(&started);
        }
    }
    // The device over what was negotiated: features and config space.
    let mut config = FsConfig::new("fuzz", "/nonexistent.sock").expect("fs config");
    config.request_queues = (total_queues - 1) as u16;
    config.queue_size = 16;
    if let Ok(fs) = Fs::with_connection(config, conn) {
        let _ = fs.features();
        let mut b = [0u8; 8];
        fs.read_config(0, &mut b);
    }
    drop(theirs);
});
