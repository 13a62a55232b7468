//! What the agent does as the guest's PID 1: moving its root off the
//! initramfs, the early mounts, loopback, and restarting the VM at the end.
//! (The cgroup controllers: `cgroup_parent`; orphans: `reaper`, which
//! reaps every child as PID 1; the console: stderr is the kernel's
//! /dev/console, which the initrd provides.)

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
    #[error("moving the root off the initramfs: {0}")]
    MoveRoot(&'static str, #[source] nix::Error),
}

/// True when this process is the guest's init.
pub fn is_init() -> bool {
    std::process::id() == 1
}

pub struct Mount {
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

/// The early mounts, in order (a target's parent mount comes first).
pub const MOUNTS: &[Mount] = &[
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
    if let Err(e) = move_root_off_rootfs() {
        // Containers will fail in pivot_root, but the agent still answers.
        tracing::error!(error = %crate::error_code::chain(&e), "root not movable");
    }
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

/// Where the root is bound before it is moved over `/`.
const ROOT_BIND: &str = "/.cocoon-root";

/// pivot_root(2) refuses a caller whose root is the initramfs (rootfs has
/// no parent mount), and libcontainer pivots into every container. So, as
/// switch_root does: bind the root to a directory, move that mount over
/// `/` and chroot into it; the root is then a mount with a parent.
fn move_root_off_rootfs() -> Result<(), Pid1Error> {
    let err = |what| move |e| Pid1Error::MoveRoot(what, e);
    let _ = std::fs::create_dir(ROOT_BIND);
    mount(
        Some("/"),
        ROOT_BIND,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind"))?;
    nix::unistd::chdir(ROOT_BIND).map_err(err("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(err("move"))?;
    nix::unistd::chroot(".").map_err(err("chroot"))?;
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    // The same directory, seen from the new root: no longer a mount point.
    let _ = std::fs::remove_dir(ROOT_BIND);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_plan_covers_the_guest_and_mounts_parents_first() {
        let targets: Vec<&str> = MOUNTS.iter().map(|m| m.target).collect();
        for (fstype, target) in [
            ("proc", "/proc"),
            ("sysfs", "/sys"),
            ("devtmpfs", "/dev"),
            ("devpts", "/dev/pts"),
            ("cgroup2", "/sys/fs/cgroup"),
        ] {
            assert!(
                MOUNTS
                    .iter()
                    .any(|m| m.fstype == fstype && m.target == target),
                "{fstype} at {target} missing"
            );
        }
        for (i, m) in MOUNTS.iter().enumerate() {
            // Every earlier mount that is a parent of this target comes
            // first; no later mount hides this one.
            for later in &targets[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{later}/")),
                    "{} is mounted before its parent {later}",
                    m.target
                );
            }
            assert_eq!(
                targets.iter().filter(|t| **t == m.target).count(),
                1,
                "{} twice",
                m.target
            );
        }
        // Nothing executable or device-bearing where it need not be.
        for m in MOUNTS {
            assert!(
                m.flags.contains(MsFlags::MS_NOSUID),
                "{} allows suid",
                m.target
            );
        }
        let cg = MOUNTS.iter().find(|m| m.fstype == "cgroup2").unwrap();
        assert_eq!(cg.data, Some("nsdelegate"));
    }
}
