//! Tiny hand-assembled guests run on this machine's /dev/kvm through the
//! public API. They work on PVM too (a few dozen kernel-mode instructions
//! each), so they need no hardware virtualization.
//!
//! Halt: with the in-kernel irqchip (the default) `HLT` is handled inside
//! KVM and never reaches us, so `halt_exits_without_irqchip` builds the VM
//! with `irqchip: false`, where `HLT` is a `KVM_EXIT_HLT`
//! (`ExitReason::Halted`); `halt_with_irqchip_stays_in_kernel` shows the
//! other side: `cli; hlt` sleeps until `run_for` times out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_vmm::devices::bus::BusDevice;
use cocoon_vmm::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt};
use cocoon_vmm::{EntryMode, ExitReason, SerialOutput, SharedBuffer, VmConfig, Vmm, VmmBuilder};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Real-mode and long-mode payloads are loaded here (above the page tables).
const LOAD_ADDR: u64 = 0x1_0000;
/// Generous: a hang fails the test instead of blocking it.
const TIMEOUT: Duration = Duration::from_secs(30);

fn config(code: Vec<u8>, mode: EntryMode) -> (VmConfig, SharedBuffer) {
    let console = SharedBuffer::new();
    let mut cfg = VmConfig::payload(code, LOAD_ADDR, mode);
    cfg.serial = SerialOutput::Buffer(console.clone());
    (cfg, console)
}

fn run(cfg: VmConfig) -> ExitReason {
    Vmm::new(cfg)
        .expect("build vm")
        .run_for(TIMEOUT)
        .expect("run vm")
}

/// `out 0x64, 0xfe`: ask the i8042 for a reset.
const RESET: [u8; 4] = [
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al
];

/// Real mode: print `msg` on COM1 with `rep outsb`, then reset.
fn real_mode_print_and_reset(msg: &[u8]) -> Vec<u8> {
    const HEADER: u16 = 19;
    let len = u16::try_from(msg.len()).unwrap();
    let mut code = vec![
        0x0e, // push cs
        0x1f, // pop ds            ; DS = CS so SI addresses the payload
        0xbe,
        HEADER as u8,
        (HEADER >> 8) as u8, // mov si, msg
        0xb9,
        len as u8,
        (len >> 8) as u8, // mov cx, len
        0xba,
        0xf8,
        0x03, // mov dx, 0x3f8
        0xfc, // cld
        0xf3,
        0x6e, // rep outsb
    ];
    code.extend_from_slice(&RESET);
    code.push(0xf4); // hlt (not reached)
    assert_eq!(code.len(), usize::from(HEADER));
    code.extend_from_slice(msg);
    code
}

