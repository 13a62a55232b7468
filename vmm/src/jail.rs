//! The VMM's jail, built in (Firecracker's jailer, done by the VMM to
//! itself before it creates a thread or reads a guest byte):
//!
//! 1. [`fork_monitored`]: a new PID namespace; the VMM continues as its
//!    PID 1, the original process stays behind as a monitor that drops to
//!    the same unprivileged ids, waits, and passes the VMM's exit status
//!    or signal on (so whoever started `cocoon-vmm` sees it). If the
//!    monitor dies, the kernel kills the VMM (`PR_SET_PDEATHSIG`).
//! 2. What needs the host's view or privileges is opened by the caller
//!    (`/dev/kvm`, a TAP, a vhost-user connection, the KVM flavour probe).
//! 3. [`enter`]: new mount, IPC, UTS and network namespaces; the jail
//!    directory becomes `/` (`pivot_root`, the old root detached, no
//!    `/proc`, no `/dev`), with the files in [`JailConfig::binds`]
//!    bind-mounted read-only (the kernel, the initrd); resource limits;
//!    every capability dropped (bounding, ambient, effective, permitted,
//!    inheritable), an unprivileged uid/gid with no supplementary groups,
//!    `no_new_privs`, not dumpable.
//!
//! Files the VMM makes later (the vsock socket, its log, the console)
//! must live in the jail directory; [`JailConfig::inside`] maps their host
//! paths to jail paths.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::seccomp::{self, SeccompMode, ThreadKind};

/// Errors entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// uid or gid 0.
    #[error("--jail-uid and --jail-gid must not be 0 (root)")]
    RootIds,
    /// Not running as root.
    #[error("--jail needs root (to make namespaces, mounts and drop to --jail-uid)")]
    NotRoot,
    /// The jail directory is not usable.
    #[error("jail directory {path}: {reason}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A path the VMM uses after entering the jail is outside it.
    #[error("{path} is not inside the jail directory {dir}")]
    Outside {
        /// The path.
        path: PathBuf,
        /// The jail.
        dir: PathBuf,
    },
    /// A system call failed.
    #[error("jail: {what}")]
    Sys {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

fn check(rc: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if rc < 0 {
        return Err(sys(what)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Where and as whom the VMM runs.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The jail's root: a directory the caller made for this VMM only,
    /// owned by `uid`, mode 0700.
    pub dir: PathBuf,
    /// The unprivileged user id.
    pub uid: u32,
    /// The unprivileged group id.
    pub gid: u32,
    /// Host files bind-mounted read-only at `/<name>` in the jail.
    pub binds: Vec<(PathBuf, String)>,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// Inherited descriptors for the VMM alone (`--net fd=N`): the monitor
    /// closes its copies at once.
    pub monitor_closes: Vec<std::os::fd::RawFd>,
}

/// `RLIMIT_NPROC` for the jailed uid (threads count): the vCPUs, device
/// workers and a margin; one uid per pod keeps it per VMM.
const MAX_THREADS: u64 = 512;

impl JailConfig {
    /// Checks the ids and the directory.
    pub fn validate(&self) -> Result<(), JailError> {
        if self.uid == 0 || self.gid == 0 {
            return Err(JailError::RootIds);
        }
        let dir_err = |reason: String| JailError::Dir {
            path: self.dir.clone(),
            reason,
        };
        let meta = std::fs::symlink_metadata(&self.dir).map_err(|e| dir_err(e.to_string()))?;
        if !meta.is_dir() {
            return Err(dir_err("not a directory".into()));
        }
        if !self.dir.is_absolute() {
            return Err(dir_err("not an absolute path".into()));
        }
        Ok(())
    }

    /// The jail path of host path `path`, which must be inside the jail
    /// directory (lexically: no `..`).
    pub fn inside(&self, path: &Path) -> Result<PathBuf, JailError> {
        let outside = || JailError::Outside {
            path: path.to_path_buf(),
            dir: self.dir.clone(),
        };
        let rel = path.strip_prefix(&self.dir).map_err(|_| outside())?;
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || rel.as_os_str().is_empty()
        {
            return Err(outside());
        }
        Ok(Path::new("/").join(rel))
    }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Dir {
        path: p.to_path_buf(),
        reason: "contains a NUL byte".into(),
    })
}

/// The read end of a pipe whose write end only the monitor holds: it
/// reads EOF once the monitor is gone.
static MONITOR_PIPE: OnceLock<OwnedFd> = OnceLock::new();

/// Forks into a new PID namespace and returns in the child (PID 1 there).
/// The parent becomes the monitor and never returns. Call before any
/// thread exists.
pub fn fork_monitored(cfg: &JailConfig, mode: SeccompMode) -> Result<(), JailError> {
    cfg.validate()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe2",
    )?;
    // SAFETY: both fds were just created and are owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: unshare with a flag only; affects the children made after.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWPID) },
        "unshare(CLONE_NEWPID)",
    )?;
    // SAFETY: no other thread exists (the caller's contract), so the child
    // may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(write);
        let _ = MONITOR_PIPE.set(read);
        set_parent_death_signal()?;
        return Ok(());
    }
    drop(read);
    monitor(pid, cfg, mode, write)
}

