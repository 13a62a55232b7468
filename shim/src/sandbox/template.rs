//! Template VMs: a pod's VM is restored from a snapshot of a VM that
//! booted once with the same kernel, initrd, VMM, vCPUs, memory and kernel
//! parameters, and was saved with its agent listening and nothing
//! tenant-specific in it (no sandbox created, the share not mounted).
//!
//! Templates live in `template_dir`, one directory per key (a SHA-256 of
//! those inputs; files are identified by path, device, inode, size and
//! modification time, so a rebuilt kernel or VMM gets a new template).
//! The first pod of a key builds it under an exclusive lock on
//! `<key>.lock`, in `<key>.build`, renamed to `<key>` only when complete:
//! a crash leaves at most a build directory, removed by the next builder;
//! concurrent first pods wait for the one that builds. A template whose
//! restore fails is removed ([`discard`]) and the pod boots instead.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cocoon_agent_protocol::address::{connect_agent, Address};
use cocoon_agent_protocol::DEFAULT_CONTROL_PORT;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::cgroup::{spawn_into, PodCgroup};
use super::process::Supervised;
use crate::config::Config;

/// Bumped when what a template holds changes meaning.
const KEY_VERSION: &str = "cocoon-template/1";
/// The template VM's kernel command line before `kernel_params`: freed
/// pages are zeroed, so they are holes in the memory image.
pub const TEMPLATE_CMDLINE: &str = "quiet init_on_free=1";
/// The MAC of a template VM's NIC (locally administered, unicast). A pod
/// restored from it has the same on its virtio-net device; the agent gives
/// the guest's interface the pod's.
pub const TEMPLATE_MAC: [u8; 6] = [0x02, 0x63, 0x6f, 0x63, 0x6f, 0x6e];
/// A template's NIC offers no MTU: the guest sizes its receive buffers for
/// standard frames, so a pod whose MTU is larger boots instead.
pub const TEMPLATE_NIC_MAX_MTU: u32 = 1500;
/// The snapshot inside a template directory.
const SNAPSHOT: &str = "snapshot";
/// A template's working set, next to its snapshot.
const WORKING_SET: &str = "working-set";
/// Written last: a template directory without it is not one.
const META: &str = "meta.json";
/// How long a save may take (the memory image of a TCG-slowed guest).
const SAVE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot identify {path} for the template key")]
    Fingerprint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another pod has been building the template {key} for over {waited:?}")]
    LockTimeout { key: String, waited: Duration },
    #[error("building the template: {0}")]
    Build(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
    let what = what.into();
    move |source| TemplateError::Io { what, source }
}

/// `name` as given, or found on `PATH` (the VMM is often named bare).
fn resolve(name: &Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_owned();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_owned())
}

