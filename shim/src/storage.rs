//! Container storage: the pod's share, each container's rootfs and bind
//! mounts in it, and the spec rewritten for the guest.
//!
//! Layout of a pod directory (0700, host-private):
//!
//! ```text
//! <pod>/private/            bind of itself, shared propagation; never exported
//! <pod>/private/<id>/rootfs the container's rootfs (bind, ro or rw, nosuid,nodev)
//! <pod>/private/<id>/mounts/<n>  the spec's n-th mount when it is a bind;
//!                           private, or a slave of its source when the
//!                           spec asks for rslave (or rshared)
//! <pod>/shared/             read-only, nosuid,nodev bind of private (slave):
//!                           what virtiofsd exports; binds made in private
//!                           propagate into it with their own flags
//! <pod>/containers/<id>     what the shim mounted for <id> (read at delete)
//! ```
//!
//! The guest therefore writes only inside a writable rootfs or a writable
//! volume, which are separate mounts; every directory the shim creates,
//! mounts onto or removes is in `private/`, resolved beneath a directory
//! fd without following links (see [`crate::hostfs`]), and teardown undoes
//! the record, never a listing of a tree the guest can write to.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount as TaskMount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::hostfs::{DetachedMount, Dir, HostFsError, MountAttr, Propagation};
use crate::sandbox::PodDir;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the pod share")]
    Share(#[source] HostFsError),
    #[error("sharing {what} into the pod")]
    Bind {
        what: String,
        #[source]
        source: HostFsError,
    },
    #[error("{what} {target}")]
    LegacyMount {
        what: &'static str,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("mounting the rootfs: {0}")]
    Rootfs(String),
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("the pod directory {0} is locked by another process (a clean-up after an earlier pod of this id?)")]
    PodLocked(String),
    #[error("container record {path}: {reason}")]
    Record { path: String, reason: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.display().to_string();
    move |source| StorageError::Io { what, path, source }
}

const PRIVATE: &str = "private";
const SHARED: &str = "shared";
const CONTAINERS: &str = "containers";
const ROOTFS: &str = "rootfs";
const MOUNTS: &str = "mounts";

/// Creates the pod directory (0700; 0711 for the local backend, whose
/// user-namespaced containers must reach their rootfs on the host) and its
/// share: `private/` bound on itself with shared propagation, and `shared/`
/// as its read-only, nosuid, nodev view. Done before virtiofsd starts, so
/// nothing can see `shared/` before it is read-only. The directories the
/// guest sees are 0755 (a user-namespaced container must traverse them);
/// the view is read-only, so that grants nothing.
pub fn setup_share(pod: &PodDir, flags: ShareFlags) -> Result<(), StorageError> {
    let root_mode = match flags {
        ShareFlags::Vm => 0o700,
        ShareFlags::Local => 0o711,
    };
    use std::os::unix::fs::DirBuilderExt;
    let root = pod.root();
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    match std::fs::DirBuilder::new().mode(root_mode).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating", root)(e)),
    }
    let rootd = Dir::open(root).map_err(StorageError::Share)?;
    // An existing directory (a pod id reused after a crash) is made private
    // again: nothing else may look in.
    std::fs::set_permissions(
        rootd.proc_path(""),
        std::os::unix::fs::PermissionsExt::from_mode(root_mode),
    )
    .map_err(io("chmod", root))?;
    rootd
        .mkdir(CONTAINERS, 0o700)
        .map_err(StorageError::Share)?;
    let private = rootd.mkdir(PRIVATE, 0o755).map_err(StorageError::Share)?;
    let shared = rootd.mkdir(SHARED, 0o755).map_err(StorageError::Share)?;
    // The old mount API on `/proc/self/fd/<safely opened dir>` paths.
    let set = |src: Option<&Path>, at: &Dir, flags: MsFlags, what: &'static str| {
        let target = at.proc_path("");
        mount(src, &target, None::<&str>, flags, None::<&str>).map_err(|source| {
            StorageError::LegacyMount {
                what,
                target: at.path().display().to_string(),
                source,
            }
        })
    };
    // private: a mount point of its own, shared, so binds made below it
    // later reach `shared/` and virtiofsd's copy of it.
    set(
        Some(&private.proc_path("")),
        &private,
        MsFlags::MS_BIND,
        "binding",
    )?;
    let private = rootd
        .open_mounted_dir(PRIVATE)
        .map_err(StorageError::Share)?;
    set(None, &private, MsFlags::MS_SHARED, "making shared")?;
    // shared: a bind of private (so it joins private's peer group), made
    // read-only, nosuid, nodev and then a slave: it receives private's
    // binds but sends nothing back. The old mount API is enough here:
    // virtiofsd does not run yet, so nothing can see `shared/` before it
    // is read-only.
    set(
        Some(&private.proc_path("")),
        &shared,
        MsFlags::MS_BIND,
        "binding",
    )?;
    let shared = rootd
        .open_mounted_dir(SHARED)
        .map_err(StorageError::Share)?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    set(None, &shared, ro, "making read-only")?;
    set(None, &shared, MsFlags::MS_SLAVE, "making a slave")?;
    Ok(())
}

