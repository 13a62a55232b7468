use std::os::fd::AsRawFd;

use seccompiler::SeccompAction;

use super::*;

#[test]
fn every_kind_compiles_in_every_mode() {
    for kind in ThreadKind::ALL {
        for action in [
            SeccompAction::Trap,
            SeccompAction::KillProcess,
            SeccompAction::Log,
        ] {
            let prog = program(kind, action).unwrap();
            assert!(prog.len() > 10, "{kind}: {} instructions", prog.len());
        }
        let audit = audit::notify_program(kind).unwrap();
        assert!(
            audit.iter().any(|i| i.code == 0x06 && i.k == 0x7fc0_0000),
            "{kind}: the audit program never notifies"
        );
    }
}

#[test]
fn the_trap_call_and_the_dangerous_ones_are_on_no_list() {
    for kind in ThreadKind::ALL {
        let listed = listed(kind);
        for nr in [
            FORBIDDEN,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_mount,
            libc::SYS_setuid,
            libc::SYS_unshare,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_open_by_handle_at,
            libc::SYS_bpf,
            libc::SYS_seccomp,
        ] {
            assert!(
                !listed.contains(&nr),
                "{kind} allows {}",
                syscall_name(nr).unwrap()
            );
        }
    }
    assert!(listed(ThreadKind::Vsock).contains(&libc::SYS_socket));
    assert!(!listed(ThreadKind::Vcpu).contains(&libc::SYS_socket));
    assert!(!listed(ThreadKind::Net).contains(&libc::SYS_connect));
}

#[test]
fn names_by_number() {
    assert_eq!(syscall_name(0), Some("read"));
    assert_eq!(syscall_name(110), Some("getppid"));
    assert_eq!(syscall_name(libc::SYS_ioctl), Some("ioctl"));
    assert_eq!(syscall_name(-1), None);
    assert_eq!(syscall_name(100_000), None);
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `f` on a new thread under `kind`'s list with ENOSYS as the
/// mismatch action (so a refused call returns instead of killing the test).
fn under_filter<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let prog = program(kind, SeccompAction::Errno(libc::ENOSYS as u32)).unwrap();
        install(kind, &prog, 0).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn argument_checks_refuse_what_the_lists_do_not_name() {
    // SAFETY (every block below): plain system calls on valid arguments;
    // mappings are unmapped again.
    let (exec_map, rw_map, tty_ioctl, forbidden) = under_filter(ThreadKind::Vcpu, || {
        let map = |prot| unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                errno()
            } else {
                libc::munmap(p, 4096);
                0
            }
        };
        let exec = map(libc::PROT_READ | libc::PROT_EXEC);
        let rw = map(libc::PROT_READ | libc::PROT_WRITE);
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        let tty = if rc < 0 { errno() } else { 0 };
        let rc = unsafe { libc::syscall(FORBIDDEN) };
        (exec, rw, tty, if rc < 0 { errno() } else { 0 })
    });
    assert_eq!(exec_map, libc::ENOSYS, "an executable mapping was allowed");
    assert_eq!(rw_map, 0, "a plain mapping was refused");
    assert_eq!(tty_ioctl, libc::ENOSYS, "an unlisted ioctl was allowed");
    assert_eq!(forbidden, libc::ENOSYS, "getppid was allowed");

    let (inet, unix) = under_filter(ThreadKind::Vsock, || {
        let sock = |family| unsafe {
            let s = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                errno()
            } else {
                libc::close(s);
                0
            }
        };
        (sock(libc::AF_INET), sock(libc::AF_UNIX))
    });
    assert_eq!(inet, libc::ENOSYS, "an AF_INET socket was allowed");
    assert_eq!(unix, 0, "an AF_UNIX socket was refused");
}

#[test]
fn modes_parse() {
    assert_eq!(
        "enforce".parse::<SeccompMode>().unwrap(),
        SeccompMode::Enforce
    );
    assert_eq!("audit".parse::<SeccompMode>().unwrap(), SeccompMode::Audit);
    assert_eq!("off".parse::<SeccompMode>().unwrap(), SeccompMode::Off);
    let e = "lax".parse::<SeccompMode>().unwrap_err().to_string();
    assert!(e.contains("not enforce, audit or off"), "{e}");
}

#[test]
fn snapshot_ioctl_numbers_are_the_kernels() {
    // As <linux/kvm.h> defines them on x86_64.
    assert_eq!(
        filters::vcpu_save_ioctls(),
        [
            0xc008_ae91, // KVM_GET_CPUID2
            0xc008_ae88, // KVM_GET_MSRS
            0x8090_ae81, // KVM_GET_REGS
            0x8138_ae83, // KVM_GET_SREGS
            0x9000_aea4, // KVM_GET_XSAVE
            0x8188_aea6, // KVM_GET_XCRS
            0x8080_aea1, // KVM_GET_DEBUGREGS
            0x8400_ae8e, // KVM_GET_LAPIC
            0x8004_ae98, // KVM_GET_MP_STATE
            0x8040_ae9f, // KVM_GET_VCPU_EVENTS
            0xaea3,      // KVM_GET_TSC_KHZ
        ]
    );
    assert_eq!(
        filters::vm_save_ioctls(),
        [
            0xc208_ae62, // KVM_GET_IRQCHIP
            0x8070_ae9f, // KVM_GET_PIT2
            0x8030_ae7c, // KVM_GET_CLOCK
        ]
    );
}
