//! Container storage: the bundle rootfs and the spec's bind mounts shared
//! into `<pod>/shared/<id>/`, and the spec rewritten for the guest.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount as TaskMount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {source_path} on {target}")]
    Mount {
        source_path: String,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("mounting the rootfs: {0}")]
    Rootfs(String),
    #[error("invalid spec: {0}")]
    Spec(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.display().to_string();
    move |source| StorageError::Io { what, path, source }
}

fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<(), StorageError> {
    let err = |source| StorageError::Mount {
        source_path: src.display().to_string(),
        target: dst.display().to_string(),
        source,
    };
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    if readonly {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Mounts `Create.rootfs` on `<bundle>/rootfs` when containerd passed
/// mounts instead of mounting the snapshot itself. Returns whether it did.
pub fn mount_bundle_rootfs(bundle: &Path, mounts: &[TaskMount]) -> Result<bool, StorageError> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
    for m in mounts {
        let ty = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let src = (!m.source.is_empty()).then_some(m.source.as_str());
        containerd_shim::mount::mount_rootfs(ty, src, &m.options, &target)
            .map_err(|e| StorageError::Rootfs(e.to_string()))?;
    }
    Ok(true)
}

pub fn unmount_bundle_rootfs(bundle: &Path) {
    let _ = umount2(&bundle.join("rootfs"), MntFlags::MNT_DETACH);
}

/// Is this spec mount a bind of a host path?
fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Shares the container's rootfs and bind mounts into `container_dir`
/// (`<pod>/shared/<id>`) and rewrites `spec` for the guest, where that
/// directory is `<guest_share>/<id>`.
pub fn share_container(
    spec: &mut Spec,
    bundle: &Path,
    container_dir: &Path,
    guest_share: &Path,
    id: &str,
) -> Result<(), StorageError> {
    let root = spec
        .root()
        .clone()
        .ok_or_else(|| StorageError::Spec("root: missing".into()))?;
    let host_root = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    // A read-only root is enforced on the host too (a compromised guest
    // cannot write through virtio-fs), unless a mount point still has to
    // be created in it: then the agent remounts it read-only after its
    // mounts, as runc does.
    let readonly = root.readonly().unwrap_or(false);
    let host_ro = readonly
        && spec.mounts().iter().flatten().all(|m| {
            let rel = m.destination().strip_prefix("/").unwrap_or(m.destination());
            host_root.join(rel).exists()
        });
    let dst = container_dir.join("rootfs");
    std::fs::create_dir_all(&dst).map_err(io("creating", &dst))?;
    bind(&host_root, &dst, host_ro)?;
    let mut new_root = root.clone();
    new_root.set_path(PathBuf::from("rootfs"));
    spec.set_root(Some(new_root));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (n, m) in mounts.iter_mut().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let Some(src) = m.source().clone() else {
            continue;
        };
        if !src.is_absolute() {
            continue;
        }
        let meta = std::fs::metadata(&src).map_err(io("inspecting bind source", &src))?;
        let dir = container_dir.join("mounts");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let target = dir.join(n.to_string());
        if meta.is_dir() {
            std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
        } else {
            std::fs::write(&target, b"").map_err(io("creating", &target))?;
        }
        let ro = m.options().iter().flatten().any(|o| o == "ro");
        bind(&src, &target, ro)?;
        m.set_source(Some(
            guest_share.join(id).join("mounts").join(n.to_string()),
        ));
    }
    spec.set_mounts(Some(mounts));

    // Host namespace paths (a CNI netns, ...) mean nothing in the guest;
    // the container gets fresh namespaces of those kinds there.
    if let Some(linux) = spec.linux_mut() {
        if let Some(nss) = linux.namespaces().clone() {
            let nss = nss
                .into_iter()
                .map(|mut ns| {
                    ns.set_path(None);
                    ns
                })
                .collect();
            linux.set_namespaces(Some(nss));
        }
        linux.set_cgroups_path(None);
    }
    spec.set_hooks(None);
    Ok(())
}

/// Undoes [`share_container`]: unmounts everything below `container_dir`
/// and removes it.
pub fn unshare_container(container_dir: &Path) {
    let mounts = container_dir.join("mounts");
    if let Ok(rd) = std::fs::read_dir(&mounts) {
        for e in rd.flatten() {
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        }
    }
    let _ = umount2(&container_dir.join("rootfs"), MntFlags::MNT_DETACH);
    // Never recurse into something that is still mounted: that would
    // delete the container's own files.
    if has_mounts_below(container_dir) {
        tracing::warn!(dir = %container_dir.display(), "still mounted; not removing");
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(container_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %container_dir.display(), error = %e, "removing the container share");
        }
    }
}

/// Whether any mount point is at or below `dir` (`/proc/self/mountinfo`).
pub fn has_mounts_below(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|mp| Path::new(&unescape_mountinfo(mp)).starts_with(dir))
            .unwrap_or(false)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescapes_octal() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn bind_detection() {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_typ(Some("bind".into()));
        assert!(is_bind(&m));
        m.set_typ(Some("tmpfs".into()));
        assert!(!is_bind(&m));
        m.set_options(Some(vec!["rbind".into(), "ro".into()]));
        assert!(is_bind(&m));
    }
}
