//! A pod: its backend (VM or local agent), the agent client, the share.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use containerd_shim_protos::events::task::TaskOOM;

use crate::agent_client::{Agent, AgentError};
use crate::events::{publish, EventSink};
use crate::sandbox::{Backend, PodDir, SandboxError};
use crate::storage::{self, has_mounts_below, StorageError};
use cocoon_vmm::rate_limit::RateLimiter;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("preparing the pod directory")]
    Dir(#[from] StorageError),
    #[error("starting the pod")]
    Backend(#[from] SandboxError),
    #[error("setting up the pod's agent")]
    Agent(#[from] AgentError),
}

/// OOM events a guest may send for its own containers, a second.
const OOM_PER_SEC: u32 = 20;

pub struct Pod {
    pub id: String,
    pub backend: Box<dyn Backend>,
    pub agent: Agent,
    /// Where the guest sees `<pod>/shared`.
    pub guest_share: PathBuf,
    /// How the share's binds are flagged on the host.
    pub share_flags: storage::ShareFlags,
    /// The pod's containers.
    containers: SyncMutex<HashSet<String>>,
    /// Every container the pod ever had; shared with the OOM forwarder,
    /// which publishes only events naming one of them (an OOM kill may be
    /// reported just after its container was deleted).
    members: Arc<SyncMutex<HashSet<String>>>,
    /// Forwards the agent's OOM events; ends when the agent connection does.
    oom_forwarder: tokio::task::JoinHandle<()>,
    /// The pod directory's lock, released when the pod is destroyed.
    _lock: crate::sandbox::PodLock,
}

impl Pod {
    /// Creates the pod directory and share, starts the backend, sets up the
    /// sandbox in the agent and starts the OOM event loop.
    pub async fn start(
        id: &str,
        mut backend: Box<dyn Backend>,
        events: Arc<dyn EventSink>,
    ) -> Result<Pod, PodError> {
        let dir = backend.pod_dir().clone();
        // Held for the pod's life, and on a failed start until its clean-up
        // is done: a pod directory whose lock is free has no shim, and is
        // swept (cleanup::sweep_orphans).
        let mut lock = None;
        let started = async {
            storage::setup_share(&dir, backend.share_flags())?;
            let root = dir.root().display().to_string();
            let held = dir
                .try_lock()
                .map_err(|source| StorageError::Io {
                    what: "locking the pod directory",
                    path: root.clone(),
                    source,
                })?
                .ok_or(StorageError::PodLocked(root))?;
            lock = Some(held);
            let ep = backend.start().await?;
            let agent =
                Agent::connect(&ep.control, &ep.streams, backend.agent_call_timeout()).await?;
            let share = agent
                .create_sandbox(id, &ep.share_tag, &ep.interfaces)
                .await?;
            Ok::<_, PodError>((agent, share, backend.share_flags()))
        }
        .await;
        let (agent, share, share_flags) = match started {
            Ok(v) => v,
            Err(e) => {
                let _ = backend.stop().await;
                remove_pod_dir(&dir);
                drop(lock);
                return Err(e);
            }
        };
        let lock = lock.expect("a started pod holds its directory's lock");
        let members: Arc<SyncMutex<HashSet<String>>> = Arc::default();
        let oom_forwarder = spawn_oom_forwarder(id, agent.clone(), members.clone(), events);
        tracing::info!(pod = id, pid = backend.pid(), share = %share, "pod started");
        Ok(Pod {
            id: id.to_string(),
            backend,
            agent,
            guest_share: PathBuf::from(share),
            share_flags,
            containers: SyncMutex::default(),
            members,
            oom_forwarder,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &PodDir {
        self.backend.pod_dir()
    }

    pub fn add_container(&self, id: &str) {
        self.containers
            .lock()
            .expect("not poisoned")
            .insert(id.to_string());
        self.members
            .lock()
            .expect("not poisoned")
            .insert(id.to_string());
    }

    pub fn remove_container(&self, id: &str) {
        self.containers.lock().expect("not poisoned").remove(id);
    }

    pub fn is_empty(&self) -> bool {
        self.containers.lock().expect("not poisoned").is_empty()
    }

    /// Stops everything and removes the pod directory. Bounded: the agent
    /// gets its deadline, the VM is killed after that.
    pub async fn destroy(mut self) {
        if !*self.backend.dead().borrow() {
            if let Err(e) = self.agent.destroy_sandbox().await {
                tracing::warn!(pod = %self.id, error = %e, "DestroySandbox failed");
            }
        }
        if let Err(e) = self.backend.stop().await {
            tracing::warn!(pod = %self.id, error = %crate::task::rpc_error::chain(&e), "stopping the backend");
        }
        // The agent let the last OOM events go before DestroySandbox
        // returned; publish them before the shim may exit.
        let forwarder = &mut self.oom_forwarder;
        if tokio::time::timeout(Duration::from_secs(2), forwarder)
            .await
            .is_err()
        {
            self.oom_forwarder.abort();
        }
        remove_pod_dir(self.backend.pod_dir());
        tracing::info!(pod = %self.id, "pod destroyed");
    }
}

/// Decides which OOM events of a guest get published: only those naming a
/// container of this pod (a guest could name any container on the host),
/// at a bounded rate.
#[derive(Debug)]
pub struct OomGate {
    rate: RateLimiter,
    foreign_log: RateLimiter,
}

impl OomGate {
    pub fn new() -> OomGate {
        OomGate {
            rate: RateLimiter::new(OOM_PER_SEC),
            foreign_log: RateLimiter::new(1),
        }
    }

    /// Whether the event for container `id` (`known`: one of the pod's)
    /// may be published.
    pub fn admit(&self, pod: &str, id: &str, known: bool) -> bool {
        if !known {
            if self.foreign_log.allow() {
                tracing::warn!(pod, id = %id.escape_debug(), "the guest sent an OOM event for a container not in this pod; dropped (logged at most once a second)");
            }
            return false;
        }
        self.rate.allow()
    }
}

impl Default for OomGate {
    fn default() -> Self {
        Self::new()
    }
}

/// Publishes the agent's OOM events that pass the [`OomGate`].
fn spawn_oom_forwarder(
    pod: &str,
    agent: Agent,
    containers: Arc<SyncMutex<HashSet<String>>>,
    events: Arc<dyn EventSink>,
) -> tokio::task::JoinHandle<()> {
    let pod = pod.to_string();
    tokio::spawn(async move {
        let gate = OomGate::new();
        while let Ok(container_id) = agent.next_oom().await {
            let known = containers
                .lock()
                .expect("not poisoned")
                .contains(&container_id);
            if !gate.admit(&pod, &container_id, known) {
                continue;
            }
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
    })
}

/// Unmounts the pod share and removes the pod directory, unless something
/// is still mounted in it.
pub fn remove_pod_dir(dir: &PodDir) {
    for id in storage::recorded_containers(dir) {
        storage::unshare_container(dir, &id);
    }
    storage::teardown_share(dir);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_events_only_for_own_containers_and_bounded() {
        let g = OomGate::new();
        assert!(!g.admit("p", "someone-elses-container", false));
        assert!(g.admit("p", "mine", true));
        // A guest flooding OOM events for its own container: a few a second
        // go through (the flood may straddle a second: at most two windows).
        let passed = (0..10_000).filter(|_| g.admit("p", "mine", true)).count();
        assert!(passed <= 2 * OOM_PER_SEC as usize, "{passed}");
    }
}
