//! Who a pod's VMM runs as, and where: a uid (= gid) of its own from the
//! configured range, so two VMMs can neither signal nor ptrace each other
//! nor open each other's files, and the jail directory `<pod>/jail/`
//! (owned by that uid, 0700) that `cocoon-vmm --jail` makes its root.
//!
//! A uid is claimed by a symlink `<run_dir>/vmm-uids/<uid>` → the pod
//! directory, under an `flock` shared by every shim; a claim whose pod
//! directory is gone (a crashed shim whose pod was cleaned up) is taken
//! over. The pod records its uid in `<pod>/vmm-uid` for the release.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{PodDir, SandboxError};

const CLAIMS_DIR: &str = "vmm-uids";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Holds the claims directory's lock (an `flock` on the directory itself,
/// which the last release removes).
struct ClaimsLock {
    _dir: std::fs::File,
}

fn lock_claims(run_dir: &Path) -> Result<(PathBuf, ClaimsLock), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let dir = run_dir.join(CLAIMS_DIR);
    loop {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
        }
        let file = match std::fs::File::open(&dir) {
            Ok(f) => f,
            // Removed by a release between the two calls.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("opening {}", dir.display()))(e)),
        };
        // SAFETY: flock on a descriptor we own; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(format!("locking {}", dir.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        // Still the directory at that path (not one a release removed)?
        let held = file.metadata().map(|m| m.ino()).ok();
        if held.is_some() && std::fs::metadata(&dir).map(|m| m.ino()).ok() == held {
            return Ok((dir, ClaimsLock { _dir: file }));
        }
    }
}

/// A stable starting point in the range for a pod id (FNV-1a).
fn start_index(pod_id: &str, count: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in pod_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % count
}

/// Claims a free uid in `first..first+count` for `pod` and records it.
pub fn allocate(run_dir: &Path, pod: &PodDir, first: u32, count: u32) -> Result<u32, SandboxError> {
    let (dir, _lock) = lock_claims(run_dir)?;
    let pod_id = pod
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let start = start_index(&pod_id, count);
    for i in 0..count {
        let uid = first + (start + i) % count;
        let claim = dir.join(uid.to_string());
        match std::os::unix::fs::symlink(pod.root(), &claim) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_link(&claim).ok();
                if owner.as_deref() != Some(pod.root()) && owner.is_none_or(|o| o.exists()) {
                    continue;
                }
                // Ours from an earlier start, or its pod is gone.
                let _ = std::fs::remove_file(&claim);
                std::os::unix::fs::symlink(pod.root(), &claim)
                    .map_err(io(format!("claiming uid {uid}")))?;
            }
            Err(e) => return Err(io(format!("claiming uid {uid}"))(e)),
        }
        std::fs::write(pod.vmm_uid_record(), uid.to_string())
            .map_err(io("recording the VMM's uid"))?;
        return Ok(uid);
    }
    Err(SandboxError::Io {
        what: format!(
            "every VMM uid in {first}..{} is in use (vmm_uid_count)",
            u64::from(first) + u64::from(count)
        ),
        source: std::io::ErrorKind::AddrInUse.into(),
    })
}

/// Gives the pod's uid back (no-op without a record).
pub fn release(run_dir: &Path, pod: &PodDir) {
    let Ok(text) = std::fs::read_to_string(pod.vmm_uid_record()) else {
        return;
    };
    let Ok(uid) = text.trim().parse::<u32>() else {
        return;
    };
    if let Ok((dir, _lock)) = lock_claims(run_dir) {
        let claim = dir.join(uid.to_string());
        if std::fs::read_link(&claim).ok().as_deref() == Some(pod.root()) {
            let _ = std::fs::remove_file(&claim);
        }
        // The last one leaves no directory behind (under the lock).
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_file(pod.vmm_uid_record());
}

/// Makes `<pod>/jail/`, owned by `uid`:`uid`, mode 0700 (root when not jailed).
pub fn prepare_dir(pod: &PodDir, uid: Option<u32>) -> Result<PathBuf, SandboxError> {
    let dir = pod.jail();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // From a failed start: nothing in it is kept.
            std::fs::remove_dir_all(&dir).map_err(io(format!("clearing {}", dir.display())))?;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io(format!("creating {}", dir.display())))?;
        }
        Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
    }
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid))
            .map_err(io(format!("chown {}", dir.display())))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_distinct_uids_and_a_gone_pod_is_taken_over() {
        let run = tempfile::tempdir().unwrap();
        let a = PodDir::new(run.path(), "pod-a");
        let b = PodDir::new(run.path(), "pod-b");
        std::fs::create_dir(a.root()).unwrap();
        std::fs::create_dir(b.root()).unwrap();
        // A range of two: both pods fit, a third does not.
        let ua = allocate(run.path(), &a, 5000, 2).unwrap();
        let ub = allocate(run.path(), &b, 5000, 2).unwrap();
        assert_ne!(ua, ub);
        assert!((5000..5002).contains(&ua) && (5000..5002).contains(&ub));
        let c = PodDir::new(run.path(), "pod-c");
        std::fs::create_dir(c.root()).unwrap();
        let err = allocate(run.path(), &c, 5000, 2).unwrap_err().to_string();
        assert!(
            err.contains("every VMM uid in 5000..5002 is in use"),
            "{err}"
        );
        // The same pod again (a retried start) keeps a uid.
        assert_eq!(allocate(run.path(), &a, 5000, 2).unwrap(), ua);
        // b's dir vanishes without a release (a crashed shim): c takes it.
        std::fs::remove_dir_all(b.root()).unwrap();
        assert_eq!(allocate(run.path(), &c, 5000, 2).unwrap(), ub);
        // A release frees the claim and the record.
        release(run.path(), &a);
        assert!(!a.vmm_uid_record().exists());
        assert!(!run.path().join(CLAIMS_DIR).join(ua.to_string()).exists());
        let d = PodDir::new(run.path(), "pod-d");
        std::fs::create_dir(d.root()).unwrap();
        assert_eq!(allocate(run.path(), &d, 5000, 2).unwrap(), ua);
        // The last release removes the claims directory.
        for p in [&c, &d] {
            release(run.path(), p);
        }
        assert!(!run.path().join(CLAIMS_DIR).exists());
    }

    #[test]
    fn the_jail_dir_belongs_to_the_uid_and_is_fresh() {
        let run = tempfile::tempdir().unwrap();
        let pod = PodDir::new(run.path(), "p");
        std::fs::create_dir(pod.root()).unwrap();
        let dir = prepare_dir(&pod, Some(4242)).unwrap();
        std::fs::write(dir.join("old"), "x").unwrap();
        let dir = prepare_dir(&pod, Some(4242)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (4242, 4242, 0o700));
        assert!(!dir.join("old").exists());
    }
}