/// The template key of `cfg`'s VM shape, with or without a NIC.
pub fn key(cfg: &Config, nic: bool) -> Result<String, TemplateError> {
    let mut h = Sha256::new();
    h.update(KEY_VERSION.as_bytes());
    for path in [&cfg.kernel, &cfg.initrd, &resolve(&cfg.vmm)] {
        let m = std::fs::metadata(path).map_err(|source| TemplateError::Fingerprint {
            path: path.clone(),
            source,
        })?;
        h.update(format!(
            "\n{}\0{}\0{}\0{}\0{}.{}",
            path.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ));
    }
    h.update(format!(
        "\nvcpus={}\nmemory_mib={}\ncmdline={} {}\nnic={nic}\n",
        cfg.vcpus, cfg.memory_mib, TEMPLATE_CMDLINE, cfg.kernel_params
    ));
    let digest = h.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// The snapshot directory of a complete, intact template, if there is
/// one: its state file passes the VMM's own checks (format version,
/// digest) and its memory image has the size the state says.
fn complete(dir: &Path) -> Option<PathBuf> {
    let snap = dir.join(SNAPSHOT);
    if !dir.join(META).is_file() {
        return None;
    }
    match cocoon_vmm::snapshot::read_state(&snap) {
        Ok(state) => {
            let memory = std::fs::metadata(snap.join(cocoon_vmm::snapshot::MEMORY_FILE));
            if memory.map(|m| m.len()).ok() == Some(state.memory_bytes) {
                Some(snap)
            } else {
                tracing::warn!(template = %dir.display(), "template memory image missing or of the wrong size; rebuilding");
                None
            }
        }
        Err(e) => {
            tracing::warn!(template = %dir.display(), error = %e, "template unusable; rebuilding");
            None
        }
    }
}

/// An exclusive `flock` on `path`, waiting up to `limit`; released when
/// the returned value is dropped.
async fn lock(
    path: &Path,
    key: &str,
    limit: Duration,
) -> Result<nix::fcntl::Flock<File>, TemplateError> {
    let start = Instant::now();
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(format!("opening {}", path.display())))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
            Err((_, e)) => return Err(io(format!("locking {}", path.display()))(e.into())),
        }
        if start.elapsed() >= limit {
            return Err(TemplateError::LockTimeout {
                key: key.to_string(),
                waited: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The snapshot to restore `cfg`'s pods (with a NIC when `nic`) from: the
/// existing template, or one built now (its processes in `cgroup`, so a
/// killed shim's pod clean-up takes them too).
pub async fn ensure(
    cfg: &Config,
    cgroup: Option<&PodCgroup>,
    nic: bool,
) -> Result<PathBuf, TemplateError> {
    let key = key(cfg, nic)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.template_dir)
        .map_err(io(format!("creating {}", cfg.template_dir.display())))?;
    let dir = cfg.template_dir.join(&key);
    if let Some(snap) = complete(&dir) {
        return Ok(snap);
    }
    let limit = Duration::from_secs(cfg.agent_timeout_secs) + SAVE_LIMIT;
    let _lock = lock(&cfg.template_dir.join(format!("{key}.lock")), &key, limit).await?;
    if let Some(snap) = complete(&dir) {
        return Ok(snap); // built while we waited
    }
    let started = Instant::now();
    let build = cfg.template_dir.join(format!("{key}.build"));
    let _ = std::fs::remove_dir_all(&build);
    let _ = std::fs::remove_dir_all(&dir); // an incomplete one
    let built = build_in(cfg, &build, cgroup, nic).await;
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&build);
        return Err(e);
    }
    for leftover in ["share", "fs.sock", "vsock", "vmm.pid", "virtiofsd.pid"] {
        let p = build.join(leftover);
        let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
    }
    let meta = format!(
        "{{\"key\":\"{key}\",\"kernel\":{:?},\"initrd\":{:?},\"vmm\":{:?},\"vcpus\":{},\"memory_mib\":{},\"kernel_params\":{:?},\"nic\":{nic},\"built_secs\":{:.3}}}\n",
        cfg.kernel.display().to_string(),
        cfg.initrd.display().to_string(),
        resolve(&cfg.vmm).display().to_string(),
        cfg.vcpus,
        cfg.memory_mib,
        cfg.kernel_params,
        started.elapsed().as_secs_f64()
    );
    let meta_path = build.join(META);
    std::fs::write(&meta_path, meta).map_err(io(format!("writing {}", meta_path.display())))?;
    File::open(&meta_path)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing the template"))?;
    std::fs::rename(&build, &dir).map_err(io(format!(
        "renaming {} to {}",
        build.display(),
        dir.display()
    )))?;
    tracing::info!(
        key,
        secs = started.elapsed().as_secs_f64(),
        "template built"
    );
    Ok(dir.join(SNAPSHOT))
}

/// The working set of the template whose snapshot is `snapshot`: the data
/// pages its first restored pod loaded until its first container was
/// created, which later restores load before their guest runs.
pub fn working_set(snapshot: &Path) -> PathBuf {
    snapshot.with_file_name(WORKING_SET)
}