#[test]
fn serial_output_then_reset() {
    let mut code = vec![0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &c in b"hello" {
        code.extend_from_slice(&[0xb0, c]); // mov al, c
        code.push(0xee); // out dx, al
    }
    code.extend_from_slice(&RESET);
    code.push(0xf4); // hlt (not reached)
    let (cfg, console) = config(code, EntryMode::RealMode);
    assert_eq!(run(cfg), ExitReason::Reset);
    assert_eq!(console.contents(), b"hello");
    assert_eq!(ExitReason::Reset.exit_code(), 0);
}

#[test]
fn unhandled_port_reads_all_ones() {
    let mut code = vec![
        0xba, 0x34, 0x12, // mov dx, 0x1234   ; nothing lives here
        0xec, // in al, dx         ; -> 0xff
        0xee, // out dx, al        ; dropped
        0xe4, 0x80, // in al, 0x80 ; POST port, also unhandled
        0xe6, 0x80, // out 0x80, al
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al        ; echo what we read
    ];
    code.extend_from_slice(&RESET);
    let (cfg, console) = config(code, EntryMode::RealMode);
    assert_eq!(run(cfg), ExitReason::Reset);
    assert_eq!(console.contents(), [0xff]);
}

#[test]
fn halt_exits_without_irqchip() {
    let (mut cfg, _) = config(vec![0xf4], EntryMode::RealMode); // hlt
    cfg.irqchip = false;
    assert_eq!(run(cfg), ExitReason::Halted { vcpu: 0 });
}

#[test]
fn halt_with_irqchip_stays_in_kernel() {
    let (cfg, _) = config(vec![0xfa, 0xf4], EntryMode::RealMode); // cli; hlt
    let reason = Vmm::new(cfg)
        .unwrap()
        .run_for(Duration::from_millis(300))
        .unwrap();
    assert_eq!(reason, ExitReason::TimedOut);
}

#[test]
fn long_mode_output_and_reset() {
    let mut code = vec![
        0x48, 0x89, 0xe0, // mov rax, rsp   ; 64-bit instruction: we are in long mode
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0xb0, b'6', // mov al, '6'
        0xee, // out dx, al
        0xb0, b'4', // mov al, '4'
        0xee, // out dx, al
    ];
    code.extend_from_slice(&RESET);
    let (cfg, console) = config(code, EntryMode::LongMode);
    assert_eq!(run(cfg), ExitReason::Reset);
    assert_eq!(console.contents(), b"64");
}

#[test]
fn panic_line_then_reset_is_a_guest_panic() {
    let code = real_mode_print_and_reset(b"[ 0.1] Kernel panic - not syncing: test\n");
    let (cfg, console) = config(code, EntryMode::RealMode);
    let reason = run(cfg);
    assert_eq!(reason, ExitReason::GuestPanic);
    assert_eq!(reason.exit_code(), 2);
    assert!(console.contents().ends_with(b"not syncing: test\n"));
}

#[test]
fn triple_fault_is_reported() {
    // ud2 with an empty IDT: #UD -> #GP -> #DF -> shutdown.
    let (cfg, _) = config(vec![0x0f, 0x0b], EntryMode::LongMode);
    let reason = run(cfg);
    assert_eq!(reason, ExitReason::TripleFault);
    assert_eq!(reason.exit_code(), 3);
}

#[test]
fn secondary_vcpus_wait_for_sipi_and_stop() {
    // The boot vCPU prints and resets; vCPU 1 sits in KVM_RUN waiting for
    // INIT/SIPI and must be kicked out when the VM stops.
    let (mut cfg, console) = config(real_mode_print_and_reset(b"bsp"), EntryMode::RealMode);
    cfg.vcpus = 2;
    assert_eq!(run(cfg), ExitReason::Reset);
    assert_eq!(console.contents(), b"bsp");
}

/// Records MMIO writes and answers reads with a fixed pattern.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0x41 + offset as u8 + i as u8; // 'A', 'B', ...
        }
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_read_and_write_exits() {
    let code = vec![
        0xbb, 0x00, 0x00, 0x00, 0x20, // mov ebx, 0x20000000   ; test device (no RAM there)
        0xc7, 0x03, 0x0d, 0xf0, 0xfe, 0xca, // mov dword [rbx], 0xcafef00d
        0x8b, 0x43, 0x04, // mov eax, [rbx+4]       ; "EFGH"
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0xee, // out dx, al
        0xc1, 0xe8, 0x08, // shr eax, 8
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
    ];
    let (cfg, console) = config(code, EntryMode::LongMode);
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let mut builder = VmmBuilder::new(cfg).unwrap();
    builder
        .add_mmio_device(recorder.clone(), 0x2000_0000, 0x1000)
        .unwrap();
    let reason = builder.build().unwrap().run_for(TIMEOUT).unwrap();
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(console.contents(), b"EF");
    assert_eq!(
        recorder.lock().unwrap().writes,
        vec![(0, 0xcafe_f00du32.to_le_bytes().to_vec())]
    );
}

struct NullDevice;

impl VirtioDevice for NullDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _: GuestMemoryMmap,
        _: Vec<Queue>,
        _: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
    fn queue_events(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        &[]
    }
}

#[test]
fn virtio_mmio_magic_readable_from_the_guest() {
    // The boot page tables map only the first GiB, so the payload maps the
    // 2 MiB page holding the first virtio slot (0xd0000000) itself.
    let mut code = vec![
        0xb8, 0x83, 0x00, 0x00, 0xd0, // mov eax, 0xd0000083         ; 2 MiB page, present, rw
        0x48, 0x89, 0x04, 0x25, 0x00, 0xc4, 0x00,
        0x00, // mov [0xc400], rax ; PDE 128 of a new table at 0xc000
        0xb8, 0x03, 0xc0, 0x00, 0x00, // mov eax, 0xc003
        0x48, 0x89, 0x04, 0x25, 0x18, 0xa0, 0x00,
        0x00, // mov [0xa018], rax ; PDPTE 3 -> 0xc000
        0xbb, 0x00, 0x00, 0x00, 0xd0, // mov ebx, 0xd0000000
        0x8b, 0x03, // mov eax, [rbx]                          ; MagicValue
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
    ];
    for i in 0..4 {
        code.push(0xee); // out dx, al
        if i < 3 {
            code.extend_from_slice(&[0xc1, 0xe8, 0x08]); // shr eax, 8
        }
    }
    code.extend_from_slice(&RESET);
    let (cfg, console) = config(code, EntryMode::LongMode);
    let mut builder = VmmBuilder::new(cfg).unwrap();
    let slot = builder.add_virtio_device(Box::new(NullDevice)).unwrap();
    assert_eq!((slot.base, slot.irq), (0xd000_0000, 5));
    let reason = builder.build().unwrap().run_for(TIMEOUT).unwrap();
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(console.contents(), b"virt");
}

#[test]
fn memfd_is_exposed() {
    use std::os::unix::fs::FileExt;
    let (cfg, _) = config(vec![0xf4], EntryMode::RealMode);
    let vmm = Vmm::new(cfg).unwrap();
    let mut b = [0u8; 1];
    vmm.memfd().read_exact_at(&mut b, LOAD_ADDR).unwrap();
    assert_eq!(b[0], 0xf4);
    assert_eq!(vmm.memfd().metadata().unwrap().len(), 16 << 20);
}
