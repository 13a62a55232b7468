//! A directory fd and the path operations beneath it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{last_os_error, sys_err, HostFsError};

/// Never leave the starting directory, never follow a symlink or a
/// `/proc` magic link on the way.
const RESOLVE_SAFE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// An open directory (an `O_PATH` fd) and, for messages only, its path.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(p: &Path) -> Result<CString, HostFsError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| HostFsError::BadName(p.display().to_string()))
}

/// A single path component: no `/`, not `.` or `..`, not empty.
fn component(name: &str) -> Result<CString, HostFsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(HostFsError::BadName(name.to_string()));
    }
    cstr(Path::new(name))
}

/// openat2(2): `path` beneath `dirfd` with `resolve` flags; the caller
/// names the result in its error.
pub(super) fn raw_openat2(
    dirfd: BorrowedFd<'_>,
    path: &std::ffi::CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = resolve;
    // SAFETY: openat2 with a valid dir fd, a NUL-terminated path and a
    // correctly sized open_how; the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Dir {
    /// Opens a directory the host owns (the run dir, a pod dir the shim
    /// created, a container's rootfs given by containerd). The last
    /// component must not be a symlink.
    pub fn open(path: &Path) -> Result<Dir, HostFsError> {
        let c = cstr(path)?;
        // SAFETY: a valid NUL-terminated path; the fd returned is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return last_os_error("opening", path.display());
        }
        Ok(Dir {
            // SAFETY: fd is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `/proc/self/fd/<fd>/<name>`: names `name` in this directory for the
    /// calls that take no directory fd (umount2, mount).
    pub fn proc_path(&self, name: &str) -> PathBuf {
        let base = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        if name.is_empty() {
            base
        } else {
            base.join(name)
        }
    }

    fn openat2(
        &self,
        rel: &Path,
        flags: i32,
        mode: u32,
        resolve: u64,
    ) -> Result<OwnedFd, HostFsError> {
        // No O_NOFOLLOW: with O_PATH it would hand back a symlink itself;
        // RESOLVE_NO_SYMLINKS refuses one in the last component too (ELOOP).
        raw_openat2(self.fd.as_fd(), &cstr(rel)?, flags, mode, resolve)
            .map_err(sys_err("opening", self.path.join(rel).display()))
    }

    /// Opens `rel` beneath this directory: no symlink, no magic link, no
    /// mount crossing anywhere on the path.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> Result<Dir, HostFsError> {
        let rel = rel.as_ref();
        let fd = self.openat2(
            rel,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            RESOLVE_SAFE | libc::RESOLVE_NO_XDEV,
        )?;
        Ok(Dir {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Like [`Dir::open_dir`] but may enter a mount on the way (to open the
    /// root of a mount the shim made, such as the pod's private tree).
    pub fn open_mounted_dir(&self, rel: impl AsRef<Path>) -> Result<Dir, HostFsError> {
        let rel = rel.as_ref();
        let fd = self.openat2(rel, libc::O_PATH | libc::O_DIRECTORY, 0, RESOLVE_SAFE)?;
        Ok(Dir {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Creates directory `name` here (or opens it if it is already a real
    /// directory) and opens it. A symlink at `name` is refused.
    pub fn mkdir(&self, name: &str, mode: u32) -> Result<Dir, HostFsError> {
        let c = component(name)?;
        // SAFETY: mkdirat with a valid dir fd and a NUL-terminated name.
        let r = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(sys_err("creating", self.path.join(name).display())(e));
            }
        }
        self.open_dir(name)
    }

    /// Creates the empty regular file `name` (a bind target); an existing
    /// entry of any kind is an error, so nothing is ever truncated.
    pub fn create_file(&self, name: &str, mode: u32) -> Result<(), HostFsError> {
        component(name)?;
        self.openat2(
            Path::new(name),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            mode,
            RESOLVE_SAFE | libc::RESOLVE_NO_XDEV,
        )?;
        Ok(())
    }

    /// Detaches the mount at `name` without following a symlink there.
    /// `Ok(false)`: nothing is mounted at `name` (or it does not exist).
    pub fn unmount(&self, name: &str) -> Result<bool, HostFsError> {
        component(name)?;
        let p = cstr(&self.proc_path(name))?;
        // SAFETY: umount2 with a NUL-terminated path; UMOUNT_NOFOLLOW keeps
        // the last component from being followed, and the directory part is
        // this fd, resolved safely when it was opened.
        let r = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
            _ => Err(sys_err("unmounting", self.path.join(name).display())(e)),
        }
    }

    /// Removes the entry `name` (a directory when `dir`); a missing entry
    /// is not an error.
    pub fn remove(&self, name: &str, dir: bool) -> Result<(), HostFsError> {
        let c = component(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: unlinkat with a valid dir fd and a NUL-terminated name.
        let r = unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(sys_err("removing", self.path.join(name).display())(e));
            }
        }
        Ok(())
    }

    /// Whether `rel` exists inside this directory taken as a root: absolute
    /// symlinks and `..` stay inside it (a container rootfs).
    pub fn exists_in_root(&self, rel: impl AsRef<Path>) -> bool {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        if rel.as_os_str().is_empty() {
            return true;
        }
        let Ok(c) = cstr(rel) else { return false };
        raw_openat2(
            self.fd.as_fd(),
            &c,
            libc::O_PATH,
            0,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        )
        .is_ok()
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn refuses_symlinks_anywhere_on_the_path() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        symlink(outside.path(), t.path().join("a/link")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        let e = d.open_dir("a/link").unwrap_err();
        assert!(matches!(e, HostFsError::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains("a/link"), "{e}");
        let a = d.open_dir("a").unwrap();
        assert!(a.mkdir("link", 0o700).is_err());
        assert!(a.create_file("link", 0o600).is_err());
        // Nothing appeared outside.
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // `..` cannot leave the directory either.
        assert!(a.open_dir("../..").is_err());
    }

    #[test]
    fn create_file_never_truncates() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"keep").unwrap();
        let d = Dir::open(t.path()).unwrap();
        assert!(d.create_file("f", 0o600).is_err());
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"keep");
        d.create_file("g", 0o600).unwrap();
        assert!(t.path().join("g").is_file());
    }

    #[test]
    fn names_must_be_one_component() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(
                matches!(d.mkdir(bad, 0o700), Err(HostFsError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn exists_in_root_keeps_absolute_links_inside() {
        let root = tempfile::tempdir().unwrap();
        // /etc/hostname exists on the host; inside this root it does not.
        symlink("/etc", root.path().join("etc")).unwrap();
        let d = Dir::open(root.path()).unwrap();
        assert!(!d.exists_in_root("/etc/hostname"));
        std::fs::create_dir(root.path().join("data")).unwrap();
        assert!(d.exists_in_root("/data"));
    }
}
