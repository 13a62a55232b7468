//! Snapshot and restore of a running VM, on this machine's /dev/kvm with a
//! small long-mode payload (see kvm_payloads.rs for why payloads run on
//! PVM too).
//!
//! The payload computes in two phases. Phase 1 runs an LCG in `rbx`,
//! stores the result in guest memory, prints `1` and spins on a "go" port.
//! A snapshot is taken while it spins (a port read is pending then, which
//! the pause must complete first). Phase 2 adds the stored value to `rbx`,
//! runs the LCG again and prints the 8 bytes of `rbx`: right only if the
//! registers, the memory and the instruction pointer all came back.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_vmm::devices::bus::BusDevice;
use cocoon_vmm::snapshot::{SnapshotError, MEMORY_FILE, STATE_FILE};
use cocoon_vmm::{
    EntryMode, ExitReason, LoadedSnapshot, SerialOutput, SharedBuffer, VmConfig, VmmBuilder,
    VmmError,
};

const LOAD_ADDR: u64 = 0x1_0000;
const GO_PORT: u16 = 0x500;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Answers reads of the go port with its flag.
struct GoPort(Arc<AtomicU8>);

impl BusDevice for GoPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(self.0.load(Ordering::SeqCst));
    }
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

fn lcg_loop(code: &mut Vec<u8>) {
    code.extend_from_slice(&[0x48, 0xb8]); // mov rax, imm64
    code.extend_from_slice(&0x5851_f42d_4c95_7f2du64.to_le_bytes());
    code.push(0xb9); // mov ecx, imm32
    code.extend_from_slice(&3000u32.to_le_bytes());
    code.extend_from_slice(&[
        0x48, 0x0f, 0xaf, 0xd8, // loop: imul rbx, rax
        0x48, 0x01, 0xcb, // add rbx, rcx
        0xff, 0xc9, // dec ecx
        0x75, 0xf5, // jnz loop
    ]);
}

fn payload() -> Vec<u8> {
    let mut code = vec![0x48, 0xbb]; // mov rbx, imm64
    code.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    lcg_loop(&mut code);
    code.extend_from_slice(&[
        0x48, 0x89, 0x1c, 0x25, 0x00, 0x00, 0x20, 0x00, // mov [0x200000], rbx
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'1', // mov al, '1'
        0xee, // out dx, al
        0x66, 0xba, 0x00, 0x05, // mov dx, GO_PORT
        0xec, // spin: in al, dx
        0x84, 0xc0, // test al, al
        0x74, 0xfb, // jz spin
        0x48, 0x03, 0x1c, 0x25, 0x00, 0x00, 0x20, 0x00, // add rbx, [0x200000]
    ]);
    lcg_loop(&mut code);
    code.extend_from_slice(&[
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb9, 0x08, 0x00, 0x00, 0x00, // mov ecx, 8
        0x88, 0xd8, // print: mov al, bl
        0xee, // out dx, al
        0x48, 0xc1, 0xeb, 0x08, // shr rbx, 8
        0xff, 0xc9, // dec ecx
        0x75, 0xf5, // jnz print
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al (i8042 reset)
        0xf4, // hlt (not reached)
    ]);
    assert_eq!(GO_PORT, 0x500);
    code
}

fn config(vcpus: u8) -> (VmConfig, SharedBuffer) {
    let console = SharedBuffer::new();
    let mut cfg = VmConfig::payload(payload(), LOAD_ADDR, EntryMode::LongMode);
    cfg.vcpus = vcpus;
    cfg.serial = SerialOutput::Buffer(console.clone());
    (cfg, console)
}

fn builder(cfg: VmConfig, go: u8, restore: Option<&std::path::Path>) -> VmmBuilder {
    let mut b = match restore {
        Some(dir) => {
            let loaded = LoadedSnapshot::read(dir, cfg.memory_bytes()).expect("read snapshot");
            // As root (the tests' and the shim's VMM), guest RAM comes in
            // page by page through a userfaultfd, as the payload touches it.
            assert!(loaded.is_lazy(), "the restore copied the whole image");
            VmmBuilder::restore_loaded(cfg, loaded).expect("restore")
        }
        None => VmmBuilder::new(cfg).expect("build vm"),
    };
    b.add_pio_device(
        Arc::new(Mutex::new(GoPort(Arc::new(AtomicU8::new(go))))),
        GO_PORT,
        1,
    )
    .unwrap();
    b
}

/// What the payload prints when it runs without interruption.
fn reference(vcpus: u8) -> Vec<u8> {
    let (cfg, console) = config(vcpus);
    let reason = builder(cfg, 1, None)
        .build()
        .unwrap()
        .run_for(TIMEOUT)
        .unwrap();
    assert_eq!(reason, ExitReason::Reset);
    let out = console.contents();
    assert_eq!(out.len(), 9, "{out:?}");
    out
}

