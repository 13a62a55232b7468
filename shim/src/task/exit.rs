//! One task per started process: waits for its exit in the agent (or for
//! the pod to die), drains its output, records the status and publishes
//! `/tasks/exit`.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::events::task::TaskExit;
use tokio::sync::watch;

use super::service::Shared;
use super::state::{now_nanos, ExitInfo};
use crate::agent_client::Agent;
use crate::events::publish;

/// Status reported when the pod died under a process (as Kata does).
pub const LOST_STATUS: u32 = 255;
/// How long output may keep flowing after the exit.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

pub fn spawn_exit_watcher(
    shared: Arc<Shared>,
    agent: Agent,
    id: String,
    exec_id: String,
    host_pid: u32,
    mut dead: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let info = tokio::select! {
            r = agent.wait(&id, &exec_id) => match r {
                Ok(w) => super::reply::exit_info(&w),
                Err(e) => {
                    tracing::warn!(%id, %exec_id, error = %e, "waiting for the process failed");
                    ExitInfo { status: LOST_STATUS, at_nanos: now_nanos() }
                }
            },
            _ = dead.wait_for(|d| *d) => {
                tracing::warn!(%id, %exec_id, "the pod died under the process");
                ExitInfo { status: LOST_STATUS, at_nanos: now_nanos() }
            }
        };
        let outputs = {
            let mut st = shared.state.lock().await;
            st.containers
                .get_mut(&id)
                .and_then(|c| c.process_mut(&exec_id))
                .and_then(|p| p.io.as_mut())
                .map(|io| io.take_outputs())
        };
        if let Some(o) = outputs {
            crate::stdio::wait_outputs(o, DRAIN_LIMIT).await;
        }
        {
            let mut st = shared.state.lock().await;
            if let Some(p) = st
                .containers
                .get_mut(&id)
                .and_then(|c| c.process_mut(&exec_id))
            {
                p.status = Status::STOPPED;
                p.exit_tx.send_replace(Some(info));
            }
        }
        tracing::info!(%id, %exec_id, status = info.status, "process exited");
        publish(
            shared.events.as_ref(),
            TaskExit {
                container_id: id.clone(),
                id: if exec_id.is_empty() { id } else { exec_id },
                pid: host_pid,
                exit_status: info.status,
                exited_at: Some(info.timestamp()).into(),
                ..Default::default()
            },
        )
        .await;
    });
}
