//! A fake TAP and frame builders for the virtio-net tests (and, later, a
//! fuzz target of the rx/tx paths).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use super::event_handler::{FrameIo, NET_HDR_LEN};

/// What the fake TAP holds: frames for the guest, frames from the guest.
#[derive(Debug, Default)]
pub struct FakeWire {
    /// Frames the guest will receive, in order.
    pub to_guest: VecDeque<Vec<u8>>,
    /// Frames the guest sent.
    pub from_guest: Vec<Vec<u8>>,
    /// Make reads fail with this error kind (for error-path tests).
    pub read_error: Option<io::ErrorKind>,
}

/// A `FrameIo` over a shared `FakeWire`.
#[derive(Debug, Clone, Default)]
pub struct FakeTap(pub Arc<Mutex<FakeWire>>);

impl FakeTap {
    /// Queue a frame for the guest.
    pub fn push(&self, frame: &[u8]) {
        self.0.lock().unwrap().to_guest.push_back(frame.to_vec());
    }

    /// Frames the guest sent so far.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().from_guest.clone()
    }

    /// Frames not yet delivered to the guest.
    pub fn waiting(&self) -> usize {
        self.0.lock().unwrap().to_guest.len()
    }
}

impl FrameIo for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.0.lock().unwrap();
        if let Some(kind) = w.read_error {
            return Err(io::Error::from(kind));
        }
        let Some(f) = w.to_guest.pop_front() else {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        // Like a TAP: a frame longer than the buffer is truncated.
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().from_guest.push(frame.to_vec());
        Ok(frame.len())
    }
}

/// An Ethernet frame of `len` bytes: broadcast destination, our source,
/// then bytes counting up from `seed`.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    for b in f.iter_mut().take(6) {
        *b = 0xff;
    }
    f
}

/// A zero `virtio_net_hdr_v1` followed by `frame` (what a driver sends).
pub fn with_header(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; NET_HDR_LEN];
    v.extend_from_slice(frame);
    v
}
