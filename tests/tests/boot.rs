//! Boots the real guest kernel and initrd in cocoon-vmm on hardware KVM (the
//! nested test host on machines whose KVM is PVM) and checks what comes out.
#![cfg(feature = "e2e")]

use cocoon_e2e::{run_with_deadline, Artifacts, Finished};
use std::process::Command;
use std::time::Duration;

const BOOT_DEADLINE: Duration = Duration::from_secs(180);

fn boot(extra_args: &[&str], with_initrd: bool) -> Finished {
    let a = Artifacts::from_env();
    let mut cmd = Command::new(&a.vmm);
    cmd.arg("--kernel").arg(&a.kernel);
    if with_initrd {
        cmd.arg("--initrd").arg(&a.initrd);
    }
    cmd.args(extra_args);
    run_with_deadline(cmd, BOOT_DEADLINE)
}

/// One boot for the banner, SMP and a clean exit; a one-vCPU guest boots in
/// every other end-to-end test (the devices, the agent, every pod).
#[test]
fn boots_two_vcpus_to_the_init_banner_and_exits_cleanly() {
    let f = boot(&["--vcpus", "2", "--memory", "256"], true);
    assert!(!f.timed_out, "the guest did not finish:\n{}", f.describe());
    assert!(
        f.stdout.contains("cocoon-init: booted Linux 6."),
        "no banner from the init:\n{}",
        f.describe()
    );
    assert!(
        f.stdout.contains("cpus 0-1\n") || f.stdout.contains("cpus 0-1\r\n"),
        "the guest did not bring up both vCPUs:\n{}",
        f.describe()
    );
    assert_eq!(
        f.status.code(),
        Some(0),
        "a guest reboot must end the VMM with 0:\n{}",
        f.describe()
    );
    println!("boot with 2 vCPUs took {:?}", f.elapsed);
}

#[test]
fn a_guest_kernel_panic_gives_a_nonzero_exit() {
    // No initrd and no root device: the kernel panics ("VFS: Unable to mount
    // root fs"), panic=-1 resets at once, and the VMM must report it.
    let f = boot(&["--cmdline", "rdinit=/nonexistent"], false);
    assert!(
        !f.timed_out,
        "the panicking guest did not end the VMM:\n{}",
        f.describe()
    );
    assert!(
        f.stdout.contains("Kernel panic"),
        "no panic on the console:\n{}",
        f.describe()
    );
    let code = f.status.code();
    assert!(
        code.is_some() && code != Some(0),
        "a panic must not exit 0:\n{}",
        f.describe()
    );
    assert!(
        f.stderr.to_lowercase().contains("panic"),
        "the VMM must say why:\n{}",
        f.describe()
    );
}
