//! RemoveContainer: kill everything, wait, release cgroup, state and stdio.

use std::sync::Arc;
use std::time::Duration;

use libcgroups::common::{CgroupManager, FreezerState};
use nix::sys::signal::Signal;

use crate::container::{blocking, lock, AgentState, Container, ContainerError};
use crate::container_signal::signal_all;

pub const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn remove_container(
    state: &Arc<AgentState>,
    id: &str,
    timeout: Duration,
) -> Result<(), ContainerError> {
    let c = state.container(id)?;
    kill_and_wait(state, &c, timeout).await?;

    // Before the cgroup goes: a last look at its OOM counter.
    state.oom.unwatch(id);
    let st = state.clone();
    let cid = id.to_string();
    let cgroup = c.cgroup()?;
    blocking(move || {
        match st.load(&cid) {
            Ok(mut lc) => lc
                .delete(true)
                .map_err(|e| ContainerError::Libcontainer("deleting the container", e))?,
            // No libcontainer state (creation failed half-way): the cgroup
            // may still be there.
            Err(_) => cgroup
                .remove()
                .map_err(|e| ContainerError::Cgroup("removing the cgroup", Box::new(e)))?,
        }
        Ok(())
    })
    .await?;

    let mut procs = vec![c.init.clone()];
    procs.extend(lock(&c.execs).values().cloned());
    for p in procs {
        p.slots.close_all();
        state.reaper.forget(p.pid);
    }
    let _ = std::fs::remove_dir_all(&c.bundle);
    lock(&state.containers).remove(id);
    tracing::debug!(id, "container removed");
    Ok(())
}

/// SIGKILLs every process of the container and waits until the cgroup is
/// empty and the init has been reaped.
pub async fn kill_and_wait(
    state: &AgentState,
    c: &Container,
    timeout: Duration,
) -> Result<(), ContainerError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // A frozen task only dies once thawed (cgroup v1 freezer).
    if let Ok(cg) = c.cgroup() {
        let _ = blocking(move || {
            let _ = cg.freeze(FreezerState::Thawed);
            Ok(())
        })
        .await;
    }
    loop {
        let _ = state.reaper.signal(c.init.pid, Signal::SIGKILL);
        let _ = signal_all(state, c, Signal::SIGKILL).await;
        let cg = c.cgroup()?;
        let empty =
            blocking(move || Ok(cg.get_all_pids().map(|p| p.is_empty()).unwrap_or(true))).await?;
        if empty && c.init.exited().is_some() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ContainerError::Timeout(c.id.clone()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
