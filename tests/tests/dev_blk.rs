//! virtio-blk end to end: a read-only disk with a known pattern and a
//! read-write disk; the guest verifies the first (and that it cannot write
//! it) and writes a pattern to the second, which the host checks here.
#![cfg(feature = "e2e")]

use cocoon_e2e::{assert_devtest_passed, run_with_deadline, Artifacts};
use std::process::Command;
use std::time::Duration;

/// Same rule as rootfs/devtest-init/src/blk.rs.
fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9) ^ seed) as u8
}

const RO_SEED: u64 = 0x5a;
const RO_BYTES: u64 = 4 << 20;
const RW_SEED: u64 = 0xc3;
const RW_BYTES: u64 = 1 << 20;
const RW_DISK: u64 = 4 << 20;
const RW_OFFSET: u64 = 3 * 4096 + 512;
const FILL: u8 = 0xee;

/// A temp directory removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cocoon-e2e-blk-{tag}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn guest_reads_read_only_disk_and_writes_read_write_disk() {
    let a = Artifacts::from_env();
    let dir = temp_dir("io");
    let ro = dir.path().join("ro.img");
    let rw = dir.path().join("rw.img");
    let ro_bytes: Vec<u8> = (0..RO_BYTES).map(|i| pattern(RO_SEED, i)).collect();
    std::fs::write(&ro, &ro_bytes).unwrap();
    std::fs::write(&rw, vec![FILL; RW_DISK as usize]).unwrap();

    let cmdline = format!(
        "quiet cocoon.test=blk cocoon.blk.ro=/dev/vda cocoon.blk.rw=/dev/vdb \
         cocoon.blk.ro_bytes={RO_BYTES} cocoon.blk.ro_seed={RO_SEED} cocoon.blk.ro_id=cocoon-ro \
         cocoon.blk.rw_seed={RW_SEED} cocoon.blk.rw_offset={RW_OFFSET} cocoon.blk.rw_bytes={RW_BYTES}"
    );
    let mut cmd = a.devtest_vmm(&cmdline);
    cmd.args(["--memory", "128"])
        .arg("--block")
        .arg(format!("path={},readonly=on,id=cocoon-ro", ro.display()))
        .arg("--block")
        .arg(format!("path={}", rw.display()));
    let f = run_with_deadline(cmd, Duration::from_secs(180));
    assert_devtest_passed(&f, "blk");

    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_bytes,
        "the read-only image changed"
    );
    let got = std::fs::read(&rw).unwrap();
    assert_eq!(got.len() as u64, RW_DISK);
    let start = RW_OFFSET as usize;
    let end = (RW_OFFSET + RW_BYTES) as usize;
    assert!(
        got[..start].iter().all(|&b| b == FILL),
        "bytes before the write changed"
    );
    assert!(
        got[end..].iter().all(|&b| b == FILL),
        "bytes after the write changed"
    );
    for (i, &b) in got[start..end].iter().enumerate() {
        let at = RW_OFFSET + i as u64;
        assert_eq!(b, pattern(RW_SEED, at), "rw image byte {at}");
    }
}

#[test]
fn missing_or_bad_backing_files_are_clear_errors() {
    let a = Artifacts::from_env();
    let dir = temp_dir("errors");
    let cases = [
        (
            format!("path={}", dir.path().join("nope.img").display()),
            "does not exist",
        ),
        (
            format!("path={}", dir.path().display()),
            "not a regular file",
        ),
        ("path=/x,readonly=bogus".to_string(), "not on or off"),
    ];
    for (spec, want) in cases {
        let mut cmd = Command::new(&a.vmm);
        cmd.arg("--kernel").arg(&a.kernel).arg("--block").arg(&spec);
        let f = run_with_deadline(cmd, Duration::from_secs(60));
        assert_eq!(f.status.code(), Some(1), "{spec}: {}", f.describe());
        assert!(f.stderr.contains(want), "{spec}: {}", f.describe());
    }
}
