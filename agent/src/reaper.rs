//! Reaps every child of the agent (as PID 1 or as a child subreaper on the
//! host) and hands exit statuses to whoever registered for them.
//!
//! All `waitpid` calls in the agent process happen here, under one lock.
//! Signalling a process also happens under that lock ([`Reaper::signal`]),
//! so a pid is never reused between the "still alive?" check and `kill`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Exits nobody has asked for yet (orphans, or a process that exited before
/// its creator learned its pid); the oldest are forgotten first.
const MAX_UNCLAIMED: usize = 1024;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    pub at: SystemTime,
    reaped: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("process {0} has already exited")]
    Exited(i32),
    #[error("signalling process {0}")]
    Signal(i32, #[source] Errno),
}

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<ExitInfo>>,
    exited: HashMap<i32, ExitInfo>,
    unclaimed: VecDeque<(i32, ExitInfo)>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

/// Held while spawning a child so that it cannot be reaped before it is
/// registered.
pub struct SpawnGuard<'a> {
    state: MutexGuard<'a, State>,
}

impl SpawnGuard<'_> {
    /// Registers a just-spawned child.
    pub fn watch(mut self, pid: i32) -> oneshot::Receiver<ExitInfo> {
        let (tx, rx) = oneshot::channel();
        self.state.waiters.insert(pid, tx);
        rx
    }
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Reaper::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks out reaping while the caller spawns a child.
    pub fn spawn_guard(&self) -> SpawnGuard<'_> {
        SpawnGuard { state: self.lock() }
    }

    /// Registers interest in `pid`, a process that a helper created (so that
    /// it may already have exited and been reaped as an orphan). Unclaimed
    /// exits older than `since` belong to an earlier process with that pid.
    pub fn watch(&self, pid: i32, since: Instant) -> oneshot::Receiver<ExitInfo> {
        let mut st = self.lock();
        let (tx, rx) = oneshot::channel();
        if let Some(i) = st.unclaimed.iter().position(|(p, _)| *p == pid) {
            let (_, info) = st.unclaimed.remove(i).expect("index is in range");
            if info.reaped >= since {
                st.exited.insert(pid, info);
                let _ = tx.send(info);
                return rx;
            }
        }
        st.exited.remove(&pid);
        st.waiters.insert(pid, tx);
        rx
    }

    /// Sends `sig` to `pid` unless the reaper has already seen it exit.
    pub fn signal(&self, pid: i32, sig: Signal) -> Result<(), ReaperError> {
        let st = self.lock();
        if st.exited.contains_key(&pid) {
            return Err(ReaperError::Exited(pid));
        }
        match signal::kill(Pid::from_raw(pid), sig) {
            Ok(()) => Ok(()),
            // A zombie not reaped yet, or a reparented process that is gone.
            Err(Errno::ESRCH) => Err(ReaperError::Exited(pid)),
            Err(e) => Err(ReaperError::Signal(pid, e)),
        }
    }

    /// Forgets a finished process (its container is being removed).
    pub fn forget(&self, pid: i32) {
        let mut st = self.lock();
        st.exited.remove(&pid);
        st.waiters.remove(&pid);
    }

    /// Reaps every exited child; call on SIGCHLD.
    pub fn reap(&self) {
        let mut st = self.lock();
        loop {
            let ws = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
                Ok(ws) => ws,
            };
            let (pid, status) = match ws {
                WaitStatus::Exited(pid, code) => (pid.as_raw(), code),
                WaitStatus::Signaled(pid, sig, _) => (pid.as_raw(), 128 + sig as i32),
                _ => continue,
            };
            let info = ExitInfo {
                status,
                at: SystemTime::now(),
                reaped: Instant::now(),
            };
            match st.waiters.remove(&pid) {
                Some(tx) => {
                    st.exited.insert(pid, info);
                    let _ = tx.send(info);
                }
                None => {
                    tracing::debug!(pid, status, "reaped an unregistered process");
                    if st.unclaimed.len() >= MAX_UNCLAIMED {
                        st.unclaimed.pop_front();
                    }
                    st.unclaimed.push_back((pid, info));
                }
            }
        }
    }

    /// Reaps on every SIGCHLD until the runtime stops.
    pub fn spawn_task(self: &Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child())?;
        let me = self.clone();
        tokio::spawn(async move {
            me.reap();
            while sigchld.recv().await.is_some() {
                me.reap();
            }
        });
        Ok(())
    }
}
