//! The `SIGSYS` handler of enforce mode: names the thread and the system
//! call on stderr, then makes [`FORBIDDEN`] with `SIGSYS` blocked, which
//! makes the kernel reset the handler and kill the process with `SIGSYS`.
//! Only async-signal-safe work: a stack buffer and `write(2)`.

use std::cell::Cell;
use std::io;

use super::{syscall_name, ThreadKind};

/// A system call on no list: what the handler makes to die of `SIGSYS`.
pub const FORBIDDEN: i64 = libc::SYS_getppid;

thread_local! {
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

pub(super) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Appends `s` to `buf` at `*len`, truncating.
fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    for &b in s {
        if *len < buf.len() {
            buf[*len] = b;
            *len += 1;
        }
    }
}

fn push_number(buf: &mut [u8], len: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(buf, len, &digits[i..]);
}

extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // struct siginfo for SIGSYS: signo, errno, code, padding (16 bytes),
    // then _call_addr (8 bytes), _syscall (int), _arch.
    // SAFETY: the kernel passes a valid siginfo; offset 24 is si_syscall.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let kind = KIND.with(Cell::get);
    let mut buf = [0u8; 256];
    let mut len = 0;
    push(&mut buf, &mut len, b"cocoon-vmm: seccomp: the ");
    push(
        &mut buf,
        &mut len,
        kind.map_or("unfiltered", ThreadKind::name).as_bytes(),
    );
    push(&mut buf, &mut len, b" thread made system call ");
    push_number(&mut buf, &mut len, nr as u64);
    push(&mut buf, &mut len, b" (");
    push(
        &mut buf,
        &mut len,
        syscall_name(i64::from(nr)).unwrap_or("unknown").as_bytes(),
    );
    push(
        &mut buf,
        &mut len,
        b"), which its allow-list lacks: killed with SIGSYS\n",
    );
    // SAFETY: write(2) of a stack buffer is async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        // SIGSYS is blocked in its handler: the kernel resets it to the
        // default action and kills the process.
        libc::syscall(FORBIDDEN);
        // Only reached without a filter on this thread.
        libc::_exit(128 + libc::SIGSYS);
    }
}
