//! The 'fs' device check: mount virtio-fs by its tag, read a file the host
//! wrote (a known byte pattern of a given length), write one the host then
//! checks, fsync, unmount.
//!
//! Parameters: `cocoon.fs.tag=<tag>` (required), `cocoon.fs.read=<name>` and
//! `cocoon.fs.len=<bytes>` (the host's pattern file), `cocoon.fs.write=<name>`
//! (the guest writes `WRITE_CONTENT`).

use std::ffi::CString;
use std::io::Write;

use crate::params::Params;

const MOUNT_POINT: &str = "/mnt/share";
/// What the guest writes; the end-to-end test checks it on the host.
pub const WRITE_CONTENT: &[u8] = b"written by the cocoon guest over virtio-fs\n";

/// Byte `i` of the host's pattern file.
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3) % 251) as u8
}

pub fn check(p: &Params) -> Result<String, String> {
    let tag = p.require("fs", "tag")?;
    crate::sys::mount(tag, MOUNT_POINT, "virtiofs", 0, None)
        .map_err(|e| format!("mount -t virtiofs {tag} {MOUNT_POINT}: {e}"))?;
    let result = exercise(p);
    let unmounted = umount(MOUNT_POINT);
    let detail = result?;
    unmounted.map_err(|e| format!("umount {MOUNT_POINT}: {e}"))?;
    Ok(detail)
}

fn exercise(p: &Params) -> Result<String, String> {
    let mut detail = Vec::new();
    if let Some(name) = p.get("fs", "read") {
        let path = format!("{MOUNT_POINT}/{name}");
        let data = std::fs::read(&path).map_err(|e| format!("read {path}: {e}"))?;
        if let Some(len) = p.get("fs", "len") {
            let want: usize = len
                .parse()
                .map_err(|_| format!("cocoon.fs.len={len} is not a number"))?;
            if data.len() != want {
                return Err(format!("{path}: {} bytes, expected {want}", data.len()));
            }
        }
        if let Some(at) = data.iter().enumerate().position(|(i, &b)| b != pattern(i)) {
            return Err(format!("{path}: wrong byte at offset {at}"));
        }
        detail.push(format!("read {} bytes", data.len()));
    }
    if let Some(name) = p.get("fs", "write") {
        let path = format!("{MOUNT_POINT}/{name}");
        let mut f = std::fs::File::create(&path).map_err(|e| format!("create {path}: {e}"))?;
        f.write_all(WRITE_CONTENT)
            .map_err(|e| format!("write {path}: {e}"))?;
        f.sync_all().map_err(|e| format!("fsync {path}: {e}"))?;
        let back = std::fs::read(&path).map_err(|e| format!("read back {path}: {e}"))?;
        if back != WRITE_CONTENT {
            return Err(format!("{path}: read back {} different bytes", back.len()));
        }
        detail.push(format!("wrote {} bytes", WRITE_CONTENT.len()));
    }
    Ok(detail.join(", "))
}

pub fn umount(target: &str) -> std::io::Result<()> {
    let t =
        CString::new(target).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `t` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(t.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_not_trivial() {
        let v: Vec<u8> = (0..300).map(pattern).collect();
        assert_eq!(&v[..3], &[3, 10, 17]);
        assert_eq!(v[251], v[0]);
        assert!(v.iter().any(|&b| b > 200));
    }
}
