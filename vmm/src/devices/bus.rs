//! Address-range buses for port I/O and MMIO.
//!
//! Each device owns a half-open range; overlapping ranges are refused.
//! Accesses that hit no device are reported to the caller (the vCPU loop
//! returns all-ones for reads and drops writes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `base + offset`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A shareable bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors while inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Zero-length range.
    #[error("device range at {base:#x} has zero length")]
    ZeroLength {
        /// Base address.
        base: u64,
    },
    /// Range wraps around the address space.
    #[error("device range {base:#x}+{len:#x} overflows the address space")]
    Overflow {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// Range overlaps a registered device.
    #[error("device range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
        /// Base of the device already there.
        other: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping device ranges.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `device` for `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        // The closest device starting at or below the new range's last byte.
        if let Some((&other, entry)) = self.devices.range(..end).next_back() {
            if other + entry.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device.
        if offset.checked_add(size as u64)? <= entry.len {
            Some((base, entry))
        } else {
            None
        }
    }

    /// Dispatch a read; false when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, entry)) => {
                let mut dev = entry.device.lock().unwrap_or_else(|e| e.into_inner());
                dev.read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, entry)) => {
                let mut dev = entry.device.lock().unwrap_or_else(|e| e.into_inner());
                dev.write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last_write = Some((base, offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x108, 4),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x0, 0x1000),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(dev(), 0x50, 0),
            Err(BusError::ZeroLength { base: 0x50 })
        );
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::Overflow { .. })
        ));
        // Adjacent ranges are fine.
        bus.insert(dev(), 0x110, 0x10).unwrap();
        bus.insert(dev(), 0xf0, 0x10).unwrap();
    }

    #[test]
    fn dispatches_with_offsets() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data[0], 5);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(d.lock().unwrap().last_write, Some((0x3f8, 1, vec![7])));
    }

    #[test]
    fn misses_are_reported() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x1000, 0x10).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x1010, &mut data));
        // Straddling the end of a device is a miss.
        assert!(!bus.read(0x100e, &mut data));
        assert!(!bus.write(0x2000, &[1]));
    }
}
