//! A userfaultfd (`userfaultfd(2)`, `ioctl_userfaultfd(2)`): the few calls
//! that lazy guest memory needs, on the kernel's ABI (x86_64) without a
//! bindgen'd crate. Missing-page faults in a registered range are read as
//! [`Fault`]s and resolved with [`Uffd::copy`] or [`Uffd::zero`].

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// `UFFD_API`.
const UFFD_API: u64 = 0xaa;
/// `_IOC(dir, 0xAA, nr, size)`.
const fn uffd_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_RW: u64 = 3;
/// `UFFDIO_API`.
const UFFDIO_API: u64 = uffd_ioc(IOC_RW, 0x3f, std::mem::size_of::<ApiArg>());
/// `UFFDIO_REGISTER`.
const UFFDIO_REGISTER: u64 = uffd_ioc(IOC_RW, 0x00, std::mem::size_of::<RegisterArg>());
/// `UFFDIO_WAKE`.
pub const UFFDIO_WAKE: u64 = uffd_ioc(IOC_READ, 0x02, std::mem::size_of::<Range>());
/// `UFFDIO_COPY`.
pub const UFFDIO_COPY: u64 = uffd_ioc(IOC_RW, 0x03, std::mem::size_of::<CopyArg>());
/// `UFFDIO_ZEROPAGE`.
pub const UFFDIO_ZEROPAGE: u64 = uffd_ioc(IOC_RW, 0x04, std::mem::size_of::<ZeroArg>());
/// `UFFDIO_REGISTER_MODE_MISSING`.
const MODE_MISSING: u64 = 1;
/// `UFFD_EVENT_PAGEFAULT`.
const EVENT_PAGEFAULT: u8 = 0x12;
/// `sizeof(struct uffd_msg)`.
const MSG_SIZE: usize = 32;

#[repr(C)]
#[derive(Default)]
struct ApiArg {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct RegisterArg {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct CopyArg {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct ZeroArg {
    range: Range,
    mode: u64,
    zeropage: i64,
}

/// Errors of a userfaultfd.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// `userfaultfd(2)` failed (no kernel support, or not allowed).
    #[error("cannot create a userfaultfd")]
    Create(#[source] io::Error),
    /// `UFFDIO_API` failed.
    #[error("the kernel refused the userfaultfd API handshake")]
    Api(#[source] io::Error),
    /// `UFFDIO_REGISTER` failed.
    #[error("cannot register {len:#x} bytes at {start:#x} for missing-page faults")]
    Register {
        /// Start of the range.
        start: u64,
        /// Its length.
        len: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading a fault failed.
    #[error("cannot read from the userfaultfd")]
    Read(#[source] io::Error),
    /// Resolving a fault failed.
    #[error("cannot resolve the fault at {addr:#x} ({what})")]
    Resolve {
        /// The page.
        addr: u64,
        /// `UFFDIO_COPY`, `UFFDIO_ZEROPAGE` or `UFFDIO_WAKE`.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A missing-page fault: the faulting address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The address that faulted (not page aligned).
    pub addr: u64,
}

/// A userfaultfd, non-blocking and close-on-exec.
#[derive(Debug)]
pub struct Uffd {
    file: File,
}

fn ioctl<T>(fd: &File, nr: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the repr(C) struct `nr` expects, alive and
    // writable for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), nr as libc::c_ulong, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// A new userfaultfd that handles faults from the kernel too (KVM
    /// touching guest memory for a vCPU): needs `CAP_SYS_PTRACE` (root)
    /// unless `vm.unprivileged_userfaultfd` is 1.
    pub fn new() -> Result<Self, UffdError> {
        // SAFETY: userfaultfd takes flags only and returns a new fd.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(UffdError::Create(io::Error::last_os_error()));
        }
        // SAFETY: the fd is new and ours alone.
        let file = unsafe { File::from_raw_fd(fd as i32) };
        let mut api = ApiArg {
            api: UFFD_API,
            ..Default::default()
        };
        ioctl(&file, UFFDIO_API, &mut api).map_err(UffdError::Api)?;
        Ok(Uffd { file })
    }

    /// Report missing-page faults in `[start, start + len)` (page
    /// aligned, mapped).
    pub fn register(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut arg = RegisterArg {
            range: Range { start, len },
            mode: MODE_MISSING,
            ..Default::default()
        };
        ioctl(&self.file, UFFDIO_REGISTER, &mut arg).map_err(|source| UffdError::Register {
            start,
            len,
            source,
        })
    }

    /// The next fault, or `None` when none is waiting.
    pub fn read_fault(&self) -> Result<Option<Fault>, UffdError> {
        loop {
            let mut msg = [0u8; MSG_SIZE];
            // SAFETY: reading into a buffer of MSG_SIZE bytes we own.
            let n = unsafe { libc::read(self.file.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_SIZE) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(None),
                    Some(libc::EINTR) => continue,
                    _ => Err(UffdError::Read(e)),
                };
            }
            if n as usize != MSG_SIZE {
                return Err(UffdError::Read(io::ErrorKind::UnexpectedEof.into()));
            }
            // Only page faults were asked for; anything else is skipped.
            if msg[0] == EVENT_PAGEFAULT {
                let addr = u64::from_ne_bytes(msg[16..24].try_into().expect("8 bytes"));
                return Ok(Some(Fault { addr }));
            }
        }
    }

    /// Map a copy of the page at `src` (page aligned, `len` bytes) at
    /// `dst` and wake the faulting threads. `Ok(false)`: the page was
    /// there already (populated another way); the waiters are woken.
    pub fn copy(&self, dst: u64, src: *const u8, len: u64) -> Result<bool, UffdError> {
        let mut arg = CopyArg {
            dst,
            src: src as u64,
            len,
            ..Default::default()
        };
        self.resolve(dst, len, "UFFDIO_COPY", UFFDIO_COPY, &mut arg)
    }

    /// Map zero pages at `[dst, dst + len)` and wake the faulting threads;
    /// `Ok(false)` as for [`Uffd::copy`].
    pub fn zero(&self, dst: u64, len: u64) -> Result<bool, UffdError> {
        let mut arg = ZeroArg {
            range: Range { start: dst, len },
            ..Default::default()
        };
        self.resolve(dst, len, "UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE, &mut arg)
    }

    fn resolve<T>(
        &self,
        dst: u64,
        len: u64,
        what: &'static str,
        nr: u64,
        arg: &mut T,
    ) -> Result<bool, UffdError> {
        loop {
            match ioctl(&self.file, nr, arg) {
                Ok(()) => return Ok(true),
                // The mapping is changing (a fork, a remap): try again.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let mut range = Range { start: dst, len };
                    ioctl(&self.file, UFFDIO_WAKE, &mut range).map_err(|source| {
                        UffdError::Resolve {
                            addr: dst,
                            what: "UFFDIO_WAKE",
                            source,
                        }
                    })?;
                    return Ok(false);
                }
                Err(source) => {
                    return Err(UffdError::Resolve {
                        addr: dst,
                        what,
                        source,
                    })
                }
            }
        }
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From <linux/userfaultfd.h> on x86_64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
    }
}
