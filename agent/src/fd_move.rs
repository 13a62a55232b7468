//! Moving descriptors onto fixed numbers in a child that is about to run
//! a helper (between fork and exec, or in a helper the fork server
//! forked): async-signal-safe, no allocation.

use std::io;
use std::os::fd::RawFd;

/// Moves each of `fds` onto the number at the same index of `targets`.
/// First every one is copied above 10 and its original closed, so that no
/// placement overwrites a source still to be placed wherever the sources
/// sit (on a target included) and nothing later closes a number that now
/// holds another file; then each copy is `dup2`'d onto its target (which
/// clears close-on-exec there) and closed. `fds` are given up: they are
/// closed here, placed or not.
///
/// # Safety
///
/// Call only in a process with one thread (a child after fork); `fds`
/// must be open descriptors that nothing in this process owns or uses
/// afterwards, and the `targets` numbers nothing here still needs.
pub unsafe fn move_onto<const N: usize>(fds: [RawFd; N], targets: [RawFd; N]) -> io::Result<()> {
    let mut high = [-1; N];
    for (slot, fd) in high.iter_mut().zip(fds) {
        // SAFETY (the caller's contract): `fd` is open and unused
        // elsewhere; fcntl and close are async-signal-safe.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if h < 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = h;
        // SAFETY: the original is the caller's to give up.
        unsafe { libc::close(fd) };
    }
    for (h, target) in high.into_iter().zip(targets) {
        // SAFETY: `h` is the copy made above; the target is free for it
        // (the caller's contract).
        if unsafe { libc::dup2(h, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the copy above 10 is ours and placed.
        unsafe { libc::close(h) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    /// Three files, the third on the number that is the first's target
    /// (placed naively, the first would overwrite it before it moves),
    /// moved in a forked child (which only makes system calls: the test
    /// process has other threads); each target then holds its own file.
    #[test]
    fn sources_on_targets_land_where_they_should() {
        let mut raw = [0; 3];
        for (i, slot) in raw.iter_mut().enumerate() {
            let mut f = tempfile::tempfile().unwrap();
            write!(f, "file {i}").unwrap();
            *slot = f.into_raw_fd();
        }
        let targets = [141, 142, 143];
        // SAFETY: plain descriptor calls on this test's own files.
        unsafe {
            assert_eq!(libc::dup2(raw[2], 141), 141);
            libc::close(raw[2]);
        }
        raw[2] = 141;
        // SAFETY: the child makes system calls only, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: one thread in the child; the sources are given up.
            let mut code = match unsafe { move_onto(raw, targets) } {
                Ok(()) => 0,
                Err(_) => 10,
            };
            for (i, t) in targets.iter().enumerate() {
                let mut buf = [0u8; 16];
                // SAFETY: reading into a stack buffer of its length.
                let n = unsafe { libc::pread(*t, buf.as_mut_ptr().cast(), buf.len(), 0) };
                let want = [b'f', b'i', b'l', b'e', b' ', b'0' + i as u8];
                if n != want.len() as isize || buf[..want.len()] != want {
                    code = 20 + i as i32;
                }
            }
            for fd in raw {
                // SAFETY: fcntl probe of a number; the sources must be closed.
                let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
                if open && !targets.contains(&fd) {
                    code = 30;
                }
            }
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        for fd in raw {
            // SAFETY: closing this test's own descriptors.
            unsafe { libc::close(fd) };
        }
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "10: move_onto failed, 2x: target x holds the wrong file, 30: a source left open"
        );
    }
}
