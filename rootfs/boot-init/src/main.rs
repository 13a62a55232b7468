//! Minimal PID 1 for the boot slice: mounts /proc and /sys, prints a banner
//! with the kernel release and the guest's uptime, and ends the VM.
//!
//! The guest kernel has no ACPI, so a power-off would only halt it; the VM is
//! ended with a restart instead (`reboot=k` makes that an i8042 reset, which
//! cocoon-vmm turns into a clean exit).

mod banner;

use std::ffi::CString;
use std::io::Write;

fn mount(fstype: &str, target: &str) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(target)?;
    let src = CString::new(fstype).expect("no NUL in fstype");
    let tgt = CString::new(target).expect("no NUL in target");
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; a null data pointer is allowed for these filesystems.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() {
    let mut out = std::io::stdout();
    for (fs, dir) in [("proc", "/proc"), ("sysfs", "/sys")] {
        if let Err(e) = mount(fs, dir) {
            let _ = writeln!(out, "cocoon-init: mounting {dir}: {e}");
        }
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let _ = writeln!(out, "{}", banner::banner(&release, &uptime, &cpus));
    let _ = out.flush();

    // `cocoon.hold=SECS` keeps the guest up a while (make bench reads the
    // VMM's memory then).
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(secs) = banner::hold_seconds(&cmdline) {
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }

    // An init that exits makes the kernel panic; end the VM instead.
    // SAFETY: sync and reboot take no pointers; reboot only returns on error.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    let _ = writeln!(
        out,
        "cocoon-init: reboot failed: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(1);
}
