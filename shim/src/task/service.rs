//! The `Task` trait implementation: every RPC of `containerd.task.v2.Task`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::ExitSignal;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::*;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::Task;
use oci_spec::runtime::Spec;
use tokio::sync::Mutex;
use ttrpc::r#async::TtrpcContext;

use super::exit::spawn_exit_watcher;
use super::pod::Pod;
use super::reply;
use super::rpc_error::{self as rpc, from_agent};
use super::state::{Container, Process};
use crate::agent_client::AgentError;
use crate::events::{publish, EventSink};
use crate::sandbox::network::{PodNetwork, HOST_NETWORK_UNSUPPORTED};
use crate::sandbox::Backend;
use crate::stdio::{self, StdioPaths};
use crate::storage;

type Res<T> = ttrpc::Result<T>;

/// What the backend of a new pod is made from.
#[derive(Debug, Clone, Copy)]
pub struct PodParams<'a> {
    pub sandbox_id: &'a str,
    /// The runtime options' `ConfigPath`, if any.
    pub config_path: Option<&'a Path>,
    /// The sandbox spec's `linux.cgroupsPath`, if any.
    pub cgroups_path: Option<&'a str>,
    /// The sandbox spec's network namespace (CNI's), if it names one.
    pub netns: Option<&'a Path>,
}

/// Makes the backend of a new pod; the error names the bad config field.
pub type BackendFactory = Arc<dyn Fn(&PodParams) -> Result<Box<dyn Backend>, String> + Send + Sync>;

/// How long a create waits for the same pod's teardown to finish.
const POD_TEARDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Written into the bundle: which pod a container belongs to and the
/// runtime's `ConfigPath` (read by the `delete` command after a killed
/// shim).
pub const BUNDLE_POD_FILE: &str = "cocoon-sandbox.json";

/// The contents of [`BUNDLE_POD_FILE`].
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BundleRecord {
    pub pod_id: String,
    pub config_path: Option<PathBuf>,
}

/// The shim's state. Its lock is only ever held for short, synchronous
/// bookkeeping: never across a VM boot, an agent call or a teardown, so
/// one slow pod or container never blocks another's State/Kill/Wait.
#[derive(Default)]
pub struct State {
    pub pods: HashMap<String, Pod>,
    pub containers: HashMap<String, Container>,
    /// Containers being created (not in `containers` yet) -> their pod.
    creating: HashMap<String, String>,
    /// Pods being torn down outside the lock.
    destroying: HashSet<String>,
    /// Serialises the creates of one pod (its VM boot included).
    pod_locks: HashMap<String, Arc<Mutex<()>>>,
}

impl State {
    /// A teardown begun by [`State::take_if_unused`] has finished.
    fn destroyed(&mut self, pod_id: &str) {
        self.destroying.remove(pod_id);
    }

    /// Whether a pod still has a container, or one on its way.
    fn pod_in_use(&self, pod_id: &str) -> bool {
        self.pods.get(pod_id).is_some_and(|p| !p.is_empty())
            || self.creating.values().any(|p| p == pod_id)
    }

    /// Takes an unused pod out of the state for teardown (the caller
    /// destroys it outside the lock, then calls [`State::destroyed`]).
    fn take_if_unused(&mut self, pod_id: &str) -> Option<Pod> {
        if self.pod_in_use(pod_id) {
            return None;
        }
        let pod = self.pods.remove(pod_id)?;
        self.destroying.insert(pod_id.to_string());
        Some(pod)
    }
}

pub struct Shared {
    pub state: Mutex<State>,
    pub events: Arc<dyn EventSink>,
    factory: BackendFactory,
    exit: Arc<ExitSignal>,
}

#[derive(Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
}

/// The pod a container joins: its sandbox's for a CRI container, its own
/// otherwise.
pub fn pod_id_for(id: &str, spec: &Spec) -> String {
    let ann = spec.annotations().clone().unwrap_or_default();
    match (
        ann.get(ANNOTATION_CONTAINER_TYPE).map(String::as_str),
        ann.get(ANNOTATION_SANDBOX_ID),
    ) {
        (Some("container"), Some(sid)) if !sid.is_empty() => sid.clone(),
        _ => id.to_string(),
    }
}

