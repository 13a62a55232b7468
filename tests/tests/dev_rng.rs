//! virtio-rng end to end: the test-mode init reads 64 bytes from /dev/hwrng,
//! which must be served by the virtio_rng driver.
#![cfg(feature = "e2e")]

use cocoon_e2e::{assert_devtest_passed, run_with_deadline, Artifacts};
use std::time::Duration;

#[test]
fn guest_reads_hwrng_from_virtio_rng() {
    let a = Artifacts::from_env();
    let mut cmd = a.devtest_vmm("quiet cocoon.test=rng cocoon.rng.bytes=64");
    cmd.args(["--memory", "128", "--rng"]);
    let f = run_with_deadline(cmd, Duration::from_secs(180));
    assert_devtest_passed(&f, "rng");
}