/// `PR_SET_PDEATHSIG` (SIGKILL), then exits at once if the monitor is
/// already gone (the setting is cleared by a change of credentials, so it
/// is set again after the drop).
fn set_parent_death_signal() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) },
        "PR_SET_PDEATHSIG",
    )?;
    if let Some(fd) = MONITOR_PIPE.get() {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let rc = unsafe { libc::poll(&mut p, 1, 0) };
        if rc > 0 && p.revents & (libc::POLLHUP | libc::POLLIN) != 0 {
            // The monitor is gone; nobody would see our status.
            std::process::exit(crate::exit::EXIT_SETUP_ERROR);
        }
    }
    Ok(())
}

/// The jailed VMM's pid, for the monitor's SIGUSR1/SIGUSR2 forwarder.
static JAILED_CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_to_child(sig: libc::c_int) {
    let child = JAILED_CHILD.load(std::sync::atomic::Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our own child, not
        // yet reaped (the monitor clears it before it reaps).
        unsafe { libc::kill(child, sig) };
    }
}

/// The termination signal the monitor was sent (0: none).
static STOP_ASKED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// SIGTERM, SIGINT, SIGHUP to the monitor: the VMM is killed (as PID 1 of
/// its namespace it ignores any signal it has no handler for, SIGKILL
/// aside) and the monitor goes on to wait for it, so it reports how the
/// VMM really ended — a VMM already dying of SIGSYS still reads as SIGSYS
/// — and dies of the asked signal itself when the VMM died of the SIGKILL.
extern "C" fn stop_child(sig: libc::c_int) {
    STOP_ASKED.store(sig, std::sync::atomic::Ordering::SeqCst);
    forward_to_child(libc::SIGKILL);
}

