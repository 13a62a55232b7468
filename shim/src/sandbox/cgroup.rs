//! The pod cgroup (cgroup v2): the VMM and virtiofsd of a pod are started
//! inside it, and teardown kills everything in it with `cgroup.kill`,
//! whatever the guest did and whatever those processes forked.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cgroup path {0:?}: must be a plain relative path")]
    BadPath(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {0}: processes still alive after cgroup.kill")]
    StillPopulated(String),
    #[error("cgroup {0} already has processes in it: refusing to adopt it (its teardown would kill them)")]
    InUse(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.display().to_string();
    move |source| CgroupError::Io { what, path, source }
}

/// The parent of the pods' cgroups when the spec names none; shared by
/// every pod, removed by the last one to go.
pub const DEFAULT_PARENT: &str = "cocoon";

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified host, or the
/// `unified` mount of a hybrid one.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for l in info.lines() {
        let Some((left, right)) = l.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        if mp == "/sys/fs/cgroup" {
            return Some(PathBuf::from(mp));
        }
        found.get_or_insert_with(|| PathBuf::from(mp));
    }
    found
}

/// The cgroup a pod's processes go into, relative to the v2 root: the
/// sandbox spec's `linux.cgroupsPath` (cgroupfs form `/a/b`, or systemd form
/// `slice:prefix:name`), or `cocoon/<pod id>`.
pub fn pod_cgroup_path(spec_path: Option<&str>, pod_id: &str) -> Result<PathBuf, CgroupError> {
    let Some(p) = spec_path.filter(|p| !p.is_empty()) else {
        return Ok(PathBuf::from(DEFAULT_PARENT).join(pod_id));
    };
    let rel = if let [slice, prefix, name] = p.split(':').collect::<Vec<_>>()[..] {
        // systemd: "kubepods-besteffort-pod1.slice:cri-containerd:abc" lives
        // at kubepods.slice/kubepods-besteffort.slice/...-pod1.slice/cri-containerd-abc.scope
        let mut path = PathBuf::new();
        let slice = slice.strip_suffix(".slice").unwrap_or(slice);
        let mut acc = String::new();
        for part in slice.split('-').filter(|s| !s.is_empty()) {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            path.push(format!("{acc}.slice"));
        }
        if path.as_os_str().is_empty() {
            path.push("system.slice");
        }
        path.push(if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        });
        path
    } else {
        PathBuf::from(p.trim_start_matches('/'))
    };
    let ok = !rel.as_os_str().is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok {
        return Err(CgroupError::BadPath(p.to_string()));
    }
    Ok(rel)
}

/// Enables every controller each ancestor of `<root>/<rel>` has in the
/// children's `cgroup.subtree_control`, as runc does for a container's
/// cgroup: the pod cgroup then has memory, cpu, io and pids accounting of
/// its own, and a parent (a CRI sandbox's `cgroup_parent`, which containerd
/// reads for `ListPodSandboxStats`) counts what the VMM and virtiofsd use.
/// Best effort: a controller an ancestor cannot delegate (it has processes
/// of its own, or a controller is not offered) is left as it is.
fn enable_controllers(root: &Path, rel: &Path) {
    let mut dir = root.to_path_buf();
    // Every ancestor of the leaf, the v2 root first; not the leaf itself.
    for c in rel.components() {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let (available, enabled) = (read("cgroup.controllers"), read("cgroup.subtree_control"));
        for ctl in available.split_whitespace() {
            if enabled.split_whitespace().any(|e| e == ctl) {
                continue;
            }
            let control = dir.join("cgroup.subtree_control");
            if let Err(e) = std::fs::write(&control, format!("+{ctl}")) {
                tracing::debug!(dir = %dir.display(), ctl, error = %e, "controller not enabled");
            }
        }
        dir.push(c);
    }
}

/// A pod's cgroup, and the directories the shim created for it (removed
/// again at teardown, deepest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCgroup {
    pub path: PathBuf,
    pub created: Vec<PathBuf>,
}

