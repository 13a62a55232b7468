//! A typed wrapper over the generated agent ttrpc client.

use cocoon_agent_protocol::address::{connect_agent, open_stream, Address, AddressError, BoxConn};
use cocoon_agent_protocol::agent::*;
use cocoon_agent_protocol::agent_ttrpc::AgentClient;
use cocoon_agent_protocol::stream_header::{StreamHeader, StreamKind};
use protobuf::MessageField;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the agent")]
    Connect(#[from] AddressError),
    #[error("agent {rpc}")]
    Rpc {
        rpc: &'static str,
        #[source]
        source: ttrpc::Error,
    },
}

/// No deadline: Wait and GetOOMEvent block for as long as they need.
fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// Which stdio streams a process will have attached.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioFlags {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl From<StdioFlags> for Stdio {
    fn from(f: StdioFlags) -> Stdio {
        let mut s = Stdio::new();
        s.stdin = f.stdin;
        s.stdout = f.stdout;
        s.stderr = f.stderr;
        s
    }
}

/// The agent of one pod: control client plus the stream address.
#[derive(Clone)]
pub struct Agent {
    client: AgentClient,
    streams: Address,
}

macro_rules! call {
    ($self:ident, $name:literal, $method:ident, $req:expr) => {
        $self
            .client
            .$method(ctx(), &$req)
            .await
            .map_err(|source| AgentError::Rpc { rpc: $name, source })
    };
}

impl Agent {
    pub async fn connect(control: &Address, streams: &Address) -> Result<Agent, AgentError> {
        Ok(Agent {
            client: connect_agent(control).await?,
            streams: streams.clone(),
        })
    }

    pub async fn create_sandbox(
        &self,
        sandbox_id: &str,
        share_tag: &str,
    ) -> Result<String, AgentError> {
        let mut r = CreateSandboxRequest::new();
        r.sandbox_id = sandbox_id.into();
        r.share_tag = share_tag.into();
        r.guest_time_unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Ok(call!(self, "CreateSandbox", create_sandbox, r)?.share_mount_point)
    }

    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        // The guest agent reboots the VM in answer; a closed connection
        // is a success here.
        let r = DestroySandboxRequest::new();
        let c = ttrpc::context::with_timeout(10_000_000_000);
        match self.client.destroy_sandbox(c, &r).await {
            Ok(_) | Err(ttrpc::Error::RemoteClosed) | Err(ttrpc::Error::LocalClosed) => Ok(()),
            Err(source) => Err(AgentError::Rpc {
                rpc: "DestroySandbox",
                source,
            }),
        }
    }

    pub async fn create_container(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        stdio: StdioFlags,
        terminal: bool,
    ) -> Result<u32, AgentError> {
        let mut r = CreateContainerRequest::new();
        r.container_id = id.into();
        r.oci_spec_json = spec_json;
        r.stdio = MessageField::some(stdio.into());
        r.terminal = terminal;
        Ok(call!(self, "CreateContainer", create_container, r)?.pid)
    }

    pub async fn start_container(&self, id: &str) -> Result<u32, AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        Ok(call!(self, "StartContainer", start_container, r)?.pid)
    }

    pub async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: StdioFlags,
    ) -> Result<u32, AgentError> {
        let mut r = ExecProcessRequest::new();
        r.container_id = id.into();
        r.exec_id = exec_id.into();
        r.oci_process_json = process_json;
        r.stdio = MessageField::some(stdio.into());
        Ok(call!(self, "ExecProcess", exec_process, r)?.pid)
    }

    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let mut r = SignalProcessRequest::new();
        r.container_id = id.into();
        r.exec_id = exec_id.into();
        r.signal = signal;
        r.all = all;
        call!(self, "SignalProcess", signal_process, r).map(|_| ())
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse, AgentError> {
        let mut r = ProcessRequest::new();
        r.container_id = id.into();
        r.exec_id = exec_id.into();
        call!(self, "WaitProcess", wait_process, r)
    }

    pub async fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        Ok(call!(self, "ListProcesses", list_processes, r)?.processes)
    }

    pub async fn resize_tty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError> {
        let mut r = ResizeTtyRequest::new();
        r.container_id = id.into();
        r.exec_id = exec_id.into();
        r.rows = rows;
        r.columns = cols;
        call!(self, "ResizeTty", resize_tty, r).map(|_| ())
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        let mut r = ProcessRequest::new();
        r.container_id = id.into();
        r.exec_id = exec_id.into();
        call!(self, "CloseStdin", close_stdin, r).map(|_| ())
    }

    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), AgentError> {
        let mut r = UpdateContainerRequest::new();
        r.container_id = id.into();
        r.linux_resources_json = resources_json;
        call!(self, "UpdateContainer", update_container, r).map(|_| ())
    }

    pub async fn stats(&self, id: &str) -> Result<StatsContainerResponse, AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, "StatsContainer", stats_container, r)
    }

    pub async fn pause(&self, id: &str) -> Result<(), AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, "PauseContainer", pause_container, r).map(|_| ())
    }

    pub async fn resume(&self, id: &str) -> Result<(), AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, "ResumeContainer", resume_container, r).map(|_| ())
    }

    pub async fn remove(&self, id: &str) -> Result<(), AgentError> {
        let mut r = RemoveContainerRequest::new();
        r.container_id = id.into();
        call!(self, "RemoveContainer", remove_container, r).map(|_| ())
    }

    /// Blocks until some container of the pod is OOM-killed.
    pub async fn next_oom(&self) -> Result<String, AgentError> {
        let r = GetOOMEventRequest::new();
        Ok(call!(self, "GetOOMEvent", get_oom_event, r)?.container_id)
    }

    pub async fn open_stream(
        &self,
        kind: StreamKind,
        id: &str,
        exec_id: &str,
    ) -> Result<BoxConn, AgentError> {
        Ok(open_stream(&self.streams, &StreamHeader::new(kind, id, exec_id)).await?)
    }
}
