//! Starting the agent: state dirs, reaper, OOM watcher, both listeners.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::cgroup_parent::{self, CgroupParentError};
use crate::config::AgentConfig;
use crate::container::AgentState;
use crate::listen::{AnyListener, ListenError};
use crate::oom::{OomError, OomWatcher};
use crate::reaper::Reaper;
use crate::server::AgentService;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("creating {0}")]
    StateDir(String, #[source] std::io::Error),
    #[error("becoming a child subreaper")]
    Subreaper(#[source] nix::Error),
    #[error("SIGCHLD handler")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("OOM watcher")]
    Oom(#[from] OomError),
    #[error("ttrpc server")]
    Ttrpc(#[from] ttrpc::Error),
    #[error("cgroup parent")]
    CgroupParent(#[from] CgroupParentError),
}

/// Serves until the process is killed (or, as PID 1, the VM restarts). On
/// a host, SIGTERM or SIGINT removes every container and the cgroup parent,
/// then returns.
pub async fn run(config: AgentConfig, is_init: bool) -> Result<(), RunError> {
    for d in [
        config.state_dir.clone(),
        config.bundles_dir(),
        config.containers_dir(),
        config.tty_dir(),
    ] {
        std::fs::create_dir_all(&d).map_err(|e| RunError::StateDir(d.display().to_string(), e))?;
    }
    if !is_init {
        // Container inits are created by a helper that exits; they must be
        // reparented to us, not to the host's init.
        nix::sys::prctl::set_child_subreaper(true).map_err(RunError::Subreaper)?;
    }
    cgroup_parent::setup(&config.cgroup_parent)?;
    let reaper = Reaper::new();
    reaper.spawn_task().map_err(RunError::Signal)?;
    let oom = OomWatcher::new()?;

    let control = AnyListener::bind(&config.listen)?;
    let streams = AnyListener::bind(&config.stream_listen)?;
    // The guest's uptime says how much of a pod's start the kernel and the
    // agent's own start took (the rest is the host's side).
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let uptime = uptime.split_whitespace().next().unwrap_or("?");
    tracing::info!(control = %config.listen, streams = %config.stream_listen, uptime_s = uptime, "agent listening");

    let state = Arc::new(AgentState {
        config,
        reaper,
        oom,
        containers: Default::default(),
        creating: Default::default(),
        is_init,
    });
    tokio::spawn(crate::stream::serve(streams, state.clone()));

    let service = cocoon_agent_protocol::agent_ttrpc::create_agent(Arc::new(AgentService {
        state: state.clone(),
    }));
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(control.into_ttrpc())
        .register_service(service);
    server.start().await?;
    // start() returns once the accept loop is running.
    if is_init {
        // PID 1 ends only through DestroySandbox (a VM restart).
        std::future::pending::<()>().await;
    }
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: removing every container");
    if let Err(e) = crate::sandbox::stop_containers(&state).await {
        tracing::warn!(error = %crate::error_code::chain(&e), "stopping");
    }
    drop(server);
    Ok(())
}
