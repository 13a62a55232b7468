//! `delete` after a killed shim: whatever the shim would have removed.

use std::path::Path;

use nix::mount::{umount2, MntFlags};

use crate::config::Config;
use crate::sandbox::process::kill_from_pid_file;
use crate::sandbox::PodDir;
use crate::shim::bundle_pod_id;
use crate::storage::{unmount_bundle_rootfs, unshare_container};
use crate::task::remove_pod_dir;

/// Unshares the container, and when it was the pod's last one kills the
/// pod's VMM, virtiofsd or local agent and removes the pod directory.
pub fn cleanup_after_killed_shim(cfg: &Config, bundle: &Path, id: &str) {
    let pod_id = bundle_pod_id(bundle, id);
    let pod = PodDir::new(&cfg.run_dir, &pod_id);
    unshare_container(&pod.container(id));
    unmount_bundle_rootfs(bundle);
    let _ = std::fs::remove_file(bundle.join(crate::task::BUNDLE_POD_FILE));
    let others = std::fs::read_dir(pod.shared())
        .map(|rd| rd.flatten().count())
        .unwrap_or(0);
    if others > 0 {
        return;
    }
    kill_from_pid_file(&pod.pid_file("vmm"), "cocoon-vmm");
    kill_from_pid_file(&pod.pid_file("virtiofsd"), "virtiofsd");
    kill_from_pid_file(&pod.pid_file("agent"), "cocoon-agent");
    // Local backend: its containers' processes outlive the agent.
    crate::sandbox::local::remove_cgroups(&format!("cocoon-{pod_id}"));
    let _ = umount2(&pod.shared(), MntFlags::MNT_DETACH);
    remove_pod_dir(&pod);
}
