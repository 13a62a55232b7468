//! Why a VM stopped, the process exit code for it, and the shared state
//! that vCPU threads and devices use to ask for a stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Exit code: the guest rebooted or powered off (i8042 reset).
pub const EXIT_OK: i32 = 0;
/// Exit code: bad arguments, missing files or a VMM setup error.
pub const EXIT_SETUP_ERROR: i32 = 1;
/// Exit code: the guest kernel panicked.
pub const EXIT_GUEST_PANIC: i32 = 2;
/// Exit code: the guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
pub const EXIT_TRIPLE_FAULT: i32 = 3;
/// Exit code: KVM failed (internal error, failed entry, unexpected exit).
pub const EXIT_KVM_ERROR: i32 = 4;
/// Exit code: the run timed out (library callers only).
pub const EXIT_TIMEOUT: i32 = 5;
/// Exit code: a restored VM's memory could not be loaded from its
/// snapshot (a corrupt or unreadable page of the memory image): the
/// snapshot is unusable.
pub const EXIT_SNAPSHOT_MEMORY: i32 = 6;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset through the i8042 (reboot or poweroff
    /// with `reboot=k`), or KVM reported a system reset/shutdown event.
    Reset,
    /// The guest kernel printed "Kernel panic - not syncing" and then reset
    /// or shut down.
    GuestPanic,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    TripleFault,
    /// `HLT` exited to user space (only without the in-kernel irqchip).
    Halted {
        /// The vCPU that halted.
        vcpu: u8,
    },
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// KVM's sub-error code.
        suberror: u32,
    },
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// Any other exit we cannot handle, or a failed `KVM_RUN`.
    VcpuError {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        detail: String,
    },
    /// `Vmm::run_for` ran out of time.
    TimedOut,
    /// The VM was paused, saved and ended (`RunningVm::snapshot`).
    Snapshotted,
    /// Lazily restored guest memory could not be loaded.
    GuestMemory {
        /// What failed.
        detail: String,
    },
}

impl ExitReason {
    /// The process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::Halted { .. } | ExitReason::Snapshotted => EXIT_OK,
            ExitReason::GuestPanic => EXIT_GUEST_PANIC,
            ExitReason::TripleFault => EXIT_TRIPLE_FAULT,
            ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::VcpuError { .. } => EXIT_KVM_ERROR,
            ExitReason::GuestMemory { .. } => EXIT_SNAPSHOT_MEMORY,
            ExitReason::TimedOut => EXIT_TIMEOUT,
        }
    }

    /// A one-line description for logs and the CLI.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::Reset => "guest requested reset or poweroff".into(),
            ExitReason::GuestPanic => "guest kernel panicked".into(),
            ExitReason::TripleFault => {
                "guest triple-faulted (KVM_EXIT_SHUTDOWN); the kernel crashed before its panic handler ran — try --cmdline earlyprintk=serial".into()
            }
            ExitReason::Halted { vcpu } => format!("vcpu {vcpu} halted"),
            ExitReason::InternalError { vcpu, suberror } => {
                format!("kvm internal error on vcpu {vcpu} (suberror {suberror}); the guest ran an instruction KVM cannot emulate")
            }
            ExitReason::FailEntry { vcpu, reason } => {
                format!("kvm could not enter vcpu {vcpu} (hardware entry failure reason {reason:#x})")
            }
            ExitReason::VcpuError { vcpu, detail } => format!("vcpu {vcpu} failed: {detail}"),
            ExitReason::TimedOut => "timed out".into(),
            ExitReason::Snapshotted => "snapshot taken; the VM ended".into(),
            ExitReason::GuestMemory { detail } => {
                format!("guest memory could not be loaded from the snapshot: {detail}")
            }
        }
    }
}

/// Shared by vCPU threads and devices: the first stop request wins.
#[derive(Debug, Default)]
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
    stopping: AtomicBool,
    panic_seen: AtomicBool,
}

impl ExitState {
    /// A fresh state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the VM to stop for `reason` (ignored if a reason is already set).
    pub fn request(&self, reason: ExitReason) {
        let mut guard = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            tracing::debug!(reason = %reason.describe(), "vm stop requested");
            *guard = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// The guest reset itself: a panic if the console showed one.
    pub fn request_reset(&self) {
        self.request(if self.panic_seen() {
            ExitReason::GuestPanic
        } else {
            ExitReason::Reset
        });
    }

    /// The guest triple-faulted (a panic if the console showed one).
    pub fn request_shutdown(&self) {
        self.request(if self.panic_seen() {
            ExitReason::GuestPanic
        } else {
            ExitReason::TripleFault
        });
    }

    /// Record that the console printed a kernel panic line.
    pub fn note_panic(&self) {
        self.panic_seen.store(true, Ordering::SeqCst);
    }

    /// Whether a kernel panic was seen.
    pub fn panic_seen(&self) -> bool {
        self.panic_seen.load(Ordering::SeqCst)
    }

    /// Whether vCPUs should stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Wait for a stop request; `None` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut guard = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = guard.clone() {
                return Some(reason);
            }
            match deadline {
                None => guard = self.cond.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    guard = self
                        .cond
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitState::new();
        assert!(!s.stopping());
        s.request(ExitReason::Reset);
        s.request(ExitReason::TripleFault);
        assert!(s.stopping());
        assert_eq!(s.wait(Some(Duration::ZERO)), Some(ExitReason::Reset));
    }

    #[test]
    fn reset_after_panic_is_a_panic() {
        let s = ExitState::new();
        s.note_panic();
        s.request_reset();
        assert_eq!(s.wait(None), Some(ExitReason::GuestPanic));
        let t = ExitState::new();
        t.note_panic();
        t.request_shutdown();
        assert_eq!(t.wait(None), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn wait_times_out() {
        let s = ExitState::new();
        assert_eq!(s.wait(Some(Duration::from_millis(10))), None);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::GuestPanic.exit_code(), 2);
        assert_eq!(ExitReason::TripleFault.exit_code(), 3);
        assert_eq!(ExitReason::FailEntry { vcpu: 0, reason: 1 }.exit_code(), 4);
        let memory = ExitReason::GuestMemory {
            detail: "corrupt".into(),
        };
        assert_eq!(memory.exit_code(), EXIT_SNAPSHOT_MEMORY);
        assert_eq!(ExitReason::GuestPanic.describe(), "guest kernel panicked");
    }
}
