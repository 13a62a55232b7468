//! Binds through the new mount API: `open_tree(OPEN_TREE_CLONE)` makes a
//! detached copy, `mount_setattr` sets its flags while nothing can see it,
//! `move_mount` attaches it. A read-only bind is therefore read-only in
//! every mount namespace it propagates to (a remount after the fact is not
//! propagated: the class of CVE-2020-28914).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::dir::raw_openat2;
use super::{last_os_error, Dir, HostFsError};

// <linux/mount.h>; stable kernel ABI since 5.2 (open_tree, move_mount) and
// 5.12 (mount_setattr).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_NOSUID: u64 = 0x02;
const MOUNT_ATTR_NODEV: u64 = 0x04;
const MOUNT_ATTR_SIZE_VER0: usize = 32;

#[repr(C)]
struct MountAttrRaw {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Whether a bind receives the mounts made below its source on the host
/// after it was made (a clone of a shared mount would be its peer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Receives nothing: `rprivate`, the default of a bind.
    #[default]
    Private,
    /// Receives the source's new mounts and sends nothing back: `rslave`.
    Slave,
}

impl Propagation {
    fn bits(self) -> u64 {
        match self {
            Propagation::Private => libc::MS_PRIVATE,
            Propagation::Slave => libc::MS_SLAVE,
        }
    }
}

/// Flags a bind gets before it is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountAttr {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub propagation: Propagation,
}

impl MountAttr {
    fn bits(self) -> u64 {
        let mut b = 0;
        if self.readonly {
            b |= MOUNT_ATTR_RDONLY;
        }
        if self.nosuid {
            b |= MOUNT_ATTR_NOSUID;
        }
        if self.nodev {
            b |= MOUNT_ATTR_NODEV;
        }
        b
    }
}

/// A copy of a mount tree that is not attached anywhere yet.
#[derive(Debug)]
pub struct DetachedMount {
    fd: OwnedFd,
    source: String,
}

impl DetachedMount {
    /// Clones the mount(s) at `src` (a host path containerd gave us; the
    /// whole tree below it when `recursive`, as `rbind`).
    pub fn clone_path(src: &Path, recursive: bool) -> Result<DetachedMount, HostFsError> {
        let c = CString::new(src.as_os_str().as_bytes())
            .map_err(|_| HostFsError::BadName(src.display().to_string()))?;
        let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
        if recursive {
            flags |= libc::AT_RECURSIVE as libc::c_uint;
        }
        // SAFETY: open_tree with AT_FDCWD and a NUL-terminated path; the fd
        // returned is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
        if fd < 0 {
            return last_os_error("cloning the mount at", src.display());
        }
        Ok(DetachedMount {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            source: src.display().to_string(),
        })
    }

    /// Sets `attr` (flags and propagation) on every mount of the detached
    /// tree.
    pub fn set_attr(&self, attr: MountAttr) -> Result<(), HostFsError> {
        let raw = MountAttrRaw {
            attr_set: attr.bits(),
            attr_clr: 0,
            propagation: attr.propagation.bits(),
            userns_fd: 0,
        };
        let empty = c"";
        // SAFETY: mount_setattr on our detached-tree fd with AT_EMPTY_PATH and
        // a mount_attr of the size we pass.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
                &raw as *const MountAttrRaw,
                MOUNT_ATTR_SIZE_VER0,
            )
        };
        if r < 0 {
            return last_os_error("setting the flags of the bind of", &self.source);
        }
        Ok(())
    }

    /// Attaches the tree on the directory `target` (already resolved
    /// safely); consumes the detached copy.
    pub fn attach(self, target: &Dir) -> Result<(), HostFsError> {
        self.move_to(target.as_fd(), &target.path().display())
    }

    /// Attaches the tree on the regular file `name` in `dir` (a file
    /// bind's target), without following a symlink there.
    pub fn attach_file(self, dir: &Dir, name: &str) -> Result<(), HostFsError> {
        if name.contains('/') || name == ".." || name == "." || name.is_empty() {
            return Err(HostFsError::BadName(name.to_string()));
        }
        let c = CString::new(name).map_err(|_| HostFsError::BadName(name.to_string()))?;
        let path = dir.path().join(name);
        // RESOLVE_NO_SYMLINKS refuses a symlink at `name` (ELOOP); O_NOFOLLOW
        // would instead return the link itself.
        let target = raw_openat2(
            dir.as_fd(),
            &c,
            libc::O_PATH,
            0,
            libc::RESOLVE_BENEATH
                | libc::RESOLVE_NO_SYMLINKS
                | libc::RESOLVE_NO_MAGICLINKS
                | libc::RESOLVE_NO_XDEV,
        )
        .map_err(super::sys_err("opening", path.display()))?;
        self.move_to(target.as_fd(), &path.display())
    }

    /// move_mount(2) of this tree onto the object `target` refers to.
    fn move_to(
        self,
        target: BorrowedFd<'_>,
        what: &dyn std::fmt::Display,
    ) -> Result<(), HostFsError> {
        let empty = c"";
        // SAFETY: move_mount between two fds we hold, both with empty paths.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                target.as_raw_fd(),
                empty.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if r < 0 {
            return last_os_error("mounting onto", what);
        }
        Ok(())
    }
}