fn monitor(child: libc::pid_t, cfg: &JailConfig, mode: SeccompMode, _pipe: OwnedFd) -> ! {
    // SIGUSR1 asks a template VMM (--snapshot-to) for its snapshot: whoever
    // started cocoon-vmm signals this process, the VMM is our child.
    JAILED_CHILD.store(child, std::sync::atomic::Ordering::SeqCst);
    // SIGUSR2 asks a restored VMM (--record-working-set) for its working
    // set; its main blocked it for every thread, the monitor included.
    for sig in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: installing a handler that only calls kill
        // (async-signal-safe).
        unsafe {
            libc::signal(
                sig,
                forward_to_child as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installing a handler that only stores to an atomic and
        // calls kill (async-signal-safe).
        unsafe {
            libc::signal(
                sig,
                stop_child as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; only
    // SIGUSR2 is unblocked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    for fd in &cfg.monitor_closes {
        // SAFETY: the VMM's inherited descriptors, which the monitor never
        // uses; closing this process's copies leaves the VMM's open.
        unsafe { libc::close(*fd) };
    }
    let fail = |e: JailError| -> ! {
        eprintln!("cocoon-vmm: jail monitor: {e}");
        // SAFETY: kill with a pid we forked.
        unsafe { libc::kill(child, libc::SIGKILL) };
        std::process::exit(crate::exit::EXIT_SETUP_ERROR);
    };
    if let Err(e) = set_limits(cfg).and_then(|()| drop_privileges(cfg)) {
        fail(e);
    }
    let filter = match mode {
        SeccompMode::Enforce => Some(seccompiler::SeccompAction::KillProcess),
        SeccompMode::Audit => Some(seccompiler::SeccompAction::Log),
        SeccompMode::Off => None,
    };
    if let Some(action) = filter {
        let installed = seccomp::program(ThreadKind::Monitor, action)
            .map_err(|e| e.to_string())
            .and_then(|p| seccompiler::apply_filter(&p).map_err(|e| e.to_string()));
        if let Err(e) = installed {
            fail(JailError::Sys {
                what: format!("the monitor's seccomp filter: {e}"),
                source: io::ErrorKind::Other.into(),
            });
        }
    }
    // Wait for the VMM's end without reaping it, so that no forwarded
    // signal can reach a process that reused its pid; then forward no more
    // and reap it.
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it for our child.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child without reaping it.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                child as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::__WALL,
            )
        };
        if rc == 0 {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            std::process::exit(crate::exit::EXIT_SETUP_ERROR);
        }
    }
    JAILED_CHILD.store(0, std::sync::atomic::Ordering::SeqCst);
    let mut status = 0;
    loop {
        // SAFETY: reaps our own child (it has ended); `status` is a valid
        // out pointer.
        let rc = unsafe { libc::waitpid(child, &mut status, libc::__WALL) };
        if rc == child {
            break;
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            std::process::exit(crate::exit::EXIT_SETUP_ERROR);
        }
    }
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let mut sig = libc::WTERMSIG(status);
    let asked = STOP_ASKED.load(std::sync::atomic::Ordering::SeqCst);
    if sig == libc::SIGKILL && asked != 0 {
        // Our own SIGKILL, sent because we were asked to stop: die of
        // what we were sent, as an unjailed VMM would have.
        sig = asked;
    }
    if sig == libc::SIGSYS {
        eprintln!(
            "cocoon-vmm: the jailed VMM was killed by SIGSYS: a system call outside its \
             seccomp allow-list (the line above names it; --seccomp audit lists them all)"
        );
    }
    // Die the same way, so whoever started cocoon-vmm sees the signal.
    // SAFETY: resetting a disposition and signalling ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    std::process::exit(128 + sig);
}

fn set_limits(cfg: &JailConfig) -> Result<(), JailError> {
    let set = |res: libc::__rlimit_resource_t, n: u64, what: &str| {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: a valid rlimit struct.
        check(
            unsafe { libc::setrlimit(res, &lim) },
            format!("setrlimit({what})"),
        )
    };
    set(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    set(libc::RLIMIT_NOFILE, cfg.max_open_files, "RLIMIT_NOFILE")?;
    set(libc::RLIMIT_NPROC, MAX_THREADS, "RLIMIT_NPROC")?;
    Ok(())
}

/// `RLIMIT_FSIZE`: no file may grow past `bytes` (its log and console,
/// whose own caps are lower; a block device's file, which never grows).
/// Set once guest memory (a memfd, which the limit also covers) is sized.
/// A write past it fails with `EFBIG` instead of raising `SIGXFSZ`.
pub fn limit_file_size(bytes: u64) -> Result<(), JailError> {
    // SAFETY: ignoring a signal.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: a valid rlimit struct.
    check(
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) },
        "setrlimit(RLIMIT_FSIZE)",
    )
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability and switches to the jail's uid/gid.
fn drop_privileges(cfg: &JailConfig) -> Result<(), JailError> {
    // The bounding set, while CAP_SETPCAP is still there.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(sys(format!("PR_CAPBSET_DROP {cap}"))(
                io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: prctl with integer arguments.
    check(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        },
        "PR_CAP_AMBIENT_CLEAR_ALL",
    )?;
    // SAFETY: an empty group list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
    // SAFETY: plain id arguments (glibc applies them to every thread; there is one).
    check(
        unsafe { libc::setresgid(cfg.gid, cfg.gid, cfg.gid) },
        "setresgid",
    )?;
    // SAFETY: as above.
    check(
        unsafe { libc::setresuid(cfg.uid, cfg.uid, cfg.uid) },
        "setresuid",
    )?;
    // A uid change clears effective and permitted; inheritable stays.
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs.
    check(
        unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int },
        "capset",
    )?;
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "PR_SET_NO_NEW_PRIVS",
    )?;
    // SAFETY: as above; no core dumps, no ptrace by the same uid.
    check(
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
        "PR_SET_DUMPABLE",
    )?;
    Ok(())
}

