//! Host entropy for the guest's RNG: every CreateSandbox carries some, so
//! that VMs restored from one snapshot do not share their kernel's RNG
//! state (the agent mixes it in before anything else).

/// How much each sandbox gets: twice the 32 bytes the agent requires.
pub const SANDBOX_ENTROPY_BYTES: usize = 64;

/// `len` bytes from the host's `getrandom(2)` (the CRNG; blocks only until
/// the host's pool is first seeded): the VMM's virtio-rng source, short
/// reads and EINTR retried there.
pub fn host_entropy(len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    cocoon_vmm::devices::virtio::rng::fill_random(&mut buf).map_err(|e| e.0)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_whole_buffer_with_fresh_bytes() {
        let a = host_entropy(SANDBOX_ENTROPY_BYTES).unwrap();
        let b = host_entropy(SANDBOX_ENTROPY_BYTES).unwrap();
        assert_eq!(a.len(), SANDBOX_ENTROPY_BYTES);
        // 2^-512 to fail by chance; a stuck or unfilled buffer fails.
        assert_ne!(a, b);
        assert_ne!(a, vec![0; SANDBOX_ENTROPY_BYTES]);
        // Larger than one getrandom call returns (32 MiB - 1 at most).
        assert_eq!(host_entropy(33 << 20).unwrap().len(), 33 << 20);
        assert!(host_entropy(0).unwrap().is_empty());
    }
}
