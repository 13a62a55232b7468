//! The layout of `<run_dir>/<sandbox id>/`, which holds everything a pod
//! owns on the host, so that one `remove_dir_all` (after unmounting)
//! leaves nothing behind.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// How much of a log an error message quotes.
pub const TAIL_BYTES: usize = 4096;

/// The last [`TAIL_BYTES`] of a bounded log (`path.1`, then `path`, as the
/// VMM and the shim's bounded writers keep it), as text.
pub fn log_tail(path: &Path) -> String {
    let bytes = read_ring(path);
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(TAIL_BYTES)..]).into_owned()
}

/// All of a bounded log: `path.1`, then `path` (missing halves are empty).
pub fn read_ring(path: &Path) -> Vec<u8> {
    let mut older = path.as_os_str().to_owned();
    older.push(".1");
    let mut bytes = std::fs::read(older).unwrap_or_default();
    bytes.extend(std::fs::read(path).unwrap_or_default());
    bytes
}

/// A held pod directory lock ([`PodDir::try_lock`]); released on drop.
#[derive(Debug)]
pub struct PodLock {
    _dir: std::fs::File,
}

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

    /// Takes the pod directory's lock (an exclusive `flock` on the
    /// directory itself) without waiting: `None` when another process holds
    /// it. The shim serving the pod holds it for the pod's life, whoever
    /// cleans up after a killed shim while it cleans up; a directory whose
    /// lock is free has no shim (see `cleanup::sweep_orphans`).
    pub fn try_lock(&self) -> std::io::Result<Option<PodLock>> {
        let dir = std::fs::File::open(&self.root)?;
        // SAFETY: flock(2) on a descriptor we own; no memory is involved.
        let r = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(Some(PodLock { _dir: dir }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// As [`PodDir::try_lock`], retrying for up to `limit`.
    pub fn lock_within(&self, limit: std::time::Duration) -> std::io::Result<Option<PodLock>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(l) = self.try_lock()? {
                return Ok(Some(l));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The pod's (sandbox's) id: the directory's name.
    pub fn id(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Exported to the guest over virtio-fs (or given to a local agent):
    /// a read-only view of [`PodDir::private`] (see `storage`).
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// Where the shim prepares each container's rootfs and binds; never
    /// exported writable.
    pub fn private(&self) -> PathBuf {
        self.root.join("private")
    }

    /// The VMM's root when jailed: what it makes while it runs (its
    /// vsock socket, log and console) lives here, owned by its uid.
    pub fn jail(&self) -> PathBuf {
        self.root.join("jail")
    }

    /// The working set a restored VMM records for its template (in the
    /// jail: the VMM creates it before entering it).
    pub fn working_set(&self) -> PathBuf {
        self.jail().join("working-set")
    }

    /// The uid the pod's VMM runs as (see `vmm_jail`).
    pub fn vmm_uid_record(&self) -> PathBuf {
        self.root.join("vmm-uid")
    }

    /// The VMM's own diagnostics (bounded by the VMM).
    pub fn vmm_log(&self) -> PathBuf {
        self.jail().join("vmm.log")
    }

    /// The VMM's stderr (a start-up error or a panic).
    pub fn vmm_stderr(&self) -> PathBuf {
        self.root.join("vmm.stderr")
    }

    /// What the shim made in the pod's network namespace (`network`).
    pub fn network_record(&self) -> PathBuf {
        self.root.join("network")
    }

    /// The pod cgroup's path, for teardown after a killed shim.
    pub fn cgroup_record(&self) -> PathBuf {
        self.root.join("cgroup")
    }

    /// Hybrid vsock Unix socket of the VMM.
    pub fn vsock(&self) -> PathBuf {
        self.jail().join("vsock.sock")
    }

    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.root.join("virtiofsd.sock")
    }

    pub fn console_log(&self) -> PathBuf {
        self.jail().join("console.log")
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

    /// Last `n` lines of the guest console, for error messages (at most
    /// [`TAIL_BYTES`]: a guest can print one endless line).
    pub fn console_tail(&self, n: usize) -> String {
        let text = log_tail(&self.console_log());
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "(no console output)".into();
        }
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
