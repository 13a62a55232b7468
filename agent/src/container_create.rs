//! CreateContainer: spec check, bundle, stdio, libcontainer helper.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oci_spec::runtime::Spec;

use crate::console::ConsoleSocket;
use crate::container::{check_id, lock, AgentState, Container, ContainerError, Process};
use crate::helper::{self, HelperOp, HelperRequest};
use crate::spec_check::{self, Placement};
use crate::stdio::{make_stdio, StdioRequest};

/// A short unique console socket path (Unix socket paths are limited to
/// 108 bytes, container ids are not).
pub fn console_path(state: &AgentState) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    state
        .config
        .tty_dir()
        .join(format!("{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Releases a reserved id when creation ends, successfully or not.
struct Reservation<'a> {
    state: &'a AgentState,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.state.creating).remove(&self.id);
    }
}

pub async fn create_container(
    state: &AgentState,
    id: &str,
    spec_json: &[u8],
    stdio: StdioRequest,
) -> Result<Arc<Container>, ContainerError> {
    check_id("container id", id)?;
    let _reservation = {
        let containers = lock(&state.containers);
        let mut creating = lock(&state.creating);
        if containers.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(ContainerError::Exists(id.to_string()));
        }
        Reservation {
            state,
            id: id.to_string(),
        }
    };

    let mut spec: Spec = spec_check::parse("spec", spec_json)?;
    crate::pod_namespaces::join_sandbox(state, id, &mut spec)?;
    let spec = spec_check::check_spec(
        spec,
        &Placement {
            container_id: id,
            share_dir: &state.config.share_dir,
            cgroup_parent: &state.config.cgroup_parent,
            terminal: stdio.terminal,
        },
    )?;
    let cgroup_path = spec_check::cgroup_path(&state.config.cgroup_parent, id);

    let bundle = state.config.bundles_dir().join(id);
    std::fs::create_dir_all(&bundle).map_err(|e| ContainerError::Io("creating the bundle", e))?;
    let result = build(state, id, &spec, &bundle, stdio).await;
    let (pid, since, slots) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&bundle);
            return Err(e);
        }
    };

    let exited = state.reaper.watch(pid, since);
    let init = Process::new("", pid, slots, exited);
    let container = Arc::new(Container {
        id: id.to_string(),
        cgroup_path: cgroup_path.clone(),
        bundle,
        init,
        execs: Default::default(),
        exec_reserved: Default::default(),
        started: Default::default(),
    });
    state.oom.watch(id, &cgroup_path);
    lock(&state.containers).insert(id.to_string(), container.clone());
    tracing::debug!(id, pid, "container created");
    Ok(container)
}

async fn build(
    state: &AgentState,
    id: &str,
    spec: &Spec,
    bundle: &std::path::Path,
    stdio: StdioRequest,
) -> Result<(i32, std::time::Instant, Arc<crate::stdio::StreamSlots>), ContainerError> {
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| ContainerError::Io("encoding config.json", std::io::Error::other(e)))?;
    std::fs::write(bundle.join("config.json"), json)
        .map_err(|e| ContainerError::Io("writing config.json", e))?;

    let setup = make_stdio(stdio)?;
    let console = if stdio.terminal {
        Some(ConsoleSocket::bind(&console_path(state))?)
    } else {
        None
    };
    let root = state.config.containers_dir();
    let (pid, since) = helper::run(
        &state.reaper,
        HelperRequest {
            op: HelperOp::Create { bundle },
            container_id: id,
            root: &root,
            console_socket: console.as_ref().map(|c| c.path()),
            stdio: setup.child,
            work_dir: &state.config.state_dir,
        },
    )
    .await?;
    if let Some(console) = console {
        match console.receive() {
            Ok(master) => {
                let _ = setup.slots.tty.set(Arc::new(master));
            }
            Err(e) => {
                // The container exists but is unusable: take it down again.
                let _ = state.reaper.signal(pid, nix::sys::signal::Signal::SIGKILL);
                if let Ok(mut c) = state.load(id) {
                    let _ = c.delete(true);
                }
                return Err(e.into());
            }
        }
    }
    Ok((pid, since, setup.slots))
}