/// `ConfigPath` of CRI's `runtimeoptions.v1.Options` (field 2), the way
/// containerd passes a runtime's `options.ConfigPath`.
pub fn runtime_config_path(any: &Any) -> Option<PathBuf> {
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let msg = Empty::parse_from_bytes(&any.value).ok()?;
    let v = msg.special_fields.unknown_fields().get(2)?;
    match v {
        containerd_shim_protos::protobuf::UnknownValueRef::LengthDelimited(b) => {
            let s = std::str::from_utf8(b).ok()?;
            (!s.is_empty()).then(|| PathBuf::from(s))
        }
        _ => None,
    }
}

/// Whether `id` is a valid container or sandbox id (it names files).
pub fn valid_id(id: &str) -> bool {
    cocoon_agent_protocol::stream_header::validate_id("id", id).is_ok()
}

fn check_id(field: &'static str, id: &str) -> Res<()> {
    cocoon_agent_protocol::stream_header::validate_id(field, id)
        .map_err(|e| rpc::invalid(e.to_string()))
}

impl TaskService {
    pub fn new(events: Arc<dyn EventSink>, factory: BackendFactory, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                events,
                factory,
                exit,
            }),
        }
    }

    async fn publish<E: containerd_shim::event::Event + 'static>(&self, e: E) {
        publish(self.shared.events.as_ref(), e).await;
    }

    /// Destroys `pod` (taken out of the state) without holding the lock.
    async fn destroy_pod(&self, pod: Pod) {
        let id = pod.id.clone();
        pod.destroy().await;
        self.shared.state.lock().await.destroyed(&id);
    }

    /// After a failed agent call: when the agent did not answer in time,
    /// kills the pod's VM at once (its tasks then exit 255). Returns whether
    /// it did.
    async fn stop_if_unresponsive(&self, pod_id: &str, e: &AgentError) -> bool {
        if !e.is_timeout() {
            return false;
        }
        let st = self.shared.state.lock().await;
        if let Some(p) = st.pods.get(pod_id) {
            tracing::warn!(pod = pod_id, "{e}: stopping the pod's VM");
            p.backend.kill_now();
        }
        true
    }

    /// Creates the container in its pod (booting the pod first if it is
    /// new). Holds the pod's own create lock, never the state lock across
    /// a boot or an agent call.
    async fn create_in_pod(
        &self,
        req: &CreateTaskRequest,
        mut spec: Spec,
        pod_id: &str,
        pod_lock: Arc<Mutex<()>>,
    ) -> Res<(Container, u32)> {
        let id = req.id.as_str();
        let bundle = PathBuf::from(&req.bundle);
        let _pod_guard = pod_lock.lock().await;
        // A pod of the same id that is still being torn down finishes first.
        let waited = std::time::Instant::now();
        let exists = loop {
            let st = self.shared.state.lock().await;
            if !st.destroying.contains(pod_id) {
                break st.pods.contains_key(pod_id);
            }
            drop(st);
            if waited.elapsed() > POD_TEARDOWN_WAIT {
                return Err(rpc::status(
                    ttrpc::Code::UNAVAILABLE,
                    format!("pod {pod_id} is still being torn down"),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let config_path = req.options.as_ref().and_then(runtime_config_path);
        // Recorded before anything is created, so that `delete` after a
        // shim killed at any point below finds the pod and its config.
        let record = BundleRecord {
            pod_id: pod_id.to_string(),
            config_path: config_path.clone(),
        };
        std::fs::write(
            bundle.join(BUNDLE_POD_FILE),
            serde_json::to_vec(&record).unwrap_or_default(),
        )
        .map_err(|e| rpc::internal(&e))?;
        if !exists {
            let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
            let cgroups_path = cgroups_path.map(|p| p.display().to_string());
            let netns = match PodNetwork::of(&spec) {
                PodNetwork::Host => return Err(rpc::invalid(HOST_NETWORK_UNSUPPORTED)),
                PodNetwork::Netns(p) => Some(p),
                PodNetwork::Isolated => None,
            };
            let params = PodParams {
                sandbox_id: pod_id,
                config_path: config_path.as_deref(),
                cgroups_path: cgroups_path.as_deref(),
                netns: netns.as_deref(),
            };
            let backend = (self.shared.factory)(&params).map_err(rpc::invalid)?;
            let pod = Pod::start(pod_id, backend, self.shared.events.clone())
                .await
                .map_err(|e| rpc::status(ttrpc::Code::UNAVAILABLE, rpc::chain(&e)))?;
            self.shared
                .state
                .lock()
                .await
                .pods
                .insert(pod_id.to_string(), pod);
        }
        let (agent, guest_share, dir, pid, flags) = {
            let st = self.shared.state.lock().await;
            let pod = st
                .pods
                .get(pod_id)
                .ok_or_else(|| rpc::precondition(format!("the pod {pod_id} is gone")))?;
            (
                pod.agent.clone(),
                pod.guest_share.clone(),
                pod.dir().clone(),
                pod.backend.pid(),
                pod.share_flags,
            )
        };
        let mounted =
            storage::mount_bundle_rootfs(&bundle, &req.rootfs).map_err(|e| rpc::internal(&e))?;
        let cleanup = || {
            storage::unshare_container(&dir, id);
            if mounted {
                storage::unmount_bundle_rootfs(&bundle);
            }
        };
        if let Err(e) = storage::share_container(&mut spec, &bundle, &dir, &guest_share, id, flags)
        {
            cleanup();
            return Err(rpc::internal(&e));
        }
        if let Some(p) = spec.process_mut() {
            p.set_terminal(Some(req.terminal));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let json = serde_json::to_vec(&spec).map_err(|e| rpc::internal(&e))?;
        if let Err(e) = agent
            .create_container(id, json, stdio.flags(), req.terminal)
            .await
        {
            self.stop_if_unresponsive(pod_id, &e).await;
            cleanup();
            return Err(from_agent(e));
        }
        let io = match stdio::attach(&agent, id, "", &stdio).await {
            Ok(io) => io,
            Err(e) => {
                let _ = agent.remove(id).await;
                cleanup();
                return Err(rpc::internal(&e));
            }
        };
        let mut init = Process::new("", stdio, Vec::new());
        init.io = Some(io);
        Ok((
            Container {
                id: id.to_string(),
                pod_id: pod_id.to_string(),
                bundle,
                mounted_rootfs: mounted,
                init,
                execs: HashMap::new(),
            },
            pid,
        ))
    }

    fn pod_of<'a>(st: &'a State, id: &str) -> Res<(&'a Container, &'a Pod)> {
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| rpc::not_found(format!("container {id}")))?;
        let p = st
            .pods
            .get(&c.pod_id)
            .ok_or_else(|| rpc::precondition(format!("the pod of {id} is gone")))?;
        Ok((c, p))
    }

    fn process_of<'a>(st: &'a State, id: &str, exec_id: &str) -> Res<&'a Process> {
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| rpc::not_found(format!("container {id}")))?;
        c.process(exec_id)
            .ok_or_else(|| rpc::not_found(format!("process {exec_id} in {id}")))
    }
}

