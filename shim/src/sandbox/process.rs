//! A supervised helper process (VMM, virtiofsd, local agent): spawned with
//! a pid file, watched for exit, killed and reaped on stop.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

use super::SandboxError;

/// How a supervised process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal's number.
        signal: i32,
        /// Whether it dumped core.
        core: bool,
    },
    /// Waiting for it failed (the text says why); it is gone to us.
    WaitFailed(String),
}

impl Ended {
    /// The exit code; `None` for a death by a signal or a failed wait.
    pub fn code(&self) -> Option<i32> {
        match self {
            Ended::Exited(code) => Some(*code),
            _ => None,
        }
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self {
            Ended::Signaled { signal, .. } => Some(*signal),
            _ => None,
        }
    }
}

impl From<ExitStatus> for Ended {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(signal)) => Ended::Signaled {
                signal,
                core: status.core_dumped(),
            },
            // Neither: a stopped or continued status, which `wait` does
            // not return for an exited child.
            (None, None) => Ended::WaitFailed(format!("unexpected wait status {status}")),
        }
    }
}

/// `ExitStatus`'s own words: "exit status: 4", "signal: 31 (SIGSYS) (core dumped)".
impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exit status: {code}"),
            Ended::Signaled { signal, core } => {
                write!(f, "signal: {signal}")?;
                if let Ok(name) = Signal::try_from(*signal) {
                    write!(f, " ({name})")?;
                }
                if *core {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
            Ended::WaitFailed(why) => write!(f, "wait failed: {why}"),
        }
    }
}

pub struct Supervised {
    pub name: &'static str,
    pub pid: u32,
    pid_file: PathBuf,
    /// `Some` once the process has ended.
    exited: watch::Receiver<Option<Ended>>,
}

impl Supervised {
    /// Spawns `cmd` and writes its pid to `pid_file`.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        pid_file: &Path,
    ) -> Result<Supervised, SandboxError> {
        let binary = format!("{name} ({:?})", cmd.as_std().get_program());
        let mut child = cmd
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SandboxError::Spawn { binary, source })?;
        let pid = child.id().unwrap_or(0);
        std::fs::write(pid_file, pid.to_string()).map_err(|source| SandboxError::Io {
            what: format!("writing {}", pid_file.display()),
            source,
        })?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => Ended::from(s),
                Err(e) => Ended::WaitFailed(e.to_string()),
            };
            tracing::info!(name, pid, %status, "helper process exited");
            let _ = tx.send(Some(status));
        });
        Ok(Supervised {
            name,
            pid,
            pid_file: pid_file.to_path_buf(),
            exited: rx,
        })
    }

    pub fn exit_status(&self) -> Option<Ended> {
        self.exited.borrow().clone()
    }

    pub fn exited(&self) -> watch::Receiver<Option<Ended>> {
        self.exited.clone()
    }

    /// Waits up to `t` for the process to exit by itself.
    pub async fn wait_for(&self, t: Duration) -> bool {
        let mut rx = self.exited.clone();
        let done = tokio::time::timeout(t, rx.wait_for(|s| s.is_some()))
            .await
            .is_ok();
        done
    }

    /// SIGKILL now, without waiting for the exit.
    pub fn kill_now(&self) {
        if self.exit_status().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped when this returns.
    pub async fn stop(&self, grace: Duration) {
        if self.exit_status().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            if !self.wait_for(grace).await {
                let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                self.wait_for(Duration::from_secs(10)).await;
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// `delete` after a killed shim: SIGKILLs the process named by a pid file
/// if it is still the binary we started (`comm` matches `expect`).
pub fn kill_from_pid_file(pid_file: &Path, expect: &str) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // comm is truncated to 15 bytes.
    let short: String = expect.chars().take(15).collect();
    if pid > 1 && !comm.is_empty() && comm.trim() == short {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Let the child of `cmd` inherit `fd` under its own number (the shim's
/// copy is close-on-exec; the child's is made inheritable between fork and
/// exec, with no dup2 that could land on another pre_exec's descriptor).
/// Returns the number the child sees.
pub fn inherit_fd(cmd: &mut Command, fd: std::sync::Arc<std::os::fd::OwnedFd>) -> i32 {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: only fcntl(2) between fork and exec, on a descriptor the
    // closure keeps open.
    unsafe {
        cmd.pre_exec(move || {
            let _ = &fd;
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    raw
}
