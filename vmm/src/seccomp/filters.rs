//! The allow-lists. Each entry is a system call a thread of that kind was
//! seen to make (`--seccomp audit` over the end-to-end suite, see
//! `tests/tests/ctr_vmm_jail.rs`), with argument checks where an
//! unchecked call would give the guest more: `ioctl` numbers, `socket`
//! families, no executable mappings, signals only to this process.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{SeccompError, ThreadKind};

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

// ioctl numbers (x86_64), from <linux/kvm.h>, <linux/if_tun.h>, <asm-generic/ioctls.h>.
/// `KVM_RUN`.
pub const KVM_RUN: u64 = 0xae80;
/// `FIONBIO` (what `set_nonblocking` uses on a socket).
pub const FIONBIO: u64 = 0x5421;
/// `FIOCLEX`.
pub const FIOCLEX: u64 = 0x5451;

/// `_IOC(dir, 0xAE, nr, size)`: a KVM ioctl number.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_RW: u64 = 3;

/// The `KVM_GET_*` ioctls a parked vCPU thread makes to save itself.
pub fn vcpu_save_ioctls() -> [u64; 11] {
    use kvm_bindings::*;
    use std::mem::size_of;
    [
        kvm_ioc(IOC_RW, 0x91, size_of::<kvm_cpuid2>()), // KVM_GET_CPUID2
        kvm_ioc(IOC_RW, 0x88, size_of::<kvm_msrs>()),   // KVM_GET_MSRS
        kvm_ioc(IOC_READ, 0x81, size_of::<kvm_regs>()), // KVM_GET_REGS
        kvm_ioc(IOC_READ, 0x83, size_of::<kvm_sregs>()), // KVM_GET_SREGS
        kvm_ioc(IOC_READ, 0xa4, size_of::<kvm_xsave>()), // KVM_GET_XSAVE
        kvm_ioc(IOC_READ, 0xa6, size_of::<kvm_xcrs>()), // KVM_GET_XCRS
        kvm_ioc(IOC_READ, 0xa1, size_of::<kvm_debugregs>()), // KVM_GET_DEBUGREGS
        kvm_ioc(IOC_READ, 0x8e, size_of::<kvm_lapic_state>()), // KVM_GET_LAPIC
        kvm_ioc(IOC_READ, 0x98, size_of::<kvm_mp_state>()), // KVM_GET_MP_STATE
        kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
        kvm_ioc(0, 0xa3, 0),                            // KVM_GET_TSC_KHZ
    ]
}

/// The `KVM_GET_*` ioctls the main thread makes on the VM to save it.
pub fn vm_save_ioctls() -> [u64; 3] {
    use kvm_bindings::*;
    use std::mem::size_of;
    [
        kvm_ioc(IOC_RW, 0x62, size_of::<kvm_irqchip>()), // KVM_GET_IRQCHIP
        kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2
        kvm_ioc(IOC_READ, 0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK
    ]
}

/// What compiling a rule can fail with.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, Fail> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// Adds unconditional entries (replacing argument checks of the same call).
fn allow(rules: &mut Rules, calls: &[i64]) {
    for &nr in calls {
        rules.insert(nr, Vec::new());
    }
}

/// Adds `nr` allowed only when argument `arg` is one of `values`.
fn allow_arg_in(rules: &mut Rules, nr: i64, arg: u8, values: &[u64]) -> Result<(), Fail> {
    let entry = rules.entry(nr).or_default();
    for &v in values {
        entry.push(SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)?])?);
    }
    Ok(())
}

