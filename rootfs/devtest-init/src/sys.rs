//! Thin wrappers over the few syscalls the checks share.

use std::ffi::CString;
use std::io;

/// mount(2); creates `target` first.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, tgt, fst) = (c(source)?, c(target)?, c(fstype)?);
    let data = data.map(c).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: every pointer is a valid NUL-terminated string (or null for
    // data) that outlives the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fst.as_ptr(), flags, data_ptr) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Syncs and resets the VM (the guest has no ACPI; `reboot=k` turns the
/// restart into an i8042 reset, which ends cocoon-vmm with 0).
pub fn reset() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot returns only on error.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(1)
}
