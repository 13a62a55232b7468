//! The agent's table of containers and processes, and the errors of every
//! container operation (`container_*.rs`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use ttrpc::Code;

use crate::config::AgentConfig;
use crate::error_code::RpcCode;
use crate::helper::{HelperError, HelperFailure};
use crate::oom::OomWatcher;
use crate::reaper::{ExitInfo, Reaper, ReaperError};
use crate::spec_check::SpecError;
use crate::stdio::{StdioError, StreamSlots};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("process {exec_id:?} of container {container_id} not found")]
    ProcessNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0} already exists")]
    Exists(String),
    #[error("exec {exec_id} already exists in container {container_id}")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("container {id}: {reason}")]
    WrongState { id: String, reason: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    PodNamespaces(#[from] crate::pod_namespaces::PodNamespacesError),
    #[error("creating the process")]
    Helper(#[from] HelperError),
    #[error("stdio")]
    Stdio(#[from] StdioError),
    #[error("terminal")]
    Console(#[from] crate::console::ConsoleError),
    #[error("{0}")]
    Libcontainer(
        &'static str,
        #[source] libcontainer::error::LibcontainerError,
    ),
    #[error("{0}")]
    Cgroup(&'static str, #[source] BoxError),
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("signal")]
    Signal(#[from] ReaperError),
    #[error("container {0}: processes still alive after the timeout")]
    Timeout(String),
}

impl RpcCode for ContainerError {
    fn rpc_code(&self) -> Code {
        use ContainerError as E;
        match self {
            E::NotFound(_) | E::ProcessNotFound { .. } => Code::NOT_FOUND,
            E::Exists(_) | E::ExecExists { .. } => Code::ALREADY_EXISTS,
            E::WrongState { .. } => Code::FAILED_PRECONDITION,
            E::PodNamespaces(crate::pod_namespaces::PodNamespacesError::NoSandboxId { .. }) => {
                Code::INVALID_ARGUMENT
            }
            E::PodNamespaces(_) => Code::FAILED_PRECONDITION,
            E::InvalidArgument(_) | E::Spec(_) => Code::INVALID_ARGUMENT,
            E::Helper(HelperError::Failed { class, .. }) => match class {
                HelperFailure::InvalidSpec => Code::INVALID_ARGUMENT,
                HelperFailure::AlreadyExists => Code::ALREADY_EXISTS,
                HelperFailure::WrongState => Code::FAILED_PRECONDITION,
                HelperFailure::Internal => Code::INTERNAL,
            },
            E::Stdio(StdioError::NoTerminal) => Code::FAILED_PRECONDITION,
            E::Libcontainer(_, libcontainer::error::LibcontainerError::IncorrectStatus(_)) => {
                Code::FAILED_PRECONDITION
            }
            E::Signal(ReaperError::Exited(_)) => Code::NOT_FOUND,
            E::Timeout(_) => Code::DEADLINE_EXCEEDED,
            _ => Code::INTERNAL,
        }
    }
}

/// One process the agent started: a container's init or an exec.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    pub slots: Arc<StreamSlots>,
    exit: watch::Receiver<Option<ExitInfo>>,
}

impl Process {
    /// Wraps a registered pid; `exited` fires when the reaper collects it.
    pub fn new(
        exec_id: &str,
        pid: i32,
        slots: Arc<StreamSlots>,
        exited: tokio::sync::oneshot::Receiver<ExitInfo>,
    ) -> Arc<Self> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Ok(info) = exited.await {
                let _ = tx.send(Some(info));
            }
        });
        Arc::new(Process {
            exec_id: exec_id.to_string(),
            pid,
            slots,
            exit: rx,
        })
    }

    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Waits for the exit. `None` if the process is being forgotten.
    pub async fn wait(&self) -> Option<ExitInfo> {
        let mut rx = self.exit.clone();
        rx.wait_for(|e| e.is_some()).await.ok().and_then(|e| *e)
    }
}

pub struct Container {
    pub id: String,
    /// Absolute cgroup path (relative to the cgroup mount).
    pub cgroup_path: PathBuf,
    pub bundle: PathBuf,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Exec ids being created.
    pub exec_reserved: Mutex<HashSet<String>>,
    pub started: AtomicBool,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// libcgroups' manager for this container's cgroup.
    pub fn cgroup(&self) -> Result<libcgroups::common::AnyCgroupManager, ContainerError> {
        libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
            cgroup_path: self.cgroup_path.clone(),
            systemd_cgroup: false,
            container_name: self.id.clone(),
        })
        .map_err(|e| ContainerError::Cgroup("opening the container cgroup", Box::new(e)))
    }
}

/// Everything the RPC handlers share.
pub struct AgentState {
    pub config: AgentConfig,
    pub reaper: Arc<Reaper>,
    pub oom: Arc<OomWatcher>,
    pub containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Container ids being created.
    pub creating: Mutex<HashSet<String>>,
    /// True when the agent is the guest's PID 1.
    pub is_init: bool,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AgentState {
    pub fn container(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        self.container(id)?.process(exec_id)
    }

    /// libcontainer's handle of a container, loaded from its state dir.
    pub fn load(&self, id: &str) -> Result<libcontainer::container::Container, ContainerError> {
        libcontainer::container::Container::load(self.config.containers_dir().join(id))
            .map_err(|e| ContainerError::Libcontainer("loading container state", e))
    }
}

/// Runs blocking work (libcontainer, cgroup files) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, ContainerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ContainerError::Io("blocking task", std::io::Error::other(e)))?
}

/// Checks an id from a request.
pub fn check_id(field: &'static str, id: &str) -> Result<(), ContainerError> {
    cocoon_agent_protocol::stream_header::validate_id(field, id)
        .map_err(|e| ContainerError::InvalidArgument(e.to_string()))
}