/// Keep the working set a restored VMM recorded at `recorded` (a file in
/// its jail, so read without following a link, bounded, and parsed
/// strictly) as the template's, unless it has one. Returns the pages
/// kept, or why not.
pub fn install_working_set(snapshot: &Path, recorded: &Path) -> Result<usize, TemplateError> {
    use cocoon_vmm::vstate::working_set;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("reading the recorded working set {}", recorded.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(recorded)
        .map_err(io(what()))?;
    if !file.metadata().map_err(io(what()))?.is_file() {
        return Err(TemplateError::Build(format!(
            "{} is not a file",
            recorded.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(working_set::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(what()))?;
    let pages =
        working_set::decode(recorded, &bytes).map_err(|e| TemplateError::Build(e.to_string()))?;
    let dest = working_set(snapshot);
    let tmp = dest.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&tmp, working_set::encode(&pages))
        .map_err(io(format!("writing {}", tmp.display())))?;
    // A link does not replace: the first pod to record wins.
    let linked = std::fs::hard_link(&tmp, &dest);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(pages.len()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(0),
        Err(e) => Err(io(format!("installing {}", dest.display()))(e)),
    }
}

/// Remove the template a restore from `snapshot` failed with, so that the
/// next pod builds it again.
pub fn discard(snapshot: &Path) {
    if let Some(dir) = snapshot.parent() {
        tracing::warn!(template = %dir.display(), "discarding a template that did not restore");
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn spawn(
    name: &'static str,
    mut cmd: Command,
    pid_file: &Path,
    cgroup: Option<&PodCgroup>,
) -> Result<Supervised, TemplateError> {
    cmd.stdin(Stdio::null());
    if let Some(cg) = cgroup {
        spawn_into(&mut cmd, cg).map_err(|e| TemplateError::Build(e.to_string()))?;
    }
    Supervised::spawn(name, cmd, pid_file).map_err(|e| TemplateError::Build(e.to_string()))
}

/// Boot the template VM in `build`, wait for its agent, save it there.
async fn build_in(
    cfg: &Config,
    build: &Path,
    cgroup: Option<&PodCgroup>,
    nic: bool,
) -> Result<(), TemplateError> {
    let mkdir = |p: &Path| {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(p)
            .map_err(io(format!("creating {}", p.display())))
    };
    mkdir(build)?;
    mkdir(&build.join(SNAPSHOT))?;
    mkdir(&build.join("share"))?;
    let fs_sock = build.join("fs.sock");
    let mut fsd = Command::new(&cfg.virtiofsd);
    fsd.arg("--socket-path")
        .arg(&fs_sock)
        .arg("--shared-dir")
        .arg(build.join("share"))
        .args(&cfg.virtiofsd_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fsd = spawn("virtiofsd", fsd, &build.join("virtiofsd.pid"), cgroup)?;
    let result = boot_and_save(cfg, build, &fs_sock, &fsd, cgroup, nic).await;
    fsd.stop(Duration::from_secs(3)).await;
    result
}

async fn boot_and_save(
    cfg: &Config,
    build: &Path,
    fs_sock: &Path,
    fsd: &Supervised,
    cgroup: Option<&PodCgroup>,
    nic: bool,
) -> Result<(), TemplateError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs_sock.exists() {
        if let Some(status) = fsd.exit_status() {
            return Err(TemplateError::Build(format!("virtiofsd exited: {status}")));
        }
        if Instant::now() >= deadline {
            return Err(TemplateError::Build("virtiofsd made no socket".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let vsock = build.join("vsock");
    let mut cmdline = String::from(TEMPLATE_CMDLINE);
    if !cfg.kernel_params.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&cfg.kernel_params);
    }
    let mut vmm = Command::new(&cfg.vmm);
    vmm.arg("--kernel")
        .arg(&cfg.kernel)
        .arg("--initrd")
        .arg(&cfg.initrd)
        .arg("--vcpus")
        .arg(cfg.vcpus.to_string())
        .arg("--memory")
        .arg(cfg.memory_mib.to_string())
        .arg("--cmdline")
        .arg(cmdline)
        .arg("--serial")
        .arg(format!("file:{}", build.join("console.log").display()))
        .arg("--vsock")
        .arg(format!(
            "cid={},uds={}",
            super::vm::GUEST_CID,
            vsock.display()
        ))
        .arg("--fs")
        .arg(format!(
            "tag={},socket={}",
            super::vm::SHARE_TAG,
            fs_sock.display()
        ))
        .arg("--log-file")
        .arg(build.join("vmm.log"))
        .arg("--seccomp")
        .arg(&cfg.vmm_seccomp)
        .arg("--snapshot-to")
        .arg(build.join(SNAPSHOT))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if nic {
        // The template's NIC: a TAP nobody else sees (it goes with the
        // last descriptor, the VMM's). No MTU offered (see
        // TEMPLATE_NIC_MAX_MTU); the guest's interface stays down.
        let tap = tokio::task::spawn_blocking(private_tap)
            .await
            .map_err(|e| TemplateError::Build(format!("creating the template's TAP: {e}")))??;
        let raw = super::process::inherit_fd(&mut vmm, std::sync::Arc::new(tap));
        let spec = cocoon_vmm::devices::virtio::net::NetConfig {
            tap: cocoon_vmm::devices::virtio::net::TapSource::Fd(raw),
            mac: Some(cocoon_vmm::devices::virtio::net::MacAddr(TEMPLATE_MAC)),
            mtu: None,
        };
        vmm.arg("--net").arg(spec.to_string());
    }
    let vmm = spawn("cocoon-vmm", vmm, &build.join("vmm.pid"), cgroup)?;
    let control = Address::HybridVsock {
        path: vsock,
        port: DEFAULT_CONTROL_PORT,
    };
    let result = wait_and_save(cfg, build, &control, &vmm).await;
    if result.is_err() {
        vmm.stop(Duration::from_secs(1)).await;
    }
    result
}

/// A TAP in a network namespace of its own, made on a thread that leaves
/// the shim's (`unshare` affects the calling thread only); the namespace
/// lives as long as the TAP's descriptor.
fn private_tap() -> Result<std::os::fd::OwnedFd, TemplateError> {
    std::thread::spawn(|| {
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's
        // network namespace; the thread ends after making the TAP.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io("entering a network namespace for the template's TAP")(
                std::io::Error::last_os_error(),
            ));
        }
        cocoon_netconf::tap::create("tap0_template")
            .map_err(|e| TemplateError::Build(format!("creating the template's TAP: {e}")))
    })
    .join()
    .map_err(|_| TemplateError::Build("the TAP thread panicked".into()))?
}

fn log_tail(build: &Path) -> String {
    let text = std::fs::read_to_string(build.join("vmm.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

async fn wait_and_save(
    cfg: &Config,
    build: &Path,
    control: &Address,
    vmm: &Supervised,
) -> Result<(), TemplateError> {
    let deadline = Instant::now() + Duration::from_secs(cfg.agent_timeout_secs);
    loop {
        if let Some(status) = vmm.exit_status() {
            return Err(TemplateError::Build(format!(
                "the template VM exited before its agent answered ({status}): {}",
                log_tail(build)
            )));
        }
        if let Ok(client) = connect_agent(control).await {
            let req = cocoon_agent_protocol::agent::CheckRequest::new();
            let ctx = ttrpc::context::with_timeout(2_000_000_000);
            if client.check(ctx, &req).await.is_ok() {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(TemplateError::Build(format!(
                "the template VM's agent did not answer within {} s",
                cfg.agent_timeout_secs
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm.pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .map_err(|e| io("signalling the template VM")(e.into()))?;
    if !vmm.wait_for(SAVE_LIMIT).await {
        return Err(TemplateError::Build(format!(
            "the template VM did not save itself within {SAVE_LIMIT:?}"
        )));
    }
    match vmm.exit_status() {
        Some(ended) if ended.code() == Some(0) => Ok(()),
        other => Err(TemplateError::Build(format!(
            "the template VM's save failed ({}): {}",
            other.map_or_else(|| "unknown".into(), |e| e.to_string()),
            log_tail(build)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with_files(dir: &Path) -> Config {
        let mut cfg = Config::default();
        for (name, field) in [("vmlinux", 0), ("initrd", 1), ("vmm", 2)] {
            let p = dir.join(name);
            std::fs::write(&p, name).unwrap();
            match field {
                0 => cfg.kernel = p,
                1 => cfg.initrd = p,
                _ => cfg.vmm = p,
            }
        }
        cfg
    }

    #[test]
    fn the_key_changes_with_every_input_and_only_then() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg_with_files(tmp.path());
        let k = key(&cfg, false).unwrap();
        assert_eq!(k.len(), 32);
        assert_eq!(key(&cfg, false).unwrap(), k, "stable");
        assert_ne!(key(&cfg, true).unwrap(), k, "a NIC makes another template");
        let mut other = cfg.clone();
        other.memory_mib += 1;
        assert_ne!(key(&other, false).unwrap(), k);
        let mut other = cfg.clone();
        other.vcpus += 1;
        assert_ne!(key(&other, false).unwrap(), k);
        let mut other = cfg.clone();
        other.kernel_params = "nokaslr".into();
        assert_ne!(key(&other, false).unwrap(), k);
        // Unrelated settings do not matter.
        let mut other = cfg.clone();
        other.agent_call_timeout_secs += 1;
        assert_eq!(key(&other, false).unwrap(), k);
        // Another kernel (same path, new contents): a new template.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&cfg.kernel, "another kernel").unwrap();
        assert_ne!(
            key(&cfg, false).unwrap(),
            k,
            "a rebuilt kernel keeps its template"
        );
        std::fs::remove_file(&cfg.initrd).unwrap();
        let err = key(&cfg, false).unwrap_err();
        assert!(err.to_string().contains("initrd"), "{err}");
    }

    /// A real (tiny) snapshot: a paused payload VM saved by the VMM.
    fn real_snapshot(snap: &Path) {
        use cocoon_vmm::{EntryMode, SerialOutput, VmConfig, Vmm};
        let mut cfg = VmConfig::payload(vec![0xeb, 0xfe], 0x1_0000, EntryMode::LongMode);
        cfg.serial = SerialOutput::None;
        let running = Vmm::new(cfg).unwrap().start().unwrap();
        running.snapshot(snap).unwrap();
        running.wait(Some(Duration::ZERO)).unwrap();
    }

    #[test]
    fn only_a_complete_intact_template_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let snap = dir.join(SNAPSHOT);
        std::fs::create_dir_all(&snap).unwrap();
        real_snapshot(&snap);
        assert!(complete(&dir).is_none(), "no meta: half-built");
        std::fs::write(dir.join(META), "{}").unwrap();
        assert_eq!(complete(&dir), Some(snap.clone()));
        // A changed byte in the state: refused (its digest).
        let state = snap.join("state");
        let mut bytes = std::fs::read(&state).unwrap();
        let good = bytes.clone();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&state, &bytes).unwrap();
        assert!(complete(&dir).is_none(), "a corrupt state file");
        std::fs::write(&state, &good).unwrap();
        assert!(complete(&dir).is_some());
        // A memory image cut short: refused.
        let memory = snap.join("memory");
        let f = File::options().write(true).open(&memory).unwrap();
        f.set_len(4096).unwrap();
        assert!(complete(&dir).is_none(), "a truncated memory image");
        std::fs::remove_file(&memory).unwrap();
        assert!(complete(&dir).is_none(), "no memory image");
        discard(&snap);
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_and_waits_with_a_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k.lock");
        let held = lock(&path, "k", Duration::from_secs(1)).await.unwrap();
        let err = lock(&path, "k", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, TemplateError::LockTimeout { .. }), "{err}");
        drop(held);
        lock(&path, "k", Duration::from_millis(300)).await.unwrap();
    }

    #[test]
    fn a_recorded_working_set_is_kept_once_and_only_when_well_formed() {
        use cocoon_vmm::vstate::working_set;
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join(SNAPSHOT);
        std::fs::create_dir(&snap).unwrap();
        let jail = dir.path().join("jail");
        std::fs::create_dir(&jail).unwrap();
        let recorded = jail.join("working-set");
        // Garbage, a link to a file elsewhere, nothing: refused, nothing kept.
        std::fs::write(&recorded, b"garbage").unwrap();
        let err = install_working_set(&snap, &recorded).unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        std::fs::remove_file(&recorded).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, working_set::encode(&[0x1000])).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &recorded).unwrap();
        assert!(install_working_set(&snap, &recorded).is_err());
        std::fs::remove_file(&recorded).unwrap();
        assert!(install_working_set(&snap, &recorded).is_err());
        assert!(!working_set(&snap).exists());
        // A good one is kept; a second one does not replace it.
        std::fs::write(&recorded, working_set::encode(&[0x2000, 0x1000])).unwrap();
        assert_eq!(install_working_set(&snap, &recorded).unwrap(), 2);
        std::fs::remove_file(&recorded).unwrap();
        std::fs::write(&recorded, working_set::encode(&[0x5000])).unwrap();
        assert_eq!(install_working_set(&snap, &recorded).unwrap(), 0);
        assert_eq!(
            working_set::read(&working_set(&snap)).unwrap(),
            vec![0x1000, 0x2000]
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!left.iter().any(|n| n.contains("tmp")), "{left:?}");
    }
}
