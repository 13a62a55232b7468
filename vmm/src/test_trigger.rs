//! Debug builds only: a guest that prints [`MARKER`] on the serial console
//! (`echo '<2>cocoon-test:sigsys' > /dev/kmsg` as root in the guest) makes
//! the vCPU thread call `getppid`, which no allow-list has. With filters
//! on, that kills the VMM with `SIGSYS`; the end-to-end tests use it to
//! check what the shim reports. Armed only when filters are on (each vCPU
//! installs its own before running the guest), absent from release builds.

use std::sync::atomic::{AtomicBool, Ordering};

/// The console text that fires it.
pub const MARKER: &[u8] = b"cocoon-test:sigsys";

static ARMED: AtomicBool = AtomicBool::new(false);

/// Called when the filters are on, before the vCPUs start.
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Makes the forbidden system call if armed.
pub fn fire() {
    if ARMED.load(Ordering::SeqCst) {
        tracing::warn!("test trigger: calling getppid, which no seccomp list allows");
        // SAFETY: getppid has no arguments and no side effects.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}
