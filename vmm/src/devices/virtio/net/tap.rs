//! Attaching to an existing TAP interface through /dev/net/tun.
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
use std::os::unix::io::{AsRawFd, RawFd};

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
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
