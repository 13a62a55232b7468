//! SignalProcess, WaitProcess, ListProcesses.

use nix::sys::signal::Signal;

use crate::container::{blocking, lock, AgentState, Container, ContainerError};
use crate::reaper::{ExitInfo, ReaperError};
use libcgroups::common::CgroupManager;

pub fn parse_signal(n: u32) -> Result<Signal, ContainerError> {
    i32::try_from(n)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or_else(|| ContainerError::InvalidArgument(format!("signal: {n} is not a signal")))
}

pub async fn signal_process(
    state: &AgentState,
    id: &str,
    exec_id: &str,
    sig: u32,
    all: bool,
) -> Result<(), ContainerError> {
    let sig = parse_signal(sig)?;
    let c = state.container(id)?;
    if all && exec_id.is_empty() {
        return signal_all(state, &c, sig).await;
    }
    let p = c.process(exec_id)?;
    state.reaper.signal(p.pid, sig)?;
    Ok(())
}

/// Signals every process in the container's cgroup.
pub async fn signal_all(
    state: &AgentState,
    c: &Container,
    sig: Signal,
) -> Result<(), ContainerError> {
    let cg = c.cgroup()?;
    let pids = blocking(move || {
        cg.get_all_pids()
            .map_err(|e| ContainerError::Cgroup("listing the container's processes", Box::new(e)))
    })
    .await?;
    for pid in pids {
        match state.reaper.signal(pid.as_raw(), sig) {
            Ok(()) | Err(ReaperError::Exited(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub async fn wait_process(
    state: &AgentState,
    id: &str,
    exec_id: &str,
) -> Result<(i32, ExitInfo), ContainerError> {
    let p = state.process(id, exec_id)?;
    match p.wait().await {
        Some(info) => Ok((p.pid, info)),
        None => Err(ContainerError::ProcessNotFound {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }),
    }
}

/// Pids in the container's cgroup, with the exec id of those the agent
/// started.
pub async fn list_processes(
    state: &AgentState,
    id: &str,
) -> Result<Vec<(i32, String)>, ContainerError> {
    let c = state.container(id)?;
    let cg = c.cgroup()?;
    let pids = blocking(move || {
        cg.get_all_pids()
            .map_err(|e| ContainerError::Cgroup("listing the container's processes", Box::new(e)))
    })
    .await?;
    let execs = lock(&c.execs);
    Ok(pids
        .into_iter()
        .map(|pid| {
            let pid = pid.as_raw();
            let exec = execs
                .values()
                .find(|p| p.pid == pid)
                .map(|p| p.exec_id.clone())
                .unwrap_or_default();
            (pid, exec)
        })
        .collect())
}
