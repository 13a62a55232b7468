//! virtio-blk: the guest reads a read-only disk whose bytes follow
//! `pattern(ro_seed, i)`, checks its size, id and that writing to it fails,
//! then writes `pattern(rw_seed, i)` to a read-write disk at `rw_offset`
//! and fsyncs it; the host checks those bytes afterwards.
//!
//! Parameters: `cocoon.blk.ro=/dev/vda`, `cocoon.blk.rw=/dev/vdb`,
//! `cocoon.blk.ro_bytes=N`, `cocoon.blk.ro_seed=N`, `cocoon.blk.ro_id=S`
//! (optional), `cocoon.blk.rw_seed=N`, `cocoon.blk.rw_offset=N`,
//! `cocoon.blk.rw_bytes=N`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use crate::params::Params;

/// The byte at offset `i` of a disk written with `seed` (the host test uses
/// the same rule).
fn pattern(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9) ^ seed) as u8
}

fn num(p: &Params, key: &str) -> Result<u64, String> {
    let v = p.require("blk", key)?;
    v.parse()
        .map_err(|_| format!("cocoon.blk.{key}={v} is not a number"))
}

fn sysfs(dev: &str, attr: &str) -> Result<String, String> {
    let name = dev.trim_start_matches("/dev/");
    let path = format!("/sys/block/{name}/{attr}");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

fn check_read_only(p: &Params) -> Result<String, String> {
    let dev = p.get("blk", "ro").unwrap_or("/dev/vda");
    let bytes = num(p, "ro_bytes")?;
    let seed = num(p, "ro_seed")?;
    let sectors: u64 = sysfs(dev, "size")?
        .parse()
        .map_err(|_| format!("{dev}: bad size in sysfs"))?;
    if sectors * 512 != bytes {
        return Err(format!(
            "{dev} has {} bytes, expected {bytes}",
            sectors * 512
        ));
    }
    if sysfs(dev, "ro")? != "1" {
        return Err(format!("{dev} is not read-only in the guest"));
    }
    if let Some(want) = p.get("blk", "ro_id") {
        let got = sysfs(dev, "serial")?;
        if got != want {
            return Err(format!("{dev} serial is '{got}', expected '{want}'"));
        }
    }
    let mut f = File::open(dev).map_err(|e| format!("open {dev}: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < bytes {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("read {dev} at {off}: {e}"))?;
        if n == 0 {
            return Err(format!("{dev} ended at {off} of {bytes} bytes"));
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = off + i as u64;
            if b != pattern(seed, at) {
                return Err(format!(
                    "{dev} byte {at} is {b:#04x}, expected {:#04x}",
                    pattern(seed, at)
                ));
            }
        }
        off += n as u64;
    }
    // Writing must fail: the kernel refuses to open a read-only disk for
    // writing; if it did open, the write or the fsync must fail.
    let write_refused = match OpenOptions::new().write(true).open(dev) {
        Err(_) => true,
        Ok(mut w) => w.write_all(&[0u8; 512]).and_then(|_| w.sync_all()).is_err(),
    };
    if !write_refused {
        return Err(format!("writing to read-only {dev} succeeded"));
    }
    Ok(format!("{dev} {bytes} bytes verified, write refused"))
}

fn write_read_write(p: &Params) -> Result<String, String> {
    let dev = p.get("blk", "rw").unwrap_or("/dev/vdb");
    let seed = num(p, "rw_seed")?;
    let offset = num(p, "rw_offset")?;
    let bytes = num(p, "rw_bytes")?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("open {dev} read-write: {e}"))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("seek {dev}: {e}"))?;
    let data: Vec<u8> = (0..bytes).map(|i| pattern(seed, offset + i)).collect();
    f.write_all(&data)
        .map_err(|e| format!("write {bytes} bytes to {dev}: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync {dev}: {e}"))?;
    Ok(format!(
        "{dev} {bytes} bytes written at {offset} and synced"
    ))
}

pub fn check(p: &Params) -> Result<String, String> {
    let ro = check_read_only(p)?;
    let rw = write_read_write(p)?;
    Ok(format!("{ro}; {rw}"))
}
