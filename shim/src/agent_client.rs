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
    #[error("agent {rpc}: no answer within {secs} s")]
    Timeout { rpc: &'static str, secs: u64 },
    #[error("reading host entropy for the guest's RNG")]
    Entropy(#[source] std::io::Error),
}

impl AgentError {
    /// The agent did not answer in time (as opposed to answering an error).
    pub fn is_timeout(&self) -> bool {
        matches!(self, AgentError::Timeout { .. })
    }
}

/// No deadline: Wait and GetOOMEvent block for as long as they need (they
/// end when the VM does).
fn long_poll() -> ttrpc::context::Context {
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
    /// Deadline of every call but the long polls.
    timeout: std::time::Duration,
}

/// A call with the agent's deadline, enforced here whatever the transport
/// does (a guest that never answers cannot hold a caller).
macro_rules! call {
    ($self:ident, $name:literal, $method:ident, $req:expr) => {{
        let t = $self.timeout;
        // ttrpc's own deadline comes later, so that this timer decides.
        let ctx =
            ttrpc::context::with_timeout((t + std::time::Duration::from_secs(2)).as_nanos() as i64);
        match tokio::time::timeout(t, $self.client.$method(ctx, &$req)).await {
            Ok(r) => r.map_err(|source| AgentError::Rpc { rpc: $name, source }),
            Err(_) => Err(AgentError::Timeout {
                rpc: $name,
                secs: t.as_secs(),
            }),
        }
    }};
}

macro_rules! poll {
    ($self:ident, $name:literal, $method:ident, $req:expr) => {
        $self
            .client
            .$method(long_poll(), &$req)
            .await
            .map_err(|source| AgentError::Rpc { rpc: $name, source })
    };
}

/// An interface in the agent protocol's text form.
pub fn wire_interface(c: &cocoon_netconf::InterfaceConfig) -> Interface {
    let mut i = Interface::new();
    i.mac = c.mac.to_string();
    i.device_mac = c.device_mac.map(|m| m.to_string()).unwrap_or_default();
    i.mtu = c.mtu;
    i.addresses = c.addresses.iter().map(|a| a.to_string()).collect();
    i.routes = c
        .routes
        .iter()
        .map(|r| {
            let mut w = Route::new();
            w.destination = r.destination.to_string();
            w.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
            w.onlink = r.onlink;
            w.metric = r.metric;
            w
        })
        .collect();
    i
}

impl Agent {
    pub async fn connect(
        control: &Address,
        streams: &Address,
        timeout: std::time::Duration,
    ) -> Result<Agent, AgentError> {
        Ok(Agent {
            client: connect_agent(control).await?,
            streams: streams.clone(),
            timeout,
        })
    }

    pub async fn create_sandbox(
        &self,
        sandbox_id: &str,
        share_tag: &str,
        interfaces: &[cocoon_netconf::InterfaceConfig],
    ) -> Result<String, AgentError> {
        let mut r = CreateSandboxRequest::new();
        r.sandbox_id = sandbox_id.into();
        r.share_tag = share_tag.into();
        r.interfaces = interfaces.iter().map(wire_interface).collect();
        // Fresh for every sandbox: the agent reseeds the guest's RNG with
        // it, so clones of one VM snapshot do not share their RNG state.
        r.entropy = crate::host_entropy::host_entropy(crate::host_entropy::SANDBOX_ENTROPY_BYTES)
            .map_err(AgentError::Entropy)?;
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
        let t = self.timeout.min(std::time::Duration::from_secs(10));
        let c = ttrpc::context::with_timeout(t.as_nanos() as i64);
        match tokio::time::timeout(t, self.client.destroy_sandbox(c, &r)).await {
            Ok(Ok(_))
            | Ok(Err(ttrpc::Error::RemoteClosed))
            | Ok(Err(ttrpc::Error::LocalClosed)) => Ok(()),
            Ok(Err(source)) => Err(AgentError::Rpc {
                rpc: "DestroySandbox",
                source,
            }),
            Err(_) => Err(AgentError::Timeout {
                rpc: "DestroySandbox",
                secs: t.as_secs(),
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
        poll!(self, "WaitProcess", wait_process, r)
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
        Ok(poll!(self, "GetOOMEvent", get_oom_event, r)?.container_id)
    }

    pub async fn open_stream(
        &self,
        kind: StreamKind,
        id: &str,
        exec_id: &str,
    ) -> Result<BoxConn, AgentError> {
        let header = StreamHeader::new(kind, id, exec_id);
        match tokio::time::timeout(self.timeout, open_stream(&self.streams, &header)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(AgentError::Timeout {
                rpc: "stream open",
                secs: self.timeout.as_secs(),
            }),
        }
    }
}
