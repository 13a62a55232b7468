//! virtio-rng end to end: the test-mode init reads 64 bytes from /dev/hwrng,
//! which must be served by the virtio_rng driver.
#![cfg(feature = "e2e")]

use cocoon_e2e::{devtest_report, run_with_deadline, Artifacts, CheckVerdict};
use std::process::Command;
use std::time::Duration;

#[test]
fn guest_reads_hwrng_from_virtio_rng() {
    let a = Artifacts::from_env();
    let mut cmd = Command::new(&a.vmm);
    cmd.arg("--kernel")
        .arg(&a.kernel)
        .arg("--initrd")
        .arg(&a.devtest_initrd)
        .args(["--memory", "128", "--rng"])
        .args(["--cmdline", "quiet cocoon.test=rng cocoon.rng.bytes=64"]);
    let f = run_with_deadline(cmd, Duration::from_secs(180));
    let (verdicts, done) = devtest_report(&f.stdout);
    assert!(!f.timed_out, "the guest did not finish:\n{}", f.describe());
    assert!(
        matches!(verdicts.as_slice(), [(name, CheckVerdict::Ok(_))] if name == "rng"),
        "rng check: {verdicts:?}\n{}",
        f.describe()
    );
    assert!(done, "no 'cocoon-devtest: done':\n{}", f.describe());
    assert_eq!(f.status.code(), Some(0), "{}", f.describe());
    println!("rng: {verdicts:?} in {:?}", f.elapsed);
}
