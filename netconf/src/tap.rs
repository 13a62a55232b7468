//! Host side: the pod's TAP device, made for the VMM.
//!
//! It is not persistent: it lives as long as a file descriptor of it is
//! open (the VMM's, once the shim has handed it over and closed its own),
//! so a VMM that dies for any reason takes it along, and nothing but
//! `CAP_NET_ADMIN` can attach to it. `IFF_NO_PI` without `IFF_VNET_HDR`:
//! plain frames, as `cocoon-vmm --net` expects.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Fail instead of attaching when the interface exists.
const IFF_TUN_EXCL: libc::c_short = 0x0800_u16 as libc::c_short;
const TUN_DEVICE: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{0:?} is not an interface name (1-15 characters, no '/', ':' or spaces)")]
    BadName(String),
    #[error("opening {TUN_DEVICE} (is the tun module loaded?)")]
    Open(#[source] std::io::Error),
    #[error(
        "interface {0} already exists in the pod's network namespace (another pod, or a leftover?)"
    )]
    Exists(String),
    #[error("creating TAP {name}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Whether `name` is a name the kernel takes for an interface.
pub fn valid_ifname(name: &str) -> bool {
    (1..libc::IFNAMSIZ).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':' && b != b',')
}

/// Creates TAP `name` in the calling thread's network namespace and
/// returns its queue's descriptor (blocking, close-on-exec). An existing
/// interface of that name is an error, never attached to.
pub fn create(name: &str) -> Result<OwnedFd, TapError> {
    if !valid_ifname(name) {
        return Err(TapError::BadName(name.to_string()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(TapError::Open)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq; `req` is a properly
    // sized, initialised ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) | Some(libc::EEXIST) => TapError::Exists(name.to_string()),
            _ => TapError::Create {
                name: name.to_string(),
                source: e,
            },
        });
    }
    Ok(file.into())
}
