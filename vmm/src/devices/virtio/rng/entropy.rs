//! The host's entropy: `getrandom(2)`.

/// `getrandom(2)` failed.
#[derive(Debug, thiserror::Error)]
#[error("getrandom failed")]
pub struct EntropyError(#[source] pub std::io::Error);

/// Fill `buf` from `getrandom(2)` (the urandom pool; never blocks once the
/// host's pool is initialised).
pub fn fill_random(buf: &mut [u8]) -> Result<(), EntropyError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe the writable slice `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(EntropyError(e));
        }
        done += n as usize;
    }
    Ok(())
}
