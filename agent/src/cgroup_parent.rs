//! The agent's cgroup parent (`--cgroup-parent`, default `/cocoon`): every
//! container's cgroup is `<parent>/<id>`.
//!
//! The agent owns the parent for its whole life. On cgroup v2 it creates it
//! at start and enables, in the root's and in its own
//! `cgroup.subtree_control`, every controller the containers' limits need
//! (the guest's root has none enabled after boot; a container's `memory.max`
//! or `pids.max` only exists when its parent delegates the controller). It
//! removes the parent when it stops: on DestroySandbox, and on SIGTERM/SIGINT
//! when it runs on a host. On a cgroup v1 host libcgroups creates and the
//! agent removes the parent in each hierarchy.

use std::path::{Path, PathBuf};

use libcgroups::common::{get_cgroup_setup, CgroupSetup, DEFAULT_CGROUP_ROOT};

/// The controllers container resources use; others are left alone.
pub const CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "pids", "hugetlb"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupParentError {
    #[error("creating {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
}

/// The controllers of `wanted` that `available` (a `cgroup.controllers`
/// text) lists, as `+name` tokens in `wanted`'s order.
pub fn controllers_to_enable(available: &str, wanted: &[&str]) -> Vec<String> {
    let have: Vec<&str> = available.split_whitespace().collect();
    wanted
        .iter()
        .filter(|c| have.contains(c))
        .map(|c| format!("+{c}"))
        .collect()
}

/// Writes each controller on its own: one the kernel refuses (e.g. a
/// threaded subtree) must not keep the others off.
fn enable_in(dir: &Path, tokens: &[String]) {
    let file = dir.join("cgroup.subtree_control");
    for t in tokens {
        if let Err(e) = std::fs::write(&file, t) {
            tracing::warn!(file = %file.display(), controller = %t, error = %e, "cannot enable cgroup controller");
        }
    }
}

/// Creates `parent` under the cgroup v2 mount at `root` (each missing
/// level) and delegates [`CONTROLLERS`] from the root down to it.
pub fn setup_v2(root: &Path, parent: &Path) -> Result<(), CgroupParentError> {
    let controllers = root.join("cgroup.controllers");
    let available = std::fs::read_to_string(&controllers)
        .map_err(|e| CgroupParentError::Read(controllers.clone(), e))?;
    let tokens = controllers_to_enable(&available, CONTROLLERS);
    let mut dir = root.to_path_buf();
    enable_in(&dir, &tokens);
    for part in relative(parent).components() {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CgroupParentError::Create(dir, e)),
        }
        enable_in(&dir, &tokens);
    }
    Ok(())
}

/// Sets up the parent on a cgroup v2 host or guest; nothing on v1, where
/// libcgroups creates it per hierarchy.
pub fn setup(parent: &Path) -> Result<(), CgroupParentError> {
    if matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified)) {
        setup_v2(Path::new(DEFAULT_CGROUP_ROOT), parent)?;
    }
    Ok(())
}

fn relative(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// Every directory the parent has: one on cgroup v2, one per hierarchy on
/// v1.
fn parent_dirs(parent: &Path) -> Vec<PathBuf> {
    let root = Path::new(DEFAULT_CGROUP_ROOT);
    let rel = relative(parent);
    if rel.as_os_str().is_empty() {
        return Vec::new();
    }
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| !p.is_symlink())
                .map(|p| p.join(rel))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the parent (its last level; only when empty). Containers must
/// be gone first; a parent still in use is logged and kept.
pub fn remove(parent: &Path) {
    for dir in parent_dirs(parent) {
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "cgroup parent removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cgroup parent kept")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enables_only_available_wanted_controllers() {
        let got =
            controllers_to_enable("cpuset cpu io memory hugetlb pids rdma misc\n", CONTROLLERS);
        assert_eq!(
            got,
            ["+cpuset", "+cpu", "+io", "+memory", "+pids", "+hugetlb"]
        );
        assert_eq!(
            controllers_to_enable("memory pids", CONTROLLERS),
            ["+memory", "+pids"]
        );
        assert!(controllers_to_enable("", CONTROLLERS).is_empty());
    }

    #[test]
    fn setup_v2_creates_levels_and_writes_subtree_control() {
        // A plain directory stands in for the cgroup mount.
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpu memory rdma pids\n",
        )
        .unwrap();
        setup_v2(root.path(), Path::new("/a/b")).unwrap();
        assert!(root.path().join("a/b").is_dir());
        for d in ["", "a", "a/b"] {
            // A regular file keeps only the last write.
            let text = std::fs::read_to_string(root.path().join(d).join("cgroup.subtree_control"))
                .unwrap();
            assert_eq!(text, "+pids", "{d}");
        }
        // Idempotent.
        setup_v2(root.path(), Path::new("/a/b")).unwrap();
    }
}
