//! The bounded buffer between a connection's guest data and its host
//! socket: it never holds more than its capacity.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};

/// A byte FIFO of at most `cap` bytes, allocated as it fills.
#[derive(Debug)]
pub struct TxBuf {
    data: VecDeque<u8>,
    cap: usize,
}

impl TxBuf {
    /// An empty buffer of capacity `cap`.
    pub fn new(cap: usize) -> Self {
        TxBuf {
            data: VecDeque::new(),
            cap,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Free room.
    pub fn room(&self) -> usize {
        self.cap - self.data.len()
    }

    /// Append `bytes`; false (and nothing appended) if they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.room() {
            return false;
        }
        self.data.extend(bytes);
        true
    }

    /// Write as much as `w` takes; returns the bytes written. `WouldBlock`
    /// is not an error (0 or a partial count is returned).
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> std::io::Result<usize> {
        let mut total = 0;
        while !self.data.is_empty() {
            let (front, _) = self.data.as_slices();
            match w.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.data.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.data.is_empty() {
            // Give the memory back once drained.
            self.data = VecDeque::new();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_flushes() {
        let mut b = TxBuf::new(8);
        assert!(b.push(b"hello"));
        assert!(!b.push(b"world"));
        assert_eq!(b.room(), 3);
        let mut out = Vec::new();
        assert_eq!(b.flush_to(&mut out).unwrap(), 5);
        assert_eq!(out, b"hello");
        assert!(b.is_empty());
    }
}