/// Undoes [`setup_share`]'s mounts (and with them every bind below them).
pub fn teardown_share(pod: &PodDir) {
    let Ok(rootd) = Dir::open(pod.root()) else {
        return;
    };
    for name in [SHARED, PRIVATE] {
        // Both may be stacked (a crash between setup steps): undo all.
        for _ in 0..4 {
            match rootd.unmount(name) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %crate::task::rpc_error::chain(&e), "unmounting the pod share");
                    break;
                }
            }
        }
    }
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

fn has_option(m: &oci_spec::runtime::Mount, opt: &str) -> bool {
    m.options().iter().flatten().any(|o| o == opt)
}

/// What the shim mounted for one container, below `private/<id>/`:
/// written before the first mount, read by teardown (also by `delete`
/// after a killed shim).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// `n` of every `mounts/<n>` and whether it is a directory.
    pub binds: Vec<(usize, bool)>,
}

fn record_path(pod: &PodDir, id: &str) -> PathBuf {
    pod.root().join(CONTAINERS).join(id)
}

fn write_record(pod: &PodDir, id: &str, rec: &ContainerRecord) -> Result<(), StorageError> {
    let rootd = Dir::open(pod.root()).map_err(StorageError::Share)?;
    let dir = rootd.open_dir(CONTAINERS).map_err(StorageError::Share)?;
    let path = record_path(pod, id);
    let json = serde_json::to_vec(rec).map_err(|e| StorageError::Record {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let _ = dir.remove(id, false);
    dir.create_file(id, 0o600).map_err(StorageError::Share)?;
    std::fs::write(dir.proc_path(id), json).map_err(io("writing", &path))
}

fn read_record(pod: &PodDir, id: &str) -> Option<ContainerRecord> {
    let rootd = Dir::open(pod.root()).ok()?;
    let dir = rootd.open_dir(CONTAINERS).ok()?;
    let text = std::fs::read(dir.proc_path(id)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The containers a pod directory has records for (host-private: the
/// guest cannot add to it).
pub fn recorded_containers(pod: &PodDir) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(pod.root().join(CONTAINERS)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

/// Binds `src` on `dir/name` (a directory or a file, created here).
fn bind_into(
    src: &Path,
    dir: &Dir,
    name: &str,
    is_dir: bool,
    attr: MountAttr,
    recursive: bool,
) -> Result<(), HostFsError> {
    // Clone and set the flags first: a source that cannot be bound creates
    // nothing in the share.
    let tree = DetachedMount::clone_path(src, recursive)?;
    tree.set_attr(attr)?;
    if is_dir {
        let target = dir.mkdir(name, 0o700)?;
        tree.attach(&target)
    } else {
        dir.create_file(name, 0o600)?;
        tree.attach_file(dir, name)
    }
}

/// How binds into the share are flagged on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareFlags {
    /// nosuid,nodev on every bind: the share is read by virtiofsd for a VM,
    /// whose kernel applies its own flags.
    Vm,
    /// No extra flags: the local backend's agent runs the containers on
    /// the host from these very mounts (a user-namespaced container could
    /// not remount them otherwise). No isolation there anyway.
    Local,
}

impl ShareFlags {
    /// The flags of a bind into the share, read-only when `readonly`.
    fn bind_attr(self, readonly: bool, propagation: Propagation) -> MountAttr {
        let hardened = self == ShareFlags::Vm;
        MountAttr {
            readonly,
            nosuid: hardened,
            nodev: hardened,
            propagation,
        }
    }
}

/// What a volume receives of the mounts made later below its host source:
/// nothing (`rprivate`, a bind's default), or them (`rslave`, CRI's
/// HostToContainer). `rshared` (Bidirectional) gets the same as `rslave`:
/// a mount made in the guest cannot come back to the host through
/// virtio-fs, and none is made on the host on the guest's behalf.
fn propagation_of(m: &oci_spec::runtime::Mount) -> Propagation {
    if ["rslave", "slave", "rshared", "shared"]
        .iter()
        .any(|o| has_option(m, o))
    {
        Propagation::Slave
    } else {
        Propagation::Private
    }
}

/// Shares the container's rootfs and bind mounts into `private/<id>` and
/// rewrites `spec` for the guest, where that directory is
/// `<guest_share>/<id>`. On error, what was already mounted is undone.
pub fn share_container(
    spec: &mut Spec,
    bundle: &Path,
    pod: &PodDir,
    guest_share: &Path,
    id: &str,
    flags: ShareFlags,
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
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    // The plan, recorded before anything is mounted.
    let mut rec = ContainerRecord::default();
    let mut sources = Vec::new();
    for (n, m) in mounts.iter().enumerate() {
        let Some(src) = m.source().clone().filter(|s| is_bind(m) && s.is_absolute()) else {
            continue;
        };
        let meta = std::fs::metadata(&src).map_err(io("inspecting bind source", &src))?;
        rec.binds.push((n, meta.is_dir()));
        sources.push(src);
    }
    // A read-only root is enforced on the host too (a compromised guest
    // cannot write through virtio-fs), unless a mount point still has to
    // be created in it: then the agent remounts it read-only after its
    // mounts, as runc does. Existence is checked inside the rootfs (its
    // symlinks do not lead out of it).
    let readonly = root.readonly().unwrap_or(false);
    let host_ro = readonly && {
        let rootd = Dir::open(&host_root).map_err(|source| StorageError::Bind {
            what: format!("the rootfs {}", host_root.display()),
            source,
        })?;
        spec.mounts()
            .iter()
            .flatten()
            .all(|m| rootd.exists_in_root(m.destination()))
    };
    write_record(pod, id, &rec)?;
    let result = (|| {
        let rootd = Dir::open(pod.root()).map_err(StorageError::Share)?;
        let private = rootd
            .open_mounted_dir(PRIVATE)
            .map_err(StorageError::Share)?;
        let cdir = private.mkdir(id, 0o755).map_err(StorageError::Share)?;
        bind_into(
            &host_root,
            &cdir,
            ROOTFS,
            true,
            flags.bind_attr(host_ro, Propagation::Private),
            true,
        )
        .map_err(|source| StorageError::Bind {
            what: format!("the rootfs {}", host_root.display()),
            source,
        })?;
        if !rec.binds.is_empty() {
            let mdir = cdir.mkdir(MOUNTS, 0o755).map_err(StorageError::Share)?;
            for (&(n, is_dir), src) in rec.binds.iter().zip(&sources) {
                let m = &mounts[n];
                let ro = has_option(m, "ro");
                let recursive = !has_option(m, "bind") || has_option(m, "rbind");
                bind_into(
                    src,
                    &mdir,
                    &n.to_string(),
                    is_dir,
                    flags.bind_attr(ro, propagation_of(m)),
                    recursive,
                )
                .map_err(|source| StorageError::Bind {
                    what: format!("mount {n} ({})", src.display()),
                    source,
                })?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        unshare_container(pod, id);
        return Err(e);
    }

    let mut new_root = root.clone();
    new_root.set_path(PathBuf::from(ROOTFS));
    spec.set_root(Some(new_root));
    for &(n, _) in &rec.binds {
        mounts[n].set_source(Some(guest_share.join(id).join(MOUNTS).join(n.to_string())));
    }
    spec.set_mounts(Some(mounts));

    // Host namespace paths (a CNI netns, ...) mean nothing in the guest;
    // the container gets fresh namespaces of those kinds there. A network
    // namespace with a path is the pod's: the entry goes, and the
    // container shares the guest's, where the agent set up the pod's NIC.
    // The pid, ipc and uts paths of a CRI container name its sandbox's:
    // the agent joins the sandbox's namespaces of those kinds in the guest
    // (agent/src/pod_namespaces.rs).
    let cri_container = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::task::ANNOTATION_CONTAINER_TYPE))
        .is_some_and(|t| t == "container");
    if let Some(linux) = spec.linux_mut() {
        if let Some(nss) = linux.namespaces().clone() {
            let nss = nss
                .into_iter()
                .filter(|ns| ns.typ() != LinuxNamespaceType::Network || ns.path().is_none())
                .map(|mut ns| {
                    let pod_kind = matches!(
                        ns.typ(),
                        LinuxNamespaceType::Pid | LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts
                    );
                    if !(cri_container && pod_kind) {
                        ns.set_path(None);
                    }
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

/// Undoes [`share_container`] from its record: unmounts exactly what was
/// mounted (never following a link), removes the directories and files it
/// created, then the record. Safe to call twice, and after a crash.
pub fn unshare_container(pod: &PodDir, id: &str) {
    let warn = |what: &str, e: &dyn std::error::Error| {
        tracing::warn!(
            container = id,
            "{what}: {}",
            crate::task::rpc_error::chain(e)
        );
    };
    let Some(rec) = read_record(pod, id) else {
        return;
    };
    let Ok(rootd) = Dir::open(pod.root()) else {
        return;
    };
    let cdir = rootd.open_mounted_dir(PRIVATE).and_then(|p| p.open_dir(id));
    if let Ok(cdir) = cdir {
        let mut clean = true;
        if !rec.binds.is_empty() {
            match cdir.open_dir(MOUNTS) {
                Ok(mdir) => {
                    for &(n, is_dir) in &rec.binds {
                        let name = n.to_string();
                        if let Err(e) = mdir.unmount(&name) {
                            warn("unmounting a volume", &e);
                            clean = false;
                        } else if let Err(e) = mdir.remove(&name, is_dir) {
                            warn("removing a volume mount point", &e);
                            clean = false;
                        }
                    }
                    drop(mdir);
                    if clean {
                        if let Err(e) = cdir.remove(MOUNTS, true) {
                            warn("removing the mounts dir", &e);
                            clean = false;
                        }
                    }
                }
                Err(HostFsError::Sys { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn("opening the mounts dir", &e);
                    clean = false;
                }
            }
        }
        match cdir.unmount(ROOTFS) {
            Ok(_) => {
                if let Err(e) = cdir.remove(ROOTFS, true) {
                    warn("removing the rootfs mount point", &e);
                    clean = false;
                }
            }
            Err(e) => {
                warn("unmounting the rootfs", &e);
                clean = false;
            }
        }
        drop(cdir);
        if clean {
            if let Ok(p) = rootd.open_mounted_dir(PRIVATE) {
                if let Err(e) = p.remove(id, true) {
                    warn("removing the container dir", &e);
                    clean = false;
                }
            }
        }
        if !clean {
            // Keep the record: a later teardown (or delete) tries again.
            return;
        }
    }
    if let Ok(d) = rootd.open_dir(CONTAINERS) {
        let _ = d.remove(id, false);
    }
}

/// Whether any mount point is at or below `dir` (`/proc/self/mountinfo`).
pub fn has_mounts_below(dir: &Path) -> bool {
    mount_points().iter().any(|mp| mp.starts_with(dir))
}

/// Every mount point of this mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            l.split(' ')
                .nth(4)
                .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        })
        .collect()
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
