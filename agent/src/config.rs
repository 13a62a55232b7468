//! Agent configuration: command-line flags with environment fallbacks.

use std::path::PathBuf;

use clap::Parser;
use cocoon_agent_protocol::address::Address;

/// cocoon-agent: PID 1 of a cocoon guest; runs OCI containers for the shim.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct AgentConfig {
    /// Control (ttrpc) listen address: vsock://PORT or unix:///PATH.
    #[arg(long, env = "COCOON_AGENT_LISTEN", default_value = "vsock://1024")]
    pub listen: Address,

    /// Stdio stream listen address: vsock://PORT or unix:///PATH.
    #[arg(
        long,
        env = "COCOON_AGENT_STREAM_LISTEN",
        default_value = "vsock://1025"
    )]
    pub stream_listen: Address,

    /// Where bundles, container state and console sockets live.
    #[arg(
        long,
        env = "COCOON_AGENT_STATE_DIR",
        default_value = "/run/cocoon-agent"
    )]
    pub state_dir: PathBuf,

    /// Cgroup (relative to the cgroup mount) under which every container
    /// gets `<parent>/<container id>`; the spec's cgroupsPath is replaced.
    #[arg(long, env = "COCOON_AGENT_CGROUP_PARENT", default_value = "/cocoon")]
    pub cgroup_parent: PathBuf,

    /// Mount point of the virtio-fs pod share.
    #[arg(
        long,
        env = "COCOON_AGENT_SHARE_DIR",
        default_value = "/run/cocoon/shared"
    )]
    pub share_dir: PathBuf,

    /// Log filter (tracing-subscriber syntax).
    #[arg(
        long,
        env = "COCOON_AGENT_LOG",
        default_value = "info,libcgroups=error"
    )]
    pub log: String,
}

impl AgentConfig {
    pub fn bundles_dir(&self) -> PathBuf {
        self.state_dir.join("bundles")
    }

    /// libcontainer's state root.
    pub fn containers_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }

    pub fn tty_dir(&self) -> PathBuf {
        self.state_dir.join("tty")
    }
}
