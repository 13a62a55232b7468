//! The shim v2 lifecycle: `start` (one shim per pod), the task server,
//! and `delete` after a killed shim.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_str_to_file;
use containerd_shim::{
    spawn, Config as ShimConfig, DeleteResponse, Error as ShimError, ExitSignal, Flags, Shim,
    StartOpts,
};
use oci_spec::runtime::Spec;

use crate::config::{BackendKind, Config};
use crate::events::ContainerdEvents;
use crate::sandbox::local::LocalBackend;
use crate::sandbox::vm::VmBackend;
use crate::sandbox::{Backend, PodDir};
use crate::task::{
    pod_id_for, BackendFactory, BundleRecord, PodParams, TaskService, BUNDLE_POD_FILE,
};

pub struct CocoonShim {
    id: String,
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

/// The production backend factory: config from `ConfigPath`,
/// `COCOON_CONFIG` or `/etc/cocoon/config.toml`.
pub fn backend_factory() -> BackendFactory {
    Arc::new(|p: &PodParams| {
        let sandbox_id = p.sandbox_id;
        let cfg = Config::load(p.config_path).map_err(|e| crate::task::rpc_error::chain(&e))?;
        // Pods whose shim was killed and whose clean-up was cut off.
        let sweep_cfg = cfg.clone();
        std::thread::spawn(move || {
            crate::cleanup::sweep_orphans(&sweep_cfg, crate::cleanup::SWEEP_MIN_AGE)
        });
        let pod = PodDir::new(&cfg.run_dir, sandbox_id);
        if matches!(cfg.backend, BackendKind::Local) && p.netns.is_some() {
            return Err(
                "backend = \"local\" runs the agent on the host and has no pod \
                 networking: it cannot take the pod's network namespace"
                    .into(),
            );
        }
        let b: Box<dyn Backend> = match cfg.backend {
            BackendKind::Vm => Box::new(
                VmBackend::new(cfg, pod)
                    .with_cgroups_path(p.cgroups_path.map(str::to_string))
                    .with_netns(p.netns.map(Path::to_path_buf)),
            ),
            BackendKind::Local => Box::new(LocalBackend::new(
                cfg.agent.clone(),
                pod,
                sandbox_id,
                Duration::from_secs(cfg.agent_timeout_secs),
            )),
        };
        Ok(b)
    })
}

/// Sends tracing output to the bundle's `log` FIFO, which containerd reads.
fn init_logging(level: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    let filter = tracing_subscriber::EnvFilter::try_from_env("COCOON_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match file {
        Ok(f) => {
            // Blocking writes from here on: a slow reader must not lose lines.
            // SAFETY: fcntl on a file descriptor we own.
            unsafe { libc::fcntl(std::os::unix::io::AsRawFd::as_raw_fd(&f), libc::F_SETFL, 0) };
            let _ = builder.with_writer(std::sync::Mutex::new(f)).try_init();
        }
        Err(_) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}

#[async_trait]
impl Shim for CocoonShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        CocoonShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, ShimError> {
        // One shim per pod: containers of a CRI pod share their sandbox's
        // socket (the spawned child finds it in use and exits).
        let grouping = Spec::load(self.bundle.join("config.json"))
            .map(|s| pod_id_for(&opts.id, &s))
            .unwrap_or_else(|_| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, ShimError> {
        // The pod's own configuration (its run dir), as recorded at Create.
        let rec = bundle_record(&self.bundle, &self.id);
        let cfg = match Config::load(rec.config_path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                let msg = crate::task::rpc_error::chain(&e);
                return Err(ShimError::InvalidArgument(format!("delete: {msg}")));
            }
        };
        crate::cleanup::cleanup_after_killed_shim(&cfg, &self.bundle, &self.id, &rec.pod_id);
        let mut resp = DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = Some(crate::task::exit_timestamp_now()).into();
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let level = Config::load(None)
            .map(|c| c.log_level)
            .unwrap_or_else(|_| "info".into());
        init_logging(&level);
        tracing::info!(id = %self.id, namespace = %self.namespace, "cocoon shim serving");
        let events = Arc::new(ContainerdEvents::new(publisher, &self.namespace));
        TaskService::new(events, backend_factory(), self.exit.clone())
    }
}

/// Reads what Create recorded in a bundle: the pod and its `ConfigPath`
/// (the container's own pod and the default configuration when there is
/// no record).
pub fn bundle_record(bundle: &Path, id: &str) -> BundleRecord {
    let rec = std::fs::read(bundle.join(BUNDLE_POD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<BundleRecord>(&b).ok())
        .filter(|r| crate::task::valid_id(&r.pod_id));
    rec.unwrap_or_else(|| BundleRecord {
        pod_id: id.to_string(),
        config_path: None,
    })
}
