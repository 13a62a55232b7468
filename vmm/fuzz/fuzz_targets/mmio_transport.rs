//! The virtio-mmio register interface (`MmioTransport`) as a hostile guest
//! drives it: a sequence of register reads and writes, device config
//! accesses of any size and alignment, and writes to guest memory (to lay
//! out descriptor tables, rings and buffers between register accesses),
//! against a real device: virtio-rng, virtio-blk on a 32 KiB in-memory
//! file, or virtio-vsock with a recording backend (whose device thread is
//! started at DRIVER_OK and stopped and joined by the reset at the end).
//!
//! Input: `[device: 0 rng, 1 blk, 2 vsock] [op...]`, each op one of
//! - `0, u8 reg, le32 value`: write register `reg * 4`
//! - `1, u8 reg`: read register `reg * 4`
//! - `2, u8 offset, u8 size_sel, u8 write, le64 value`: access at
//!   `offset` (any, incl. misaligned registers and config space) of
//!   size 1, 2, 3, 4 or 8
//! - `3, le16 addr, u8 len, len bytes`: write guest memory.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cocoon_vmm::devices::bus::BusDevice;
use cocoon_vmm::devices::virtio::block::{Block, BlockConfig};
use cocoon_vmm::devices::virtio::mmio::regs;
use cocoon_vmm::devices::virtio::rng::Rng;
use cocoon_vmm::devices::virtio::vsock::test_utils::{TestBackend, TEST_CID};
use cocoon_vmm::devices::virtio::vsock::Vsock;
use cocoon_vmm::devices::virtio::{MmioTransport, VirtioDevice, VirtioInterrupt};
use cocoon_vmm_fuzz::{guest_memory, memfd_path, Input};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Register accesses per input (each costs at most a queue pass).
const MAX_OPS: usize = 512;

fn disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| memfd_path("fuzz-mmio-blk", 64 * 512))
}

fn device(selector: u8) -> Box<dyn VirtioDevice> {
    match selector % 3 {
        0 => Box::new(Rng::new().expect("rng eventfd")),
        1 => Box::new(Block::new(&BlockConfig::new(disk())).expect("open the fuzz disk")),
        _ => Box::new(Vsock::new(TEST_CID, TestBackend::default()).expect("vsock device")),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = guest_memory();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().expect("eventfd")));
    let mut mmio = MmioTransport::new(device(input.u8()), mem.clone(), interrupt);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 4 {
            0 => {
                let offset = u64::from(input.u8()) * 4;
                let value = input.u32();
                mmio.write(0, offset, &value.to_le_bytes());
            }
            1 => {
                let offset = u64::from(input.u8()) * 4;
                let mut b = [0u8; 4];
                mmio.read(0, offset, &mut b);
                if offset == regs::MAGIC_VALUE {
                    assert_eq!(u32::from_le_bytes(b), 0x7472_6976);
                }
            }
            2 => {
                let offset = u64::from(input.u8());
                let size = [1, 2, 3, 4, 8][usize::from(input.u8() % 5)];
                let write = input.u8() & 1 != 0;
                let value = input.u64().to_le_bytes();
                // Config space starts at 0x100: half the offsets land there.
                let offset = if offset & 0x80 != 0 {
                    regs::CONFIG + (offset & 0x7f)
                } else {
                    offset
                };
                if write {
                    mmio.write(0, offset, &value[..size]);
                } else {
                    let mut b = [0u8; 8];
                    mmio.read(0, offset, &mut b[..size]);
                }
            }
            _ => {
                let addr = u64::from(input.u16());
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                // Writes past the end are cut (the guest cannot write there).
                let room = (cocoon_vmm_fuzz::MEM_SIZE as u64).saturating_sub(addr) as usize;
                let _ = mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(addr));
            }
        }
    }
    // A reset stops the device (and joins a device thread); dropping the
    // transport does too, but the reset path is what a guest reaches.
    mmio.write(0, regs::STATUS, &0u32.to_le_bytes());
    assert_eq!(mmio.status(), 0);
    assert!(!mmio.is_activated());
});
