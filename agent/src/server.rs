//! The ttrpc `Agent` service: request decoding and error mapping; the work
//! is done in the `container_*`, `sandbox` and `oom` modules.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use cocoon_agent_protocol::agent::*;
use cocoon_agent_protocol::agent_ttrpc;
use ttrpc::r#async::TtrpcContext;

use crate::container::AgentState;
use crate::error_code::{to_rpc_error, RpcCode};
use crate::stdio::StdioRequest;
use crate::{
    cgroup_stats, container_create, container_remove, container_resources, container_signal,
    container_start, sandbox,
};

type Res<T> = ttrpc::Result<T>;

pub struct AgentService {
    pub state: Arc<AgentState>,
}

fn map<T, E: RpcCode>(r: Result<T, E>) -> Res<T> {
    r.map_err(to_rpc_error)
}

fn stdio(s: &protobuf::MessageField<Stdio>, terminal: bool) -> StdioRequest {
    let s = s.as_ref();
    StdioRequest {
        stdin: s.is_some_and(|s| s.stdin),
        stdout: s.is_some_and(|s| s.stdout),
        stderr: s.is_some_and(|s| s.stderr),
        terminal,
    }
}

fn process_response(pid: i32) -> ProcessResponse {
    let mut r = ProcessResponse::new();
    r.pid = pid as u32;
    r
}

#[derive(Debug, thiserror::Error)]
enum OomRpcError {
    #[error("oom events")]
    Oom(#[from] crate::oom::OomError),
}

impl RpcCode for OomRpcError {
    fn rpc_code(&self) -> ttrpc::Code {
        ttrpc::Code::UNAVAILABLE
    }
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> Res<CheckResponse> {
        let mut r = CheckResponse::new();
        r.serving = true;
        Ok(r)
    }

    async fn version(&self, _: &TtrpcContext, _: VersionRequest) -> Res<VersionResponse> {
        let mut r = VersionResponse::new();
        r.agent_version = env!("CARGO_PKG_VERSION").to_string();
        r.protocol_version = cocoon_agent_protocol::PROTOCOL_VERSION;
        Ok(r)
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> Res<CreateSandboxResponse> {
        let setup = sandbox::SandboxSetup {
            entropy: &req.entropy,
            hostname: &req.hostname,
            dns_servers: &req.dns_servers,
            dns_search: &req.dns_search,
            dns_options: &req.dns_options,
            hosts: req
                .hosts
                .iter()
                .map(|h| (h.ip.clone(), h.names.clone()))
                .collect(),
            time_unix_nanos: req.guest_time_unix_nanos,
            share_tag: &req.share_tag,
            interfaces: &req.interfaces,
        };
        let mount_point = map(sandbox::create_sandbox(&self.state, &setup))?;
        let mut r = CreateSandboxResponse::new();
        r.share_mount_point = mount_point;
        Ok(r)
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> Res<Empty> {
        map(sandbox::destroy_sandbox(&self.state).await)?;
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Res<ProcessResponse> {
        let c = map(container_create::create_container(
            &self.state,
            &req.container_id,
            &req.oci_spec_json,
            stdio(&req.stdio, req.terminal),
        )
        .await)?;
        Ok(process_response(c.init.pid))
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> Res<ProcessResponse> {
        let pid = map(container_start::start_container(&self.state, &req.container_id).await)?;
        Ok(process_response(pid))
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Res<ProcessResponse> {
        let pid = map(container_start::exec_process(
            &self.state,
            &req.container_id,
            &req.exec_id,
            &req.oci_process_json,
            stdio(&req.stdio, false),
        )
        .await)?;
        Ok(process_response(pid))
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> Res<Empty> {
        map(container_signal::signal_process(
            &self.state,
            &req.container_id,
            &req.exec_id,
            req.signal,
            req.all,
        )
        .await)?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: ProcessRequest,
    ) -> Res<WaitProcessResponse> {
        let (pid, info) =
            map(
                container_signal::wait_process(&self.state, &req.container_id, &req.exec_id).await,
            )?;
        let mut r = WaitProcessResponse::new();
        r.exit_status = info.status;
        r.exited_at_unix_nanos = info
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        r.pid = pid as u32;
        Ok(r)
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> Res<ListProcessesResponse> {
        let procs = map(container_signal::list_processes(&self.state, &req.container_id).await)?;
        let mut r = ListProcessesResponse::new();
        r.processes = procs
            .into_iter()
            .map(|(pid, exec_id)| {
                let mut p = ProcessInfo::new();
                p.pid = pid as u32;
                p.exec_id = exec_id;
                p
            })
            .collect();
        Ok(r)
    }

    async fn resize_tty(&self, _: &TtrpcContext, req: ResizeTtyRequest) -> Res<Empty> {
        let p = map(self.state.process(&req.container_id, &req.exec_id))?;
        let rows = req.rows.min(u16::MAX as u32) as u16;
        let cols = req.columns.min(u16::MAX as u32) as u16;
        map(p
            .slots
            .resize(rows, cols)
            .map_err(crate::container::ContainerError::from))?;
        Ok(Empty::new())
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: ProcessRequest) -> Res<Empty> {
        let p = map(self.state.process(&req.container_id, &req.exec_id))?;
        map(p
            .slots
            .close_stdin()
            .map_err(crate::container::ContainerError::from))?;
        Ok(Empty::new())
    }

    async fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> Res<Empty> {
        map(container_resources::update_container(
            &self.state,
            &req.container_id,
            &req.linux_resources_json,
        )
        .await)?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> Res<StatsContainerResponse> {
        map(cgroup_stats::stats_container(&self.state, &req.container_id).await)
    }

    async fn pause_container(&self, _: &TtrpcContext, req: ContainerRequest) -> Res<Empty> {
        map(container_resources::pause_container(&self.state, &req.container_id).await)?;
        Ok(Empty::new())
    }

    async fn resume_container(&self, _: &TtrpcContext, req: ContainerRequest) -> Res<Empty> {
        map(container_resources::resume_container(&self.state, &req.container_id).await)?;
        Ok(Empty::new())
    }

    async fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> Res<Empty> {
        let timeout = match req.timeout_secs {
            0 => container_remove::DEFAULT_REMOVE_TIMEOUT,
            s => Duration::from_secs(s.into()),
        };
        map(container_remove::remove_container(&self.state, &req.container_id, timeout).await)?;
        Ok(Empty::new())
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> Res<OOMEvent> {
        let id = map(self.state.oom.next().await.map_err(OomRpcError::from))?;
        let mut r = OOMEvent::new();
        r.container_id = id;
        Ok(r)
    }
}
