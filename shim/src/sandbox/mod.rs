//! Where a pod's agent runs: the seam between the task service and the
//! hypervisor. [`vm::VmBackend`] boots a micro-VM; [`local::LocalBackend`]
//! runs `cocoon-agent` on the host (tests, no isolation).

pub mod cgroup;
pub mod local;
pub mod network;
pub mod output;
pub mod pod_dir;
pub mod port_forward;
pub mod process;
pub mod template;
pub mod vm;
pub mod vmm_jail;

use async_trait::async_trait;
use cocoon_agent_protocol::address::Address;
use tokio::sync::watch;

pub use pod_dir::{PodDir, PodLock};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited before it was ready ({status})")]
    EarlyExit { what: String, status: String },
    #[error(
        "the agent did not answer within {secs} s: {cause}; last guest console lines:\n{console}"
    )]
    AgentTimeout {
        secs: u64,
        cause: String,
        console: String,
    },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("the pod cgroup: {0}")]
    Cgroup(String),
    #[error("the pod's network")]
    Network(#[from] network::NetworkError),
    #[error("the pod's port forward")]
    PortForward(#[from] port_forward::PortForwardError),
}

/// How to reach the agent of a running pod.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub control: Address,
    pub streams: Address,
    /// virtio-fs tag of the pod share; empty: the agent sees the share dir
    /// directly (local backend).
    pub share_tag: String,
    /// The pod's interfaces, for the agent to configure (empty: loopback
    /// only).
    pub interfaces: Vec<cocoon_netconf::InterfaceConfig>,
}

/// One pod's isolation boundary and the agent inside it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Starts everything and returns once the agent's control socket can
    /// be connected to (or fails with the reason).
    async fn start(&mut self) -> Result<Endpoints, SandboxError>;
    /// Stops and removes everything `start` created; idempotent.
    async fn stop(&mut self) -> Result<(), SandboxError>;
    /// Kills the VM (or the local agent) at once, without waiting: for an
    /// agent that stopped answering. `dead()` turns true when it is gone.
    fn kill_now(&self);
    /// How the pod's share is set up on the host.
    fn share_flags(&self) -> crate::storage::ShareFlags {
        crate::storage::ShareFlags::Vm
    }
    /// The deadline of the pod's agent calls (but the long polls).
    fn agent_call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }
    /// The host pid reported for every task of the pod (the VMM's, as
    /// Kata does; the agent's for the local backend).
    fn pid(&self) -> u32;
    /// Becomes `true` when the VM (or the local agent) has died.
    fn dead(&self) -> watch::Receiver<bool>;
    /// The pod's first container was created (before it starts): a VM
    /// restored from a template without a working set records it now.
    fn container_created(&self) {}
    fn pod_dir(&self) -> &PodDir;
}