/// Adds `nr` allowed only when argument `arg` has none of `mask`'s bits.
fn allow_arg_without(rules: &mut Rules, nr: i64, arg: u8, mask: u64) -> Result<(), Fail> {
    rules
        .entry(nr)
        .or_default()
        .push(SeccompRule::new(vec![cond(
            arg,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?])?);
    Ok(())
}

/// What every thread needs: memory (never executable), locks, signal
/// return, time, its own log lines (the bounded log file rotates by
/// rename + create), and its end.
fn common(rules: &mut Rules) -> Result<(), Fail> {
    allow(
        rules,
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_getrandom,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_openat,
            libc::SYS_rename,
            libc::SYS_ftruncate,
            libc::SYS_lseek,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    // Anonymous or file mappings, never executable: no new code.
    allow_arg_without(rules, libc::SYS_mmap, 2, libc::PROT_EXEC as u64)?;
    allow_arg_without(rules, libc::SYS_mprotect, 2, libc::PROT_EXEC as u64)?;
    // Descriptor flags and CLOEXEC duplicates only (no locks, leases,
    // owners or pipe sizes).
    allow_arg_in(
        rules,
        libc::SYS_fcntl,
        1,
        &[
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    )?;
    // Signals only to a thread of this process (the vCPU kick, abort()).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    allow_arg_in(rules, libc::SYS_tgkill, 0, &[pid])?;
    Ok(())
}

fn rules_for(kind: ThreadKind) -> Result<Rules, Fail> {
    let mut r = Rules::new();
    if kind != ThreadKind::Monitor {
        common(&mut r)?;
    }
    let snapshots = super::snapshots_allowed();
    match kind {
        ThreadKind::Main => {
            // Teardown: device drops stop workers (eventfd writes, joins),
            // the vsock listener's socket file is removed.
            allow(
                &mut r,
                &[libc::SYS_unlink, libc::SYS_unlinkat, libc::SYS_epoll_ctl],
            );
            if snapshots {
                // Saving the VM: its KVM state, device quiescing (virtio-fs
                // stops its rings over vhost-user) and the image files.
                allow_arg_in(&mut r, libc::SYS_ioctl, 1, &vm_save_ioctls())?;
                allow(
                    &mut r,
                    &[
                        libc::SYS_sendmsg,
                        libc::SYS_recvmsg,
                        libc::SYS_sendto,
                        libc::SYS_recvfrom,
                        libc::SYS_pread64,
                        libc::SYS_pwrite64,
                        libc::SYS_fsync,
                    ],
                );
            }
        }
        ThreadKind::Vcpu => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &[KVM_RUN, FIONBIO, FIOCLEX])?;
            if snapshots {
                allow_arg_in(&mut r, libc::SYS_ioctl, 1, &vcpu_save_ioctls())?;
            }
            allow(
                &mut r,
                &[
                    // virtio activation: eventfds, epoll sets, cloned fds.
                    libc::SYS_eventfd2,
                    libc::SYS_epoll_create1,
                    libc::SYS_epoll_ctl,
                    libc::SYS_dup,
                    // vhost-user messages to virtiofsd (with fds).
                    libc::SYS_sendmsg,
                    libc::SYS_recvmsg,
                    libc::SYS_sendto,
                    libc::SYS_recvfrom,
                    libc::SYS_shutdown,
                ],
            );
        }
        ThreadKind::Vsock => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &[FIONBIO, FIOCLEX])?;
            // Guest connections to the host go to Unix sockets only.
            allow_arg_in(&mut r, libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?;
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_accept4,
                    libc::SYS_connect,
                    libc::SYS_sendto,
                    libc::SYS_recvfrom,
                    libc::SYS_sendmsg,
                    libc::SYS_recvmsg,
                    libc::SYS_shutdown,
                    libc::SYS_getsockopt,
                ],
            );
        }
        ThreadKind::Rng => {
            // getrandom is in every list.
            allow(&mut r, &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait]);
        }
        ThreadKind::Block => {
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    // Positioned I/O on its file.
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                ],
            );
        }
        ThreadKind::Net => {
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_readv,
                ],
            );
        }
        ThreadKind::FsWorker => {
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                ],
            );
        }
        ThreadKind::FsWatchdog => {
            allow(&mut r, &[libc::SYS_shutdown]);
        }
        ThreadKind::SerialInput => {
            allow(&mut r, &[libc::SYS_poll, libc::SYS_ppoll]);
        }
        ThreadKind::PageLoader => {
            // Wait for faults, read the page from the image, map it.
            allow(
                &mut r,
                &[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_pread64],
            );
            use crate::vstate::uffd::{UFFDIO_COPY, UFFDIO_WAKE, UFFDIO_ZEROPAGE};
            allow_arg_in(
                &mut r,
                libc::SYS_ioctl,
                1,
                &[UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_WAKE],
            )?;
        }
        ThreadKind::Monitor => {
            allow(
                &mut r,
                &[
                    libc::SYS_wait4,
                    libc::SYS_waitid,
                    libc::SYS_write,
                    libc::SYS_brk,
                    libc::SYS_munmap,
                    libc::SYS_futex,
                    libc::SYS_rt_sigreturn,
                    libc::SYS_rt_sigaction,
                    libc::SYS_rt_sigprocmask,
                    libc::SYS_sigaltstack,
                    libc::SYS_getpid,
                    libc::SYS_gettid,
                    libc::SYS_tgkill,
                    libc::SYS_kill,
                    libc::SYS_exit_group,
                    libc::SYS_exit,
                    libc::SYS_restart_syscall,
                ],
            );
            allow_arg_without(&mut r, libc::SYS_mmap, 2, libc::PROT_EXEC as u64)?;
        }
    }
    Ok(r)
}

/// The BPF program of `kind`'s allow-list: listed calls are allowed,
/// anything else gets `mismatch`.
pub fn program(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let compile = |Fail(reason)| SeccompError::Compile { kind, reason };
    let rules = rules_for(kind).map_err(compile)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| compile(Fail(e.to_string())))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| compile(Fail(e.to_string())))
}

/// The system calls on `kind`'s list (for tests and docs).
pub fn listed(kind: ThreadKind) -> Vec<i64> {
    rules_for(kind)
        .map(|r| r.keys().copied().collect())
        .unwrap_or_default()
}