/// Run until the payload spins on the go port, snapshot it into `dir`.
fn snapshot_while_spinning(vcpus: u8, dir: &std::path::Path) {
    let (cfg, console) = config(vcpus);
    let running = builder(cfg, 0, None).build().unwrap().start().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while console.contents() != b"1" {
        assert!(
            Instant::now() < deadline,
            "phase 1 never finished: {:?}",
            console.contents()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = running.snapshot(dir).expect("snapshot");
    assert!(
        stats.written > 0 && stats.written <= stats.allocated,
        "{stats:?}"
    );
    let reason = running.wait(Some(Duration::ZERO)).unwrap();
    assert_eq!(reason, ExitReason::Snapshotted);
    assert_eq!(console.contents(), b"1");
}

fn resumes_with_identical_results(vcpus: u8) {
    let expected = reference(vcpus);
    let dir = tempfile::tempdir().unwrap();
    snapshot_while_spinning(vcpus, dir.path());

    let (cfg, console) = config(vcpus);
    let reason = builder(cfg, 1, Some(dir.path()))
        .build()
        .unwrap()
        .run_for(TIMEOUT)
        .unwrap();
    assert_eq!(reason, ExitReason::Reset);
    // Phase 1's '1' is not printed again: the restored VM went on from the
    // spin loop, with phase 1's registers and memory.
    assert_eq!(
        console.contents(),
        expected[1..],
        "restored run differs from an uninterrupted one"
    );
}

#[test]
fn a_paused_payload_resumes_in_a_second_vm_with_identical_results() {
    resumes_with_identical_results(1);
}

#[test]
fn a_vm_with_a_waiting_secondary_vcpu_resumes_too() {
    resumes_with_identical_results(2);
}

fn restore_err(cfg: VmConfig, dir: &std::path::Path) -> VmmError {
    match VmmBuilder::restore(cfg, dir) {
        Ok(_) => panic!("the restore must be refused"),
        Err(e) => e,
    }
}

#[test]
fn a_snapshot_is_only_restored_into_a_vm_of_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_while_spinning(1, dir.path());

    let (mut cfg, _) = config(1);
    cfg.memory_mib = 32;
    let err = restore_err(cfg, dir.path());
    assert!(
        matches!(
            err,
            VmmError::SnapshotMismatch {
                what: "memory bytes",
                ..
            }
        ),
        "{err}"
    );
    let (cfg, _) = config(2);
    let err = restore_err(cfg, dir.path());
    assert!(
        matches!(err, VmmError::SnapshotMismatch { what: "vcpus", .. }),
        "{err}"
    );
    let (mut cfg, _) = config(1);
    cfg.irqchip = false;
    let err = restore_err(cfg, dir.path());
    assert!(
        matches!(
            err,
            VmmError::SnapshotMismatch {
                what: "in-kernel irqchip",
                ..
            }
        ),
        "{err}"
    );

    // A damaged state file is refused before anything is built.
    let state = dir.path().join(STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&state, &bytes).unwrap();
    let (cfg, _) = config(1);
    let err = restore_err(cfg, dir.path());
    assert!(
        matches!(err, VmmError::Snapshot(SnapshotError::Digest { .. })),
        "{err}"
    );

    // A missing memory image is named.
    let dir = tempfile::tempdir().unwrap();
    snapshot_while_spinning(1, dir.path());
    std::fs::remove_file(dir.path().join(MEMORY_FILE)).unwrap();
    let (cfg, _) = config(1);
    let err = restore_err(cfg, dir.path());
    assert!(err.to_string().contains(MEMORY_FILE), "{err}");
}

/// A pending TSC-deadline timer survives a save and restore: the LAPIC
/// (timer in TSC-deadline mode) must be restored before the MSRs, or KVM
/// drops the deadline and the guest never gets its timer interrupt.
#[test]
fn a_pending_tsc_deadline_timer_survives_a_restore() {
    use cocoon_vmm::vstate::vcpu::Vcpu;
    use cocoon_vmm::vstate::vcpu_state::VcpuState;
    use cocoon_vmm::vstate::vm::Vm;
    use kvm_bindings::{kvm_msr_entry, Msrs};

    const MSR_TSC_DEADLINE: u32 = 0x6e0;
    const APIC_LVTT: usize = 0x320;
    const LVTT_TSC_DEADLINE: u32 = 2 << 17;

    fn vcpu(vm: &Vm) -> Vcpu {
        let v = Vcpu::new(vm, 0).unwrap();
        let cpuid = vm.supported_cpuid().unwrap();
        v.configure(&cpuid, 1, true, None).unwrap();
        v
    }
    fn deadline(v: &Vcpu) -> u64 {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_TSC_DEADLINE,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(v.fd().get_msrs(&mut msrs).unwrap(), 1);
        msrs.as_slice()[0].data
    }

    let vm = Vm::new(true).unwrap();
    let v = vcpu(&vm);
    let mut lapic = v.fd().get_lapic().unwrap();
    let mut lvtt = [0u8; 4];
    for (i, b) in lvtt.iter_mut().enumerate() {
        *b = lapic.regs[APIC_LVTT + i] as u8;
    }
    let value = (u32::from_le_bytes(lvtt) & !(3 << 17) & !(1 << 16)) | LVTT_TSC_DEADLINE | 0xec;
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[APIC_LVTT + i] = *b as _;
    }
    v.fd().set_lapic(&lapic).unwrap();
    let far = 1u64 << 60;
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_TSC_DEADLINE,
        data: far,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(v.fd().set_msrs(&msrs).unwrap(), 1);
    let armed = deadline(&v);
    assert_ne!(
        armed, 0,
        "KVM did not take the deadline (no TSC-deadline timer here?)"
    );

    let msr_list = vm.save_context();
    let state = VcpuState::save(v.fd(), 0, &msr_list.msr_list, msr_list.xsave_size).unwrap();
    assert!(
        state.msrs.iter().any(|m| m.index == MSR_TSC_DEADLINE),
        "the TSC deadline is not among the saved MSRs"
    );
    let vm2 = Vm::new(true).unwrap();
    let v2 = vcpu(&vm2);
    state.restore(v2.fd()).unwrap();
    assert_eq!(
        deadline(&v2),
        armed,
        "the restored vCPU lost its TSC deadline"
    );
}
