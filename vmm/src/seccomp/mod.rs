//! Per-thread seccomp filters: every thread of the VMM installs the
//! allow-list of its kind ([`ThreadKind`]) before it touches anything the
//! guest controls; any other system call kills the whole process with
//! `SIGSYS`. The filter traps (`SECCOMP_RET_TRAP`) into a handler that
//! first writes which thread made which call to stderr, then dies of
//! `SIGSYS` (the call never runs either way).
//!
//! The mode is set once per process by the binary ([`set_mode`]); a library
//! user that never sets it (the KVM unit tests) runs unfiltered. Every
//! thread is created while the process is still unfiltered (the vCPUs and
//! the device workers, see [`crate::threads`]), so no thread inherits
//! another kind's filter: each runs under exactly its own list.
//!
//! [`SeccompMode::Audit`] replaces the kill with a user notification that
//! an unfiltered audit thread answers with "continue", logging each
//! (thread kind, system call) outside the lists once: run a workload with
//! it and the log lists what the filters would have killed.

mod audit;
mod filters;
mod names;
mod sigsys;

pub use sigsys::FORBIDDEN;

use std::io;
use std::sync::OnceLock;

pub use filters::{listed, program};
pub use names::syscall_name;

use seccompiler::SeccompAction;

/// What the filters do with a system call outside a thread's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the process (`SIGSYS`): the default.
    Enforce,
    /// Let it through and log it once per thread kind and system call.
    Audit,
    /// No filters at all (debugging only).
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = SeccompError;
    fn from_str(s: &str) -> Result<Self, SeccompError> {
        match s {
            "enforce" => Ok(SeccompMode::Enforce),
            "audit" => Ok(SeccompMode::Audit),
            "off" => Ok(SeccompMode::Off),
            _ => Err(SeccompError::Mode(s.to_string())),
        }
    }
}

/// The kinds of threads, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread once the vCPUs run: waits for the guest to stop,
    /// then tears the VM down.
    Main,
    /// A vCPU: `KVM_RUN`, and the MMIO/PIO handlers of every device,
    /// including virtio activation (queues are served by device threads).
    Vcpu,
    /// The vsock worker: the Unix-socket backend's connections.
    Vsock,
    /// A virtio-net worker: the TAP.
    Net,
    /// A virtio-fs worker: watches the vhost-user socket.
    FsWorker,
    /// The virtio-rng thread: the host's entropy into guest buffers.
    Rng,
    /// A virtio-blk thread: positioned I/O on its backing file.
    Block,
    /// The vhost-user request watchdog.
    FsWatchdog,
    /// Feeds a terminal on stdin to the serial port.
    SerialInput,
    /// The jail's monitor process (waits for the jailed VMM).
    Monitor,
    /// Loads a restored VM's RAM from its memory image as the guest
    /// touches it (userfaultfd).
    PageLoader,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 11] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Vsock,
        ThreadKind::Net,
        ThreadKind::FsWorker,
        ThreadKind::Rng,
        ThreadKind::Block,
        ThreadKind::FsWatchdog,
        ThreadKind::SerialInput,
        ThreadKind::Monitor,
        ThreadKind::PageLoader,
    ];

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Vsock => "vsock",
            ThreadKind::Net => "net",
            ThreadKind::FsWorker => "virtio-fs",
            ThreadKind::Rng => "virtio-rng",
            ThreadKind::Block => "virtio-blk",
            ThreadKind::FsWatchdog => "vhost-user-watchdog",
            ThreadKind::SerialInput => "serial-input",
            ThreadKind::Monitor => "jail-monitor",
            ThreadKind::PageLoader => "page-loader",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Not a mode.
    #[error("seccomp mode {0:?} is not enforce, audit or off")]
    Mode(String),
    /// The allow-list does not compile (a bug in `filters.rs`).
    #[error("cannot compile the seccomp filter of the {kind} thread: {reason}")]
    Compile {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        reason: String,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of the {kind} thread")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The mode was set twice.
    #[error("the seccomp mode is already set")]
    AlreadySet,
    /// The audit thread could not start.
    #[error("cannot start the seccomp audit thread")]
    Audit(#[source] io::Error),
}

static MODE: OnceLock<SeccompMode> = OnceLock::new();
static SNAPSHOTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Widen the main and vCPU threads' lists by what saving a snapshot needs
/// (`KVM_GET_*` ioctls, positioned file I/O, vhost-user messages). Only for
/// a VMM started to be snapshotted (a template VM, which runs no tenant
/// code); call before any filter is installed.
pub fn allow_snapshots() {
    SNAPSHOTS.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`allow_snapshots`] was called.
pub fn snapshots_allowed() -> bool {
    SNAPSHOTS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Sets the process's mode, once, before any thread that calls [`enter`]
/// exists. `Audit` starts the audit thread.
pub fn set_mode(mode: SeccompMode) -> Result<(), SeccompError> {
    if MODE.get().is_some() {
        return Err(SeccompError::AlreadySet);
    }
    match mode {
        SeccompMode::Audit => audit::start().map_err(SeccompError::Audit)?,
        SeccompMode::Enforce => sigsys::install_handler().map_err(SeccompError::Audit)?,
        SeccompMode::Off => {}
    }
    MODE.set(mode).map_err(|_| SeccompError::AlreadySet)
}

/// The process's mode (`Off` until [`set_mode`]).
pub fn mode() -> SeccompMode {
    MODE.get().copied().unwrap_or(SeccompMode::Off)
}

/// Installs `kind`'s filter on the calling thread, as the mode says.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    match mode() {
        SeccompMode::Off => Ok(()),
        SeccompMode::Enforce => {
            sigsys::set_thread_kind(kind);
            install(kind, &program(kind, SeccompAction::Trap)?, 0)
        }
        SeccompMode::Audit => audit::install(kind),
    }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)` after `no_new_privs`;
/// returns what the kernel returned (a listener fd with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`).
fn install(
    kind: ThreadKind,
    prog: &[seccompiler::sock_filter],
    flags: libc::c_ulong,
) -> Result<(), SeccompError> {
    install_raw(kind, prog, flags).map(|_| ())
}

fn install_raw(
    kind: ThreadKind,
    prog: &[seccompiler::sock_filter],
    flags: libc::c_ulong,
) -> Result<libc::c_long, SeccompError> {
    let err = |source| SeccompError::Install { kind, source };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let len = u16::try_from(prog.len()).map_err(|_| err(io::ErrorKind::InvalidInput.into()))?;
    let fprog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is repr(C) with the kernel's layout.
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program from `fprog`, which points to
    // `prog`, alive for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(rc)
}

#[cfg(test)]
mod tests;