fn mount(
    src: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    what: &str,
) -> Result<(), JailError> {
    let ptr = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: NUL-terminated strings or null, no data argument.
    check(
        unsafe {
            libc::mount(
                ptr(src),
                target.as_ptr(),
                ptr(fstype),
                flags,
                std::ptr::null(),
            )
        },
        what,
    )
}

/// Enters the jail: namespaces, the new root, limits, no privileges.
/// Call in the process [`fork_monitored`] returned in (or any process
/// with one thread), after opening what needs the host.
pub fn enter(cfg: &JailConfig) -> Result<(), JailError> {
    cfg.validate()?;
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare with flags only.
    check(unsafe { libc::unshare(flags) }, "unshare")?;
    let root = CString::new("/").expect("no NUL");
    // Nothing done here propagates back to the host.
    mount(
        None,
        &root,
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        "making / private",
    )?;
    let dir = cstr(&cfg.dir)?;
    mount(
        Some(&dir),
        &dir,
        None,
        libc::MS_BIND,
        "binding the jail directory",
    )?;
    for (host, name) in &cfg.binds {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(JailError::Dir {
                path: cfg.dir.join(name),
                reason: "a bind name must be a plain file name".into(),
            });
        }
        let target = cfg.dir.join(name);
        let t = cstr(&target)?;
        // A fresh empty file to mount on (never through a symlink).
        // SAFETY: a NUL-terminated path and flags.
        let fd = unsafe {
            libc::open(
                t.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC,
                0o400,
            )
        };
        if fd < 0 {
            return Err(sys(format!("creating {}", target.display()))(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd) };
        let h = cstr(host)?;
        mount(
            Some(&h),
            &t,
            None,
            libc::MS_BIND,
            &format!("binding {}", host.display()),
        )?;
        mount(
            None,
            &t,
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            &format!("making {} read-only", target.display()),
        )?;
    }
    // SAFETY: chdir to a NUL-terminated path.
    check(unsafe { libc::chdir(dir.as_ptr()) }, "chdir to the jail")?;
    let dot = CString::new(".").expect("no NUL");
    // pivot_root(".", "."): the old root ends up on top of the new one and
    // is detached at once.
    // SAFETY: two NUL-terminated paths.
    check(
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int },
        "pivot_root",
    )?;
    // SAFETY: a NUL-terminated path and a flag.
    check(
        unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) },
        "detaching the old root",
    )?;
    // SAFETY: chdir to "/".
    check(unsafe { libc::chdir(root.as_ptr()) }, "chdir /")?;
    mount(
        None,
        &root,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "remounting the jail nosuid,nodev,noexec",
    )?;
    let host = b"cocoon-vmm";
    // SAFETY: a pointer and its length.
    check(
        unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) },
        "sethostname",
    )?;
    set_limits(cfg)?;
    drop_privileges(cfg)?;
    set_parent_death_signal()
}
