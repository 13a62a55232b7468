//! virtio-rng: the guest reads `cocoon.rng.bytes` (default 64) bytes from
//! /dev/hwrng, which the virtio-rng driver feeds.

use crate::params::Params;
use std::io::Read;

pub fn check(p: &Params) -> Result<String, String> {
    let want: usize = match p.get("rng", "bytes") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("cocoon.rng.bytes={v} is not a number"))?,
        None => 64,
    };
    let current = std::fs::read_to_string("/sys/class/misc/hw_random/rng_current")
        .map_err(|e| format!("no hw_random device: {e}"))?;
    if !current.trim().starts_with("virtio_rng") {
        return Err(format!(
            "current hw_random source is '{}', not virtio_rng",
            current.trim()
        ));
    }
    let mut f = std::fs::File::open("/dev/hwrng").map_err(|e| format!("open /dev/hwrng: {e}"))?;
    let mut buf = vec![0u8; want];
    f.read_exact(&mut buf)
        .map_err(|e| format!("read {want} bytes from /dev/hwrng: {e}"))?;
    if want >= 16 && buf.iter().all(|&b| b == buf[0]) {
        return Err(format!(
            "{want} bytes from /dev/hwrng are all {:#04x}",
            buf[0]
        ));
    }
    Ok(format!("read {want} bytes from {}", current.trim()))
}
