//! Attaching to an existing TAP interface through /dev/net/tun, or taking
//! over a TAP queue descriptor the caller opened for us (`--net fd=N`:
//! the shim makes the pod's TAP inside the pod's network namespace, which
//! this process never joins).
//!
//! The TAP is opened with `IFF_TAP | IFF_NO_PI` and **without**
//! `IFF_VNET_HDR`: we negotiate no offloads, so the 12-byte
//! `virtio_net_hdr_v1` carries nothing, and stripping it ourselves (tx) and
//! prepending a zero header (rx) keeps guest-controlled GSO/checksum fields
//! away from the host kernel entirely.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `TUNGETIFF` = `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_DEVICE: &str = "/dev/net/tun";

/// Errors attaching to a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No interface of that name (in this network namespace).
    #[error("TAP interface {0:?} does not exist in this network namespace; create it with `ip tuntap add {0} mode tap` (and `ip link set {0} up`)")]
    Missing(String),
    /// The interface exists but is not a (single-queue) TAP.
    #[error("interface {0:?} is not a single-queue TAP device")]
    NotTap(String),
    /// /dev/net/tun is absent.
    #[error("{TUN_DEVICE} is missing: load the tun module (modprobe tun)")]
    NoTunDevice,
    /// EPERM/EACCES: not ours and no CAP_NET_ADMIN.
    #[error("no permission to attach to TAP {0:?}: run as root (CAP_NET_ADMIN) or create it with `ip tuntap add {0} mode tap user <you>`")]
    Permission(String),
    /// `fd=N` names no open descriptor.
    #[error(
        "--net fd={0}: no such open file descriptor (the caller must leave it open for cocoon-vmm)"
    )]
    FdNotOpen(RawFd),
    /// `fd=N` is open but not a TAP queue.
    #[error("--net fd={0}: not a TAP device's descriptor")]
    FdNotTap(RawFd),
    /// `fd=N` is a TUN, a multi-queue TAP, or uses headers we do not speak.
    #[error("--net fd={fd}: {name:?} is not a single-queue TAP opened with IFF_NO_PI and without IFF_VNET_HDR (flags {flags:#x})")]
    FdFlags {
        /// The descriptor.
        fd: RawFd,
        /// The interface it belongs to.
        name: String,
        /// Its TUNGETIFF flags.
        flags: libc::c_short,
    },
    /// Other failures (a TUN, a multi-queue TAP, busy...).
    #[error("cannot attach to TAP {name:?}")]
    Attach {
        /// The interface.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP queue (non-blocking).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to the existing TAP `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        // if_nametoindex asks the kernel, so it sees our network namespace
        // (sysfs may be mounted for another one).
        let exists = CString::new(name)
            .ok()
            .filter(|_| name.len() < libc::IFNAMSIZ)
            // SAFETY: `c` is a valid NUL-terminated string for the call.
            .is_some_and(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0);
        if !exists {
            return Err(TapError::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice,
                io::ErrorKind::PermissionDenied => TapError::Permission(name.to_string()),
                _ => TapError::Attach {
                    name: name.to_string(),
                    source: e,
                },
            })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq; `req` is a properly
        // sized and initialised ifreq that lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.to_string()),
                // An existing interface that is not a TAP of the flags we ask.
                Some(libc::EINVAL) => TapError::NotTap(name.to_string()),
                _ => TapError::Attach {
                    name: name.to_string(),
                    source: e,
                },
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// Takes over `fd`, a TAP queue descriptor the caller left open for
    /// this process (`--net fd=N`), after checking that it is one: a
    /// single-queue TAP with `IFF_NO_PI` and without `IFF_VNET_HDR`. It is
    /// made non-blocking and close-on-exec. The caller must not use `fd`
    /// afterwards, nor pass it twice.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::FdNotOpen(fd));
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes an ifreq into `req`, which is properly
        // sized and lives across the call; on anything but a tun queue it
        // fails without writing.
        if unsafe { libc::ioctl(fd, TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::FdNotTap(fd));
        }
        let len = req
            .name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let flags = req.flags;
        if flags & IFF_TAP == 0
            || flags & IFF_NO_PI == 0
            || flags & (IFF_VNET_HDR | IFF_MULTI_QUEUE) != 0
        {
            return Err(TapError::FdFlags { fd, name, flags });
        }
        let fail = |name: &str| TapError::Attach {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        };
        // SAFETY: F_GETFL/F_SETFL/F_SETFD change only this descriptor's flags.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(fail(&name));
            }
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                return Err(fail(&name));
            }
        }
        // SAFETY: `fd` is open (checked above) and was inherited for this
        // device alone: nothing else in this process owns it (the caller
        // passes each descriptor once, see `from_fd`'s contract).
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Tap { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame (`WouldBlock` when none is queued).
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe the writable slice `buf`.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Write one frame.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe the readable slice `frame`.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// A second descriptor for the same queue (for the worker thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