impl PodCgroup {
    /// Creates `<v2 root>/<rel>` (and any missing parent). An existing
    /// leaf is taken over only when it is empty (left by a crash).
    pub fn create(rel: &Path) -> Result<PodCgroup, CgroupError> {
        let root = cgroup2_root().ok_or(CgroupError::NoCgroup2)?;
        let path = root.join(rel);
        let mut created = Vec::new();
        // Another pod's teardown may remove a shared, empty parent between
        // two mkdirs: start over then.
        for attempt in 0..3 {
            created.clear();
            let mut cur = root.clone();
            let mut raced = false;
            for c in rel.components() {
                cur.push(c);
                match std::fs::create_dir(&cur) {
                    Ok(()) => created.push(cur.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 2 => {
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(io("creating cgroup", &cur)(e)),
                }
            }
            if !raced {
                break;
            }
        }
        enable_controllers(&root, rel);
        // The default parent is everyone's: whoever leaves it empty removes it.
        let shared_parent = root.join(DEFAULT_PARENT);
        if path.parent() == Some(shared_parent.as_path()) && !created.contains(&shared_parent) {
            created.insert(0, shared_parent);
        }
        let cg = PodCgroup { path, created };
        if cg.created.last() != Some(&cg.path) && cg.populated() {
            return Err(CgroupError::InUse(cg.path.display().to_string()));
        }
        Ok(cg)
    }

    /// Saves this cgroup's description to `file` (the pod dir).
    pub fn save(&self, file: &Path) -> Result<(), CgroupError> {
        let json = serde_json::to_vec(self).expect("plain data serialises");
        std::fs::write(file, json).map_err(io("writing", file))
    }

    pub fn load(file: &Path) -> Option<PodCgroup> {
        serde_json::from_slice(&std::fs::read(file).ok()?).ok()
    }

    /// An fd of `cgroup.procs`, for [`join_in_child`] between fork and exec.
    pub fn procs_fd(&self) -> Result<OwnedFd, CgroupError> {
        let p = self.path.join("cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io("opening", &p))?;
        Ok(f.into())
    }

    fn populated(&self) -> bool {
        match std::fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(s) => s.lines().any(|l| l == "populated 1"),
            Err(_) => false,
        }
    }

    /// SIGKILLs every process in the cgroup and waits (up to `limit`) until
    /// it is empty.
    pub fn kill(&self, limit: Duration) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        let kill = self.path.join("cgroup.kill");
        if let Err(e) = std::fs::write(&kill, "1") {
            // Before Linux 5.14: one by one, until none is left.
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io("writing", &kill)(e));
            }
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                let procs =
                    std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) on a pid read from the cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let deadline = Instant::now() + limit;
        while self.populated() {
            if Instant::now() >= deadline {
                return Err(CgroupError::StillPopulated(self.path.display().to_string()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Kills everything in it and removes the directories the shim made.
    pub fn destroy(&self, limit: Duration) -> Result<(), CgroupError> {
        self.kill(limit)?;
        let mut dirs: Vec<&PathBuf> = self.created.iter().collect();
        if !dirs.contains(&&self.path) {
            dirs.push(&self.path);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            // A parent another pod still uses stays (EBUSY / ENOTEMPTY).
            let _ = std::fs::remove_dir(d);
        }
        if self.path.exists() {
            return Err(CgroupError::StillPopulated(self.path.display().to_string()));
        }
        Ok(())
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs` (opened by [`PodCgroup::procs_fd`]). Meant for `pre_exec`: only
/// async-signal-safe calls.
pub fn join_in_child(procs: i32) -> std::io::Result<()> {
    let zero = b"0";
    // SAFETY: write(2) of two bytes from a static buffer to an open fd.
    let n = unsafe { libc::write(procs, zero.as_ptr().cast(), zero.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Adds a `pre_exec` step to `cmd` that puts the child into `cg` before it
/// runs anything, so that nothing it forks can escape the cgroup.
pub fn spawn_into(cmd: &mut tokio::process::Command, cg: &PodCgroup) -> Result<(), CgroupError> {
    let fd = cg.procs_fd()?;
    // The fd must stay open until the child has execed; the closure owns it.
    let raw = fd.as_raw_fd();
    let keep = std::sync::Arc::new(fd);
    // SAFETY: the closure runs between fork and exec and only calls write(2).
    unsafe {
        cmd.pre_exec(move || {
            let _ = &keep;
            join_in_child(raw)
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_paths() {
        assert_eq!(
            pod_cgroup_path(None, "p1").unwrap(),
            PathBuf::from("cocoon/p1")
        );
        assert_eq!(
            pod_cgroup_path(Some("/default/p1"), "p1").unwrap(),
            PathBuf::from("default/p1")
        );
        assert_eq!(
            pod_cgroup_path(Some("kubepods-besteffort-pod12.slice:cri-containerd:abc"), "x").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
            )
        );
        for bad in ["/a/../../etc", "/"] {
            assert!(pod_cgroup_path(Some(bad), "p").is_err(), "{bad}");
        }
    }
}
