//! What the agent does as the guest's PID 1: the early mounts, loopback,
//! and restarting the VM at the end.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("mounting {fstype} at {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("bringing up lo")]
    Loopback(#[source] std::io::Error),
}

/// True when this process is the guest's init.
pub fn is_init() -> bool {
    std::process::id() == 1
}

struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const MOUNTS: &[Mount] = &[
    Mount {
        fstype: "proc",
        target: "/proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        fstype: "sysfs",
        target: "/sys",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    Mount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    Mount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    Mount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC)
            .union(MsFlags::MS_RELATIME),
        data: Some("nsdelegate"),
    },
];

/// Mounts the early filesystems and brings up loopback. (The cgroup
/// controllers are delegated by `cgroup_parent::setup` when the agent
/// starts.)
pub fn setup() -> Result<(), Pid1Error> {
    for m in MOUNTS {
        let _ = std::fs::create_dir_all(m.target);
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) => {}
            // devtmpfs may be mounted by the kernel already (DEVTMPFS_MOUNT).
            Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(Pid1Error::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
        }
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    if std::env::var_os("PATH").is_none() {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    loopback_up().map_err(Pid1Error::Loopback)?;
    Ok(())
}

nix::ioctl_read_bad!(get_flags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_flags, libc::SIOCSIFFLAGS, libc::ifreq);

fn loopback_up() -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
        // lo is down, so binding to it can fail; any datagram socket will do.
        std::net::UdpSocket::bind("0.0.0.0:0")
    })?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface into the
    // ifreq we own; the socket fd is open.
    unsafe { get_flags(sock.as_raw_fd(), &mut req) }.map_err(std::io::Error::from)?;
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    unsafe { set_flags(sock.as_raw_fd(), &req) }.map_err(std::io::Error::from)?;
    Ok(())
}

/// Syncs and restarts: with `reboot=k` the VMM sees an i8042 reset, which
/// it treats as the VM's clean exit. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    tracing::info!("restarting the VM");
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on failure; PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
