//! The VM backend's start, failure and cleanup paths with stand-in
//! virtiofsd and VMM scripts (no KVM needed): the error quotes the guest
//! console, and nothing is left behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cocoon_shim::config::Config;
use cocoon_shim::sandbox::vm::VmBackend;
use cocoon_shim::sandbox::{Backend, PodDir};

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Stand-in virtiofsd: creates its --socket-path and waits.
const FAKE_VIRTIOFSD: &str = r#"while [ $# -gt 0 ]; do [ "$1" = --socket-path ] && touch "$2"; shift; done; exec sleep 1000"#;

fn console_arg() -> &'static str {
    r#"for a in "$@"; do case "$a" in file:*) c=${a#file:};; esac; done"#
}

async fn start_with(
    pod_id: &str,
    vmm_body: &str,
    timeout: u64,
) -> (tempfile::TempDir, String, PodDir) {
    let dir = tempfile::Builder::new()
        .prefix("cocoon-vm-test")
        .tempdir()
        .unwrap();
    let cfg = Config {
        vmm: script(dir.path(), "vmm", &format!("{}\n{vmm_body}", console_arg())),
        virtiofsd: script(dir.path(), "virtiofsd", FAKE_VIRTIOFSD),
        run_dir: dir.path().join("run"),
        agent_timeout_secs: timeout,
        ..Config::default()
    };
    let pod = PodDir::new(&cfg.run_dir, pod_id);
    std::fs::create_dir_all(pod.shared()).unwrap();
    let mut b = VmBackend::new(cfg, pod.clone());
    let err = b
        .start()
        .await
        .expect_err("start must fail without an agent");
    b.stop().await.unwrap();
    let msg = cocoon_shim::task::rpc_error::chain(&err);
    (dir, msg, pod)
}

fn assert_stopped(pod: &PodDir) {
    assert!(
        !cocoon_shim::storage::has_mounts_below(pod.root()),
        "share still mounted"
    );
    for role in ["vmm", "virtiofsd"] {
        assert!(!pod.pid_file(role).exists(), "{role} pid file left");
    }
    // The pod cgroup (and the shared parent, when no other pod uses it)
    // went with the processes.
    let root = cocoon_shim::sandbox::cgroup::cgroup2_root().expect("cgroup v2 is mounted");
    let name = pod.root().file_name().unwrap();
    let cg = root
        .join(cocoon_shim::sandbox::cgroup::DEFAULT_PARENT)
        .join(name);
    assert!(!cg.exists(), "pod cgroup {} left", cg.display());
    assert!(!pod.cgroup_record().exists(), "cgroup record left");
    // The VMM's uid was given back.
    assert!(!pod.vmm_uid_record().exists(), "uid record left");
    let claims = pod.root().parent().unwrap().join("vmm-uids");
    let held: Vec<_> = std::fs::read_dir(&claims)
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
                .filter(|t| t == pod.root())
                .collect()
        })
        .unwrap_or_default();
    assert!(held.is_empty(), "uid claims left: {held:?}");
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let root = pod
        .root()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert!(
        !ps.lines().any(|l| l.contains(&root)),
        "helper processes left"
    );
}

#[tokio::test]
async fn vmm_exit_reports_the_console_tail() {
    let (_d, msg, pod) = start_with(
        &format!("vmm-exit-{}", std::process::id()),
        r#"echo "booting"  >"$c"; echo "Kernel panic - not syncing: fake" >>"$c"; exit 2"#,
        30,
    )
    .await;
    assert!(msg.contains("cocoon-vmm"), "{msg}");
    assert!(msg.contains("Kernel panic - not syncing: fake"), "{msg}");
    assert_stopped(&pod);
}

#[tokio::test]
async fn agent_timeout_reports_the_console_tail() {
    let (_d, msg, pod) = start_with(
        &format!("agent-timeout-{}", std::process::id()),
        r#"echo "guest says hi" >"$c"; exec sleep 1000"#,
        1,
    )
    .await;
    assert!(msg.contains("did not answer within 1 s"), "{msg}");
    assert!(msg.contains("guest says hi"), "{msg}");
    assert_stopped(&pod);
}
