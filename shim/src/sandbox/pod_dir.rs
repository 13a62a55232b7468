//! The layout of `<run_dir>/<sandbox id>/`, which holds everything a pod
//! owns on the host, so that one `remove_dir_all` (after unmounting)
//! leaves nothing behind.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    pub fn new(run_dir: &Path, sandbox_id: &str) -> PodDir {
        PodDir {
            root: run_dir.join(sandbox_id),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Exported to the guest over virtio-fs (or given to a local agent).
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// `<shared>/<container id>`: the container's rootfs and bind mounts.
    pub fn container(&self, id: &str) -> PathBuf {
        self.shared().join(id)
    }

    /// Hybrid vsock Unix socket of the VMM.
    pub fn vsock(&self) -> PathBuf {
        self.root.join("vsock.sock")
    }

    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.root.join("virtiofsd.sock")
    }

    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }

    pub fn virtiofsd_log(&self) -> PathBuf {
        self.root.join("virtiofsd.log")
    }

    /// `<role>.pid`: read by `delete` after a killed shim.
    pub fn pid_file(&self, role: &str) -> PathBuf {
        self.root.join(format!("{role}.pid"))
    }

    /// Local backend: the agent's sockets and state.
    pub fn agent_control(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    pub fn agent_streams(&self) -> PathBuf {
        self.root.join("agent-stream.sock")
    }

    pub fn agent_state(&self) -> PathBuf {
        self.root.join("agent-state")
    }

    /// Last `n` lines of the guest console, for error messages.
    pub fn console_tail(&self, n: usize) -> String {
        let text = std::fs::read(self.console_log()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        if lines.is_empty() {
            return "(no console output)".into();
        }
        lines[start..].join("\n")
    }
}
