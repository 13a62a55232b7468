//! A pod: its backend (VM or local agent), the agent client, the share.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::events::task::TaskOOM;

use crate::agent_client::{Agent, AgentError};
use crate::events::{publish, EventSink};
use crate::sandbox::{Backend, PodDir, SandboxError};
use crate::storage::has_mounts_below;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("creating {0}")]
    Dir(String, #[source] std::io::Error),
    #[error("starting the pod")]
    Backend(#[from] SandboxError),
    #[error("setting up the pod's agent")]
    Agent(#[from] AgentError),
}

pub struct Pod {
    pub id: String,
    pub backend: Box<dyn Backend>,
    pub agent: Agent,
    /// Where the guest sees `<pod>/shared`.
    pub guest_share: PathBuf,
    pub containers: HashSet<String>,
    /// Forwards the agent's OOM events; ends when the agent connection does.
    oom_forwarder: tokio::task::JoinHandle<()>,
}

impl Pod {
    /// Creates the pod directory, starts the backend, sets up the sandbox
    /// in the agent and starts the OOM event loop.
    pub async fn start(
        id: &str,
        mut backend: Box<dyn Backend>,
        events: Arc<dyn EventSink>,
    ) -> Result<Pod, PodError> {
        let dir = backend.pod_dir().clone();
        for d in [dir.root().to_path_buf(), dir.shared()] {
            std::fs::create_dir_all(&d).map_err(|e| PodError::Dir(d.display().to_string(), e))?;
        }
        let started = async {
            let ep = backend.start().await?;
            let agent = Agent::connect(&ep.control, &ep.streams).await?;
            let share = agent.create_sandbox(id, &ep.share_tag).await?;
            Ok::<_, PodError>((agent, share))
        }
        .await;
        let (agent, share) = match started {
            Ok(v) => v,
            Err(e) => {
                let _ = backend.stop().await;
                remove_pod_dir(&dir);
                return Err(e);
            }
        };
        let oom_agent = agent.clone();
        let oom_forwarder = tokio::spawn(async move {
            while let Ok(container_id) = oom_agent.next_oom().await {
                tracing::info!(%container_id, "oom kill");
                publish(
                    events.as_ref(),
                    TaskOOM {
                        container_id,
                        ..Default::default()
                    },
                )
                .await;
            }
        });
        tracing::info!(pod = id, pid = backend.pid(), share = %share, "pod started");
        Ok(Pod {
            id: id.to_string(),
            backend,
            agent,
            guest_share: PathBuf::from(share),
            containers: HashSet::new(),
            oom_forwarder,
        })
    }

    pub fn dir(&self) -> &PodDir {
        self.backend.pod_dir()
    }

    /// Stops everything and removes the pod directory.
    pub async fn destroy(mut self) {
        if !*self.backend.dead().borrow() {
            if let Err(e) = self.agent.destroy_sandbox().await {
                tracing::warn!(pod = %self.id, error = %e, "DestroySandbox failed");
            }
        }
        if let Err(e) = self.backend.stop().await {
            tracing::warn!(pod = %self.id, error = %e, "stopping the backend");
        }
        // The agent let the last OOM events go before DestroySandbox
        // returned; publish them before the shim may exit.
        let forwarder = &mut self.oom_forwarder;
        if tokio::time::timeout(std::time::Duration::from_secs(2), forwarder)
            .await
            .is_err()
        {
            self.oom_forwarder.abort();
        }
        remove_pod_dir(self.backend.pod_dir());
        tracing::info!(pod = %self.id, "pod destroyed");
    }
}

/// Removes the pod directory unless something is still mounted in it.
pub fn remove_pod_dir(dir: &PodDir) {
    if has_mounts_below(dir.root()) {
        tracing::warn!(dir = %dir.root().display(), "still mounted; not removing");
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir.root()) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.root().display(), error = %e, "removing the pod dir");
        }
    }
}
