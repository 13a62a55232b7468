//! Reseeding the guest kernel's RNG from host entropy (CreateSandbox's
//! `entropy`), before anything else the call does.
//!
//! VMs restored from one snapshot of a booted guest start with the same
//! kernel RNG state; until it is reseeded, clones would draw the same
//! numbers. The host's bytes are written into the input pool with
//! RNDADDENTROPY (credited at 8 bits a byte), then RNDRESEEDCRNG makes the
//! CRNG take them now rather than at its next scheduled reseed.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use ttrpc::Code;

use crate::error_code::RpcCode;

/// The least the host must send: 256 bits, a full CRNG seed.
pub const MIN_ENTROPY_BYTES: usize = 32;
/// The most the agent takes in one call.
pub const MAX_ENTROPY_BYTES: usize = 4096;
/// Where the ioctls are issued (devtmpfs provides it in the guest; any
/// random device takes them).
const RANDOM_DEVICE: &str = "/dev/urandom";

#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    #[error(
        "invalid argument: entropy: {len} bytes, the host must send between \
         {MIN_ENTROPY_BYTES} and {MAX_ENTROPY_BYTES}"
    )]
    Length { len: usize },
    #[error("opening {RANDOM_DEVICE} to reseed the guest RNG")]
    Open(#[source] std::io::Error),
    #[error("adding the host's entropy to the guest RNG (RNDADDENTROPY)")]
    Add(#[source] Errno),
    #[error("reseeding the guest CRNG (RNDRESEEDCRNG)")]
    Reseed(#[source] Errno),
}

impl RpcCode for EntropyError {
    fn rpc_code(&self) -> Code {
        match self {
            EntropyError::Length { .. } => Code::INVALID_ARGUMENT,
            _ => Code::INTERNAL,
        }
    }
}

/// `struct rand_pool_info` (linux/random.h) with room for the largest
/// buffer we accept: `buf` follows the two ints at offset 8, as the
/// kernel's `__u32 buf[]` does.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY_BYTES],
}

// _IOW('R', 0x03, int[2]): the size is the header's, not the buffer's.
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
    RandPoolInfo
);
// _IO('R', 0x07), Linux 4.17 and later.
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Refuses entropy the host should not have sent: too little to seed the
/// CRNG, or more than one call takes.
pub fn check_length(entropy: &[u8]) -> Result<(), EntropyError> {
    if !(MIN_ENTROPY_BYTES..=MAX_ENTROPY_BYTES).contains(&entropy.len()) {
        return Err(EntropyError::Length { len: entropy.len() });
    }
    Ok(())
}

/// Mixes `entropy` into the kernel's RNG and reseeds the CRNG from it.
/// Needs CAP_SYS_ADMIN (the agent is root, in the guest and in the host
/// tests). Adding entropy never lowers the pool's quality.
pub fn reseed(entropy: &[u8]) -> Result<(), EntropyError> {
    check_length(entropy)?;
    let mut info = Box::new(RandPoolInfo {
        // In range: at most 8 * MAX_ENTROPY_BYTES.
        entropy_count: (entropy.len() * 8) as libc::c_int,
        buf_size: entropy.len() as libc::c_int,
        buf: [0; MAX_ENTROPY_BYTES],
    });
    info.buf[..entropy.len()].copy_from_slice(entropy);
    let dev = File::open(RANDOM_DEVICE).map_err(EntropyError::Open)?;
    // SAFETY: `dev` is an open random device; `info` is a live, initialised
    // rand_pool_info whose `buf_size` bytes of `buf` are in bounds. The
    // kernel only reads it, during the call.
    unsafe { rnd_add_entropy(dev.as_raw_fd(), &*info) }.map_err(EntropyError::Add)?;
    // SAFETY: an argument-less ioctl on the open random device.
    match unsafe { rnd_reseed_crng(dev.as_raw_fd()) } {
        Ok(_) => {}
        // A kernel without it (before 4.17): the added entropy is mixed in
        // at the CRNG's next reseed, which comes on its own.
        Err(e @ (Errno::ENOTTY | Errno::EINVAL)) => {
            tracing::warn!(error = %e, "RNDRESEEDCRNG unsupported; the entropy was added");
        }
        // The CRNG is not seeded yet: it will be, from the input pool that
        // now holds the host's entropy.
        Err(Errno::ENODATA) => {
            tracing::warn!("the CRNG is not seeded yet; it will be from the added entropy");
        }
        Err(e) => return Err(EntropyError::Reseed(e)),
    }
    tracing::debug!(
        bytes = entropy.len(),
        "guest RNG reseeded from host entropy"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_bounds() {
        for len in [0, 1, MIN_ENTROPY_BYTES - 1, MAX_ENTROPY_BYTES + 1] {
            let e = check_length(&vec![7; len]).unwrap_err();
            assert_eq!(e.rpc_code(), Code::INVALID_ARGUMENT);
            let msg = e.to_string();
            assert!(
                msg.contains("entropy") && msg.contains(&format!("{len} bytes")),
                "{msg}"
            );
        }
        for len in [MIN_ENTROPY_BYTES, 64, MAX_ENTROPY_BYTES] {
            check_length(&vec![7; len]).unwrap();
        }
    }

    #[test]
    fn short_entropy_is_refused_before_any_ioctl() {
        // Not even the device is opened (this runs as any user).
        assert!(matches!(
            reseed(&[1; 31]),
            Err(EntropyError::Length { len: 31 })
        ));
    }

    #[test]
    fn header_layout_matches_the_kernel() {
        assert_eq!(std::mem::offset_of!(RandPoolInfo, entropy_count), 0);
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf_size), 4);
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf), 8);
        // RNDADDENTROPY and RNDRESEEDCRNG as <linux/random.h> spells them
        // on x86 and arm64.
        assert_eq!(
            nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
            0x4008_5203
        );
        assert_eq!(nix::request_code_none!(b'R', 0x07), 0x5207);
    }
}
