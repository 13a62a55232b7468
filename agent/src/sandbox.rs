//! CreateSandbox and DestroySandbox.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use ttrpc::Code;

use crate::container::{lock, AgentState};
use crate::container_remove::remove_container;
use crate::error_code::RpcCode;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("mounting the share {tag:?} at {dir}")]
    Mount {
        tag: String,
        dir: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("setting {0}")]
    Sys(&'static str, #[source] nix::Error),
    #[error("removing containers: {0}")]
    Remove(String),
    #[error("the pod's network")]
    Network(#[from] crate::network::NetworkError),
    #[error("reseeding the guest RNG")]
    Entropy(#[from] crate::entropy::EntropyError),
}

impl RpcCode for SandboxError {
    fn rpc_code(&self) -> Code {
        match self {
            SandboxError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            SandboxError::Network(e) => e.rpc_code(),
            SandboxError::Entropy(e) => e.rpc_code(),
            _ => Code::INTERNAL,
        }
    }
}

pub struct SandboxSetup<'a> {
    /// Host entropy for the guest kernel's RNG; mixed in before anything
    /// else (clones of one VM snapshot share the RNG state they booted to).
    pub entropy: &'a [u8],
    pub hostname: &'a str,
    pub dns_servers: &'a [String],
    pub dns_search: &'a [String],
    pub dns_options: &'a [String],
    pub hosts: Vec<(String, Vec<String>)>,
    pub time_unix_nanos: i64,
    pub share_tag: &'a str,
    /// The pod's interfaces (from the host's view of the pod's network
    /// namespace); configured in the agent's network namespace, which the
    /// containers share.
    pub interfaces: &'a [cocoon_agent_protocol::agent::Interface],
}

/// resolv.conf text for the given servers, search domains and options.
pub fn resolv_conf(servers: &[String], search: &[String], options: &[String]) -> String {
    let mut s = String::new();
    for ns in servers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn check_line(field: &str, v: &str) -> Result<(), SandboxError> {
    if v.chars().any(|c| c.is_control() || c == ' ') || v.len() > 253 {
        return Err(SandboxError::InvalidArgument(format!(
            "{field}: {v:?} has spaces, control characters or is too long"
        )));
    }
    Ok(())
}

/// Applies the sandbox-wide settings. Host-wide changes (hostname, clock,
/// /etc) are made only when the agent is the guest's PID 1; the files are
/// always written under the state dir.
pub fn create_sandbox(state: &AgentState, s: &SandboxSetup<'_>) -> Result<String, SandboxError> {
    // First: nothing the sandbox sets up, and no container, may draw from
    // an RNG whose state other clones of this VM's snapshot share.
    crate::entropy::reseed(s.entropy)?;
    for v in s
        .dns_servers
        .iter()
        .chain(s.dns_search)
        .chain(s.dns_options)
    {
        check_line("dns", v)?;
    }
    for (ip, names) in &s.hosts {
        check_line("hosts.ip", ip)?;
        for n in names {
            check_line("hosts.names", n)?;
        }
    }
    if !s.hostname.is_empty() {
        check_line("hostname", s.hostname)?;
    }
    // Before any container can run: the pod's address is the guest's.
    crate::network::configure(s.interfaces)?;
    let dir = state.config.state_dir.join("sandbox");
    std::fs::create_dir_all(&dir).map_err(|e| SandboxError::Io("creating the sandbox dir", e))?;
    let resolv = resolv_conf(s.dns_servers, s.dns_search, s.dns_options);
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
    if !s.hostname.is_empty() {
        hosts.push_str(&format!("127.0.1.1 {}\n", s.hostname));
    }
    for (ip, names) in &s.hosts {
        hosts.push_str(&format!("{ip} {}\n", names.join(" ")));
    }
    let write =
        |p: &Path, t: &str| std::fs::write(p, t).map_err(|e| SandboxError::Io("writing", e));
    write(&dir.join("resolv.conf"), &resolv)?;
    write(&dir.join("hosts"), &hosts)?;
    if !s.hostname.is_empty() {
        write(&dir.join("hostname"), &format!("{}\n", s.hostname))?;
    }

    if state.is_init {
        let _ = std::fs::create_dir_all("/etc");
        write(Path::new("/etc/resolv.conf"), &resolv)?;
        write(Path::new("/etc/hosts"), &hosts)?;
        if !s.hostname.is_empty() {
            nix::unistd::sethostname(s.hostname).map_err(|e| SandboxError::Sys("hostname", e))?;
        }
        if s.time_unix_nanos > 0 {
            let ts = nix::sys::time::TimeSpec::new(
                s.time_unix_nanos / 1_000_000_000,
                s.time_unix_nanos % 1_000_000_000,
            );
            nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
                .map_err(|e| SandboxError::Sys("the clock", e))?;
        }
    }

    let share = state.config.share_dir.clone();
    if !s.share_tag.is_empty() {
        check_line("share_tag", s.share_tag)?;
        std::fs::create_dir_all(&share)
            .map_err(|e| SandboxError::Io("creating the share dir", e))?;
        mount(
            Some(s.share_tag),
            &share,
            Some("virtiofs"),
            // Not nosuid: the containers' rootfs are below it, and their
            // set-user-ID binaries must work as under runc (`su`, `ping`,
            // CRI's allowPrivilegeEscalation). It changes nothing on the
            // host: the guest is the boundary, the host's binds into the
            // share are nosuid, and virtiofsd executes nothing.
            MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|source| SandboxError::Mount {
            tag: s.share_tag.to_string(),
            dir: share.display().to_string(),
            source,
        })?;
        tracing::debug!(tag = s.share_tag, dir = %share.display(), "share mounted");
    }
    Ok(share.display().to_string())
}

/// Removes every container; as PID 1 also syncs and restarts the VM (the
/// guest kernel runs with `reboot=k`, so a restart is a clean VM exit).
pub async fn destroy_sandbox(state: &Arc<AgentState>) -> Result<(), SandboxError> {
    let result = stop_containers(state).await;
    // The shim collects OOM events with a pending GetOOMEvent; let it have
    // the ones the removals just reported before the agent goes away.
    if !state.oom.drain(Duration::from_secs(1)).await {
        tracing::warn!("OOM events left uncollected");
    }
    if state.is_init {
        nix::unistd::sync();
        // Reply first, then restart.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            crate::pid1::power_off();
        });
    }
    result
}

/// Removes every container, then the cgroup parent.
pub async fn stop_containers(state: &Arc<AgentState>) -> Result<(), SandboxError> {
    let ids: Vec<String> = lock(&state.containers).keys().cloned().collect();
    let mut failed = Vec::new();
    for id in ids {
        if let Err(e) =
            remove_container(state, &id, crate::container_remove::DEFAULT_REMOVE_TIMEOUT).await
        {
            failed.push(format!("{id}: {}", crate::error_code::chain(&e)));
        }
    }
    crate::cgroup_parent::remove(&state.config.cgroup_parent);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::Remove(failed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_text() {
        let s = resolv_conf(
            &["10.0.0.1".into(), "10.0.0.2".into()],
            &["a.example".into()],
            &["ndots:5".into()],
        );
        assert_eq!(
            s,
            "nameserver 10.0.0.1\nnameserver 10.0.0.2\nsearch a.example\noptions ndots:5\n"
        );
    }
}
