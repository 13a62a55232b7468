//! Cleaning up after a killed shim: `delete` for each of its containers,
//! and a sweep of pod directories no shim serves any more (a `delete` that
//! containerd cut off, or never ran). Whatever the shim would have removed
//! is decided from what the shim recorded (never from the share, which the
//! guest can write to).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::sandbox::cgroup::PodCgroup;
use crate::sandbox::process::kill_from_pid_file;
use crate::sandbox::PodDir;
use crate::storage::{recorded_containers, unmount_bundle_rootfs, unshare_container};
use crate::task::remove_pod_dir;

/// How long a `delete` waits for a pod directory's lock (a sweep or
/// another `delete` holding it) before it cleans up anyway.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// A pod directory younger than this is never swept: its shim may be
/// between creating it and locking it.
pub const SWEEP_MIN_AGE: Duration = Duration::from_secs(60);

/// Unshares the container, and when it was the pod's last one kills the
/// pod's cgroup (VMM, virtiofsd and whatever they forked) or local agent,
/// unmounts the share and removes the pod directory.
pub fn cleanup_after_killed_shim(cfg: &Config, bundle: &Path, id: &str, pod_id: &str) {
    let pod = PodDir::new(&cfg.run_dir, pod_id);
    let _lock = pod.lock_within(LOCK_WAIT);
    unshare_container(&pod, id);
    unmount_bundle_rootfs(bundle);
    let _ = std::fs::remove_file(bundle.join(crate::task::BUNDLE_POD_FILE));
    if !recorded_containers(&pod).is_empty() {
        return;
    }
    destroy_pod(cfg, &pod);
}

/// Everything a pod owns on the host: its processes, network, uid claim,
/// every container's binds, the share and the directory.
fn destroy_pod(cfg: &Config, pod: &PodDir) {
    let pod_id = pod.id();
    if let Some(cg) = PodCgroup::load(&pod.cgroup_record()) {
        if let Err(e) = cg.destroy(Duration::from_secs(10)) {
            tracing::warn!(pod = %pod_id, error = %e, "removing the pod cgroup");
        }
    }
    kill_from_pid_file(&pod.pid_file("vmm"), "cocoon-vmm");
    kill_from_pid_file(&pod.pid_file("virtiofsd"), "virtiofsd");
    kill_from_pid_file(&pod.pid_file("agent"), "cocoon-agent");
    // The VMM is dead, its TAP with it; the CNI interface's qdisc goes.
    crate::sandbox::network::teardown(pod);
    // Local backend: its containers' processes outlive the agent.
    crate::sandbox::local::remove_cgroups(&format!("cocoon-{pod_id}"));
    crate::sandbox::vmm_jail::release(&cfg.run_dir, pod);
    remove_pod_dir(pod);
}

/// Destroys every pod directory in `cfg.run_dir` that no shim serves: its
/// lock is free and it is older than `min_age`. containerd's clean-up
/// after a dead shim is one bounded `delete` per container; when that was
/// cut off (or containerd itself was down) nothing else would ever remove
/// the pod's mounts, processes and directory. Every shim that starts a pod
/// sweeps, in the background. Returns the pods destroyed.
pub fn sweep_orphans(cfg: &Config, min_age: Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(&cfg.run_dir) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_ok_and(|t| t.is_dir()) || !crate::task::valid_id(&name) {
            continue;
        }
        let pod = PodDir::new(&cfg.run_dir, &name);
        // Only what a shim made: a share or a cgroup record.
        if !pod.private().exists() && !pod.cgroup_record().exists() {
            continue;
        }
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default());
        if !age.is_ok_and(|a| a >= min_age) {
            continue;
        }
        let Ok(Some(_lock)) = pod.try_lock() else {
            continue;
        };
        tracing::warn!(pod = %name, dir = %pod.root().display(), "no shim serves this pod: cleaning up after it");
        destroy_pod(cfg, &pod);
        swept.push(name);
    }
    swept
}
