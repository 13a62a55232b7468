//! `delete` after a killed shim: whatever the shim would have removed,
//! decided from what the shim recorded (never from the share, which the
//! guest can write to).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::sandbox::cgroup::PodCgroup;
use crate::sandbox::process::kill_from_pid_file;
use crate::sandbox::PodDir;
use crate::storage::{recorded_containers, unmount_bundle_rootfs, unshare_container};
use crate::task::remove_pod_dir;

/// Unshares the container, and when it was the pod's last one kills the
/// pod's cgroup (VMM, virtiofsd and whatever they forked) or local agent,
/// unmounts the share and removes the pod directory.
pub fn cleanup_after_killed_shim(cfg: &Config, bundle: &Path, id: &str, pod_id: &str) {
    let pod = PodDir::new(&cfg.run_dir, pod_id);
    unshare_container(&pod, id);
    unmount_bundle_rootfs(bundle);
    let _ = std::fs::remove_file(bundle.join(crate::task::BUNDLE_POD_FILE));
    if !recorded_containers(&pod).is_empty() {
        return;
    }
    if let Some(cg) = PodCgroup::load(&pod.cgroup_record()) {
        if let Err(e) = cg.destroy(Duration::from_secs(10)) {
            tracing::warn!(pod = pod_id, error = %e, "removing the pod cgroup");
        }
    }
    kill_from_pid_file(&pod.pid_file("vmm"), "cocoon-vmm");
    kill_from_pid_file(&pod.pid_file("virtiofsd"), "virtiofsd");
    kill_from_pid_file(&pod.pid_file("agent"), "cocoon-agent");
    // The VMM is dead, its TAP with it; the CNI interface's qdisc goes.
    crate::sandbox::network::teardown(&pod);
    // Local backend: its containers' processes outlive the agent.
    crate::sandbox::local::remove_cgroups(&format!("cocoon-{pod_id}"));
    crate::sandbox::vmm_jail::release(&cfg.run_dir, &pod);
    remove_pod_dir(&pod);
}