fn process_state(p: &Process, c: &Container, pid: u32) -> StateResponse {
    let exit = p.exit();
    StateResponse {
        id: if p.exec_id.is_empty() {
            c.id.clone()
        } else {
            p.exec_id.clone()
        },
        bundle: c.bundle.display().to_string(),
        pid,
        status: p.status.into(),
        stdin: p.stdio.stdin.clone(),
        stdout: p.stdio.stdout.clone(),
        stderr: p.stdio.stderr.clone(),
        terminal: p.stdio.terminal,
        exit_status: exit.map(|e| e.status).unwrap_or(0),
        exited_at: exit.map(|e| e.timestamp()).into(),
        exec_id: p.exec_id.clone(),
        ..Default::default()
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> Res<StateResponse> {
        let st = self.shared.state.lock().await;
        let (c, pod) = Self::pod_of(&st, &req.id)?;
        let p = Self::process_of(&st, &req.id, &req.exec_id)?;
        Ok(process_state(p, c, pod.backend.pid()))
    }

    async fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> Res<CreateTaskResponse> {
        check_id("container id", &req.id)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(rpc::unimplemented("restoring from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| rpc::invalid(format!("reading {}/config.json: {e}", bundle.display())))?;
        let pod_id = pod_id_for(&req.id, &spec);
        check_id("sandbox id", &pod_id)?;
        let pod_lock = {
            let mut st = self.shared.state.lock().await;
            if st.containers.contains_key(&req.id) || st.creating.contains_key(&req.id) {
                return Err(rpc::status(
                    ttrpc::Code::ALREADY_EXISTS,
                    format!("container {}: already exists", req.id),
                ));
            }
            st.creating.insert(req.id.clone(), pod_id.clone());
            st.pod_locks.entry(pod_id.clone()).or_default().clone()
        };
        let created = self.create_in_pod(&req, spec, &pod_id, pod_lock).await;
        let mut st = self.shared.state.lock().await;
        st.creating.remove(&req.id);
        let pid = match created {
            Ok((c, pid)) => {
                if let Some(p) = st.pods.get(&pod_id) {
                    p.add_container(&req.id);
                    p.backend.container_created();
                }
                st.containers.insert(req.id.clone(), c);
                pid
            }
            Err(e) => {
                let _ = std::fs::remove_file(Path::new(&req.bundle).join(BUNDLE_POD_FILE));
                let unused = st.take_if_unused(&pod_id);
                drop(st);
                if let Some(pod) = unused {
                    self.destroy_pod(pod).await;
                }
                return Err(e);
            }
        };
        drop(st);
        tracing::info!(id = %req.id, pid, "task created");
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid,
            ..Default::default()
        })
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> Res<StartResponse> {
        let (agent, pid, dead, pod_id, spec_json, stdio) = {
            let st = self.shared.state.lock().await;
            let (c, pod) = Self::pod_of(&st, &req.id)?;
            let p = c
                .process(&req.exec_id)
                .ok_or_else(|| rpc::not_found(format!("process {} in {}", req.exec_id, req.id)))?;
            if p.status != Status::CREATED {
                return Err(rpc::precondition(format!(
                    "process {:?} of {} is {:?}, not created",
                    req.exec_id, req.id, p.status
                )));
            }
            (
                pod.agent.clone(),
                pod.backend.pid(),
                pod.backend.dead(),
                c.pod_id.clone(),
                p.spec_json.clone(),
                p.stdio.clone(),
            )
        };
        let called = if req.exec_id.is_empty() {
            agent.start_container(&req.id).await
        } else {
            agent
                .exec_process(&req.id, &req.exec_id, spec_json, stdio.flags())
                .await
        };
        if let Err(e) = called {
            self.stop_if_unresponsive(&pod_id, &e).await;
            return Err(from_agent(e));
        }
        let io = if req.exec_id.is_empty() {
            None
        } else {
            Some(
                stdio::attach(&agent, &req.id, &req.exec_id, &stdio)
                    .await
                    .map_err(|e| rpc::internal(&e))?,
            )
        };
        {
            let mut st = self.shared.state.lock().await;
            if let Some(p) = st
                .containers
                .get_mut(&req.id)
                .and_then(|c| c.process_mut(&req.exec_id))
            {
                if io.is_some() {
                    p.io = io;
                }
                p.status = Status::RUNNING;
            }
        }
        spawn_exit_watcher(
            self.shared.clone(),
            agent,
            req.id.clone(),
            req.exec_id.clone(),
            pid,
            dead,
        );
        if req.exec_id.is_empty() {
            self.publish(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            })
            .await;
        } else {
            self.publish(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            })
            .await;
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> Res<DeleteResponse> {
        let mut st = self.shared.state.lock().await;
        let (c, pod) = Self::pod_of(&st, &req.id)?;
        let pid = pod.backend.pid();
        let agent = pod.agent.clone();
        let dir = pod.dir().clone();
        let p = c
            .process(&req.exec_id)
            .ok_or_else(|| rpc::not_found(format!("process {} in {}", req.exec_id, req.id)))?;
        if matches!(p.status, Status::RUNNING | Status::PAUSED) {
            return Err(rpc::precondition(format!(
                "process {:?} of {} is still running",
                req.exec_id, req.id
            )));
        }
        let exit = p.exit();
        let resp = DeleteResponse {
            pid,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.timestamp()).into(),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            if let Some(c) = st.containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
            return Ok(resp);
        }
        let c = st.containers.remove(&req.id).expect("checked above");
        if let Some(pod) = st.pods.get(&c.pod_id) {
            pod.remove_container(&c.id);
        }
        let dead = st
            .pods
            .get(&c.pod_id)
            .is_some_and(|p| *p.backend.dead().borrow());
        drop(st);
        // Outside the lock, with the agent's deadline: an agent that does
        // not answer gets its VM stopped, and the delete goes on.
        if !dead {
            if let Err(e) = agent.remove(&req.id).await {
                tracing::warn!(id = %req.id, error = %rpc::chain(&e), "RemoveContainer failed");
                self.stop_if_unresponsive(&c.pod_id, &e).await;
            }
        }
        storage::unshare_container(&dir, &c.id);
        if c.mounted_rootfs {
            storage::unmount_bundle_rootfs(&c.bundle);
        }
        let _ = std::fs::remove_file(c.bundle.join(BUNDLE_POD_FILE));
        let unused = self.shared.state.lock().await.take_if_unused(&c.pod_id);
        if let Some(pod) = unused {
            self.destroy_pod(pod).await;
        }
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status: resp.exit_status,
            exited_at: resp.exited_at.clone(),
            id: req.id.clone(),
            ..Default::default()
        })
        .await;
        Ok(resp)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> Res<PidsResponse> {
        let agent = {
            let st = self.shared.state.lock().await;
            Self::pod_of(&st, &req.id)?.1.agent.clone()
        };
        let procs = agent.list_processes(&req.id).await.map_err(from_agent)?;
        Ok(PidsResponse {
            processes: reply::pids(procs),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> Res<Empty> {
        let agent = {
            let st = self.shared.state.lock().await;
            Self::pod_of(&st, &req.id)?.1.agent.clone()
        };
        agent.pause(&req.id).await.map_err(from_agent)?;
        if let Some(c) = self.shared.state.lock().await.containers.get_mut(&req.id) {
            c.init.status = Status::PAUSED;
        }
        self.publish(TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        })
        .await;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> Res<Empty> {
        let agent = {
            let st = self.shared.state.lock().await;
            Self::pod_of(&st, &req.id)?.1.agent.clone()
        };
        agent.resume(&req.id).await.map_err(from_agent)?;
        if let Some(c) = self.shared.state.lock().await.containers.get_mut(&req.id) {
            if c.init.status == Status::PAUSED {
                c.init.status = Status::RUNNING;
            }
        }
        self.publish(TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        })
        .await;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> Res<Empty> {
        Err(rpc::unimplemented(
            "Checkpoint (a micro-VM task cannot be checkpointed)",
        ))
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> Res<Empty> {
        let (agent, pod_id) = {
            let st = self.shared.state.lock().await;
            let (c, pod) = Self::pod_of(&st, &req.id)?;
            let p = Self::process_of(&st, &req.id, &req.exec_id)?;
            if p.exit().is_some() {
                return Err(rpc::not_found("process already finished"));
            }
            (pod.agent.clone(), c.pod_id.clone())
        };
        match agent
            .signal(&req.id, &req.exec_id, req.signal, req.all)
            .await
        {
            Ok(()) => Ok(Empty::new()),
            // The agent stopped answering: the pod's VM is stopped, which
            // ends every process in it (their exits are published as 255).
            Err(e) if self.stop_if_unresponsive(&pod_id, &e).await => {
                if req.signal == libc::SIGKILL as u32 {
                    Ok(Empty::new())
                } else {
                    Err(rpc::status(
                        ttrpc::Code::DEADLINE_EXCEEDED,
                        format!("{}; the pod's VM was stopped", rpc::chain(&e)),
                    ))
                }
            }
            Err(e) => Err(from_agent(e)),
        }
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> Res<Empty> {
        check_id("exec id", &req.exec_id)?;
        let mut st = self.shared.state.lock().await;
        let c = st
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| rpc::not_found(format!("container {}", req.id)))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(rpc::status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {} in {}: already exists", req.exec_id, req.id),
            ));
        }
        if c.init.exit().is_some() {
            return Err(rpc::precondition(format!(
                "container {} has exited",
                req.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        // The process JSON must parse; its terminal flag follows the request.
        let mut process: oci_spec::runtime::Process =
            serde_json::from_slice(&spec).map_err(|e| rpc::invalid(format!("exec spec: {e}")))?;
        process.set_terminal(Some(req.terminal));
        let json = serde_json::to_vec(&process).map_err(|e| rpc::internal(&e))?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        c.execs
            .insert(req.exec_id.clone(), Process::new(&req.exec_id, stdio, json));
        drop(st);
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
        .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> Res<Empty> {
        let agent = {
            let st = self.shared.state.lock().await;
            Self::process_of(&st, &req.id, &req.exec_id)?;
            Self::pod_of(&st, &req.id)?.1.agent.clone()
        };
        agent
            .resize_tty(&req.id, &req.exec_id, req.height, req.width)
            .await
            .map_err(from_agent)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> Res<Empty> {
        let mut st = self.shared.state.lock().await;
        let p = st
            .containers
            .get_mut(&req.id)
            .and_then(|c| c.process_mut(&req.exec_id))
            .ok_or_else(|| rpc::not_found(format!("process {} in {}", req.exec_id, req.id)))?;
        if req.stdin {
            if let Some(io) = p.io.as_mut() {
                io.close_stdin();
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> Res<Empty> {
        let agent = {
            let st = self.shared.state.lock().await;
            Self::pod_of(&st, &req.id)?.1.agent.clone()
        };
        let json = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if json.is_empty() {
            return Err(rpc::invalid("update: no resources"));
        }
        agent.update(&req.id, json).await.map_err(from_agent)?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> Res<WaitResponse> {
        let mut rx = {
            let st = self.shared.state.lock().await;
            Self::process_of(&st, &req.id, &req.exec_id)?
                .exit_tx
                .subscribe()
        };
        let info = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| {
                rpc::not_found(format!("process {} in {} was deleted", req.exec_id, req.id))
            })?
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: info.status,
            exited_at: Some(info.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> Res<StatsResponse> {
        let agent = {
            let st = self.shared.state.lock().await;
            Self::pod_of(&st, &req.id)?.1.agent.clone()
        };
        let s = agent.stats(&req.id).await.map_err(from_agent)?;
        let value = reply::metrics(&s)
            .write_to_bytes()
            .map_err(|e| rpc::internal(&e))?;
        Ok(StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.containerd.cgroups.v2.Metrics".into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> Res<ConnectResponse> {
        let st = self.shared.state.lock().await;
        let task_pid = Self::pod_of(&st, &req.id)
            .map(|(_, p)| p.backend.pid())
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> Res<Empty> {
        let pods: Vec<Pod> = {
            let mut st = self.shared.state.lock().await;
            if !st.containers.is_empty() || !st.creating.is_empty() {
                return Ok(Empty::new());
            }
            let ids: Vec<String> = st.pods.keys().cloned().collect();
            ids.iter().filter_map(|id| st.take_if_unused(id)).collect()
        };
        for p in pods {
            self.destroy_pod(p).await;
        }
        tracing::info!("shutdown: no containers left, exiting");
        self.shared.exit.signal();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_from_runtime_options() {
        // runtimeoptions.v1.Options{type_url: "x", config_path: "/etc/c.toml"}
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/c.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            runtime_config_path(&any),
            Some(PathBuf::from("/etc/c.toml"))
        );
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        assert_eq!(runtime_config_path(&other), None);
    }

    #[test]
    fn cri_annotations_choose_the_pod() {
        let mut spec = Spec::default();
        assert_eq!(pod_id_for("c1", &spec), "c1");
        let mut a = HashMap::new();
        a.insert(
            ANNOTATION_CONTAINER_TYPE.to_string(),
            "container".to_string(),
        );
        a.insert(ANNOTATION_SANDBOX_ID.to_string(), "sbx".to_string());
        spec.set_annotations(Some(a.clone()));
        assert_eq!(pod_id_for("c1", &spec), "sbx");
        a.insert(ANNOTATION_CONTAINER_TYPE.to_string(), "sandbox".to_string());
        spec.set_annotations(Some(a));
        assert_eq!(pod_id_for("sbx", &spec), "sbx");
    }
}
