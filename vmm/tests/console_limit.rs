//! A guest that floods COM1 cannot grow the console file past
//! `console_limit`: a real-mode payload on this machine's /dev/kvm writes
//! 64 KiB (a counter byte per `out`) and then "END\n" to a
//! `SerialOutput::File` capped at 4 KiB; the file and its `.1` hold at most
//! 4 KiB together, and they hold the newest bytes, in order.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cocoon_vmm::{EntryMode, ExitReason, SerialOutput, VmConfig, Vmm};

const LOAD_ADDR: u64 = 0x1_0000;
const LIMIT: u64 = 4096;
/// `loop` with CX = 0 runs 65536 times.
const FLOOD: usize = 1 << 16;

/// Writes bytes 0, 1, 2... (wrapping) FLOOD times, then "END\n", then asks
/// the i8042 for a reset.
fn flood_payload() -> Vec<u8> {
    let mut code = vec![
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x31, 0xc9, // xor cx, cx
        0x31, 0xc0, // xor ax, ax
        0xee, // out dx, al     ; <- loop start
        0xfe, 0xc0, // inc al
        0xe2, 0xfb, // loop -5
    ];
    for &c in b"END\n" {
        code.extend_from_slice(&[0xb0, c, 0xee]); // mov al, c; out dx, al
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
    code.push(0xf4); // hlt (not reached)
    code
}

#[test]
fn console_file_stays_under_the_limit_and_keeps_the_newest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let mut cfg = VmConfig::payload(flood_payload(), LOAD_ADDR, EntryMode::RealMode);
    cfg.serial = SerialOutput::File(path.clone());
    cfg.console_limit = LIMIT;
    let reason = Vmm::new(cfg)
        .expect("build vm")
        .run_for(Duration::from_secs(120))
        .expect("run vm");
    assert_eq!(reason, ExitReason::Reset);

    let mut expected: Vec<u8> = (0..FLOOD).map(|i| i as u8).collect();
    expected.extend_from_slice(b"END\n");
    let old = dir.path().join("console.log.1");
    let mut kept = std::fs::read(&old).unwrap_or_default();
    kept.extend(std::fs::read(&path).unwrap());
    assert!(
        kept.len() as u64 <= LIMIT,
        "the guest wrote {} bytes; the console kept {} (limit {LIMIT})",
        expected.len(),
        kept.len()
    );
    assert!(
        kept.len() as u64 >= LIMIT / 2,
        "kept only {} bytes",
        kept.len()
    );
    assert!(
        expected.ends_with(&kept),
        "the console is not the newest output in order"
    );
    for p in [&path, &old] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}
