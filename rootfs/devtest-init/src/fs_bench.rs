//! `fs-bench` mode: sequential read throughput of one file on virtio-fs.
//!
//! The guest mounts the share by `cocoon.fs-bench.tag`, reads
//! `cocoon.fs-bench.file` start to end in `cocoon.fs-bench.chunk_kib`
//! (default 1024) KiB `read(2)`s and unmounts; it repeats that
//! `cocoon.fs-bench.passes` (default 1) times, each on a fresh mount, so no
//! pass reads pages cached by an earlier one. Each pass is timed in the
//! guest (CLOCK_MONOTONIC, from `open` to the last read; the mount is not
//! counted) and reported as `<bytes> bytes in <secs> s`.
//!
//! The host side (tests/bench/fs.py) parses those figures; the same guest
//! serves cocoon-vmm and QEMU (vhost-user-fs-device) on the same virtiofsd.

use std::io::Read;
use std::time::Instant;

use crate::params::Params;

const MOUNT_POINT: &str = "/mnt/bench";
const MAX_PASSES: u32 = 100;
const MAX_CHUNK_KIB: usize = 16 * 1024;

fn number<T: std::str::FromStr>(p: &Params, key: &str, default: T) -> Result<T, String> {
    match p.get("fs-bench", key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("cocoon.fs-bench.{key}={v} is not a number")),
    }
}

/// One pass: a fresh mount, the timed sequential read, the unmount.
fn pass(tag: &str, name: &str, buf: &mut [u8]) -> Result<(u64, f64), String> {
    crate::sys::mount(tag, MOUNT_POINT, "virtiofs", 0, None)
        .map_err(|e| format!("mount -t virtiofs {tag} {MOUNT_POINT}: {e}"))?;
    let path = format!("{MOUNT_POINT}/{name}");
    let timed = (|| {
        let start = Instant::now();
        let mut f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        let mut total = 0u64;
        loop {
            match f.read(buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read {path} at {total}: {e}")),
            }
        }
        Ok((total, start.elapsed().as_secs_f64()))
    })();
    let unmounted = crate::fs::umount(MOUNT_POINT);
    let figures = timed?;
    unmounted.map_err(|e| format!("umount {MOUNT_POINT}: {e}"))?;
    Ok(figures)
}

pub fn run(p: &Params) -> Result<String, String> {
    let tag = p.require("fs-bench", "tag")?;
    let name = p.require("fs-bench", "file")?;
    let chunk_kib: usize = number(p, "chunk_kib", 1024)?;
    let passes: u32 = number(p, "passes", 1)?;
    if chunk_kib == 0 || chunk_kib > MAX_CHUNK_KIB {
        return Err(format!("chunk_kib must be 1..={MAX_CHUNK_KIB}"));
    }
    if passes == 0 || passes > MAX_PASSES {
        return Err(format!("passes must be 1..={MAX_PASSES}"));
    }
    let mut buf = vec![0u8; chunk_kib * 1024];
    let mut figures = Vec::new();
    for _ in 0..passes {
        let (bytes, secs) = pass(tag, name, &mut buf)?;
        if bytes == 0 {
            return Err(format!("{name} is empty"));
        }
        figures.push(format!("{bytes} bytes in {secs:.6} s"));
    }
    Ok(figures.join(", "))
}
