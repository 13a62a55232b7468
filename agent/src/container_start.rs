//! StartContainer and ExecProcess.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use oci_spec::runtime::Process as OciProcess;

use crate::console::ConsoleSocket;
use crate::container::{blocking, check_id, lock, AgentState, ContainerError, Process};
use crate::container_create::console_path;
use crate::helper::{self, HelperOp, HelperRequest};
use crate::spec_check;
use crate::stdio::{make_stdio, StdioRequest};

/// libcontainer's start connects to the container's notify socket after a
/// process-wide `chdir` into the container's state directory (sun_path is
/// short) and changes back after. Two starts on two blocking threads would
/// race on the working directory: one fails with "notify.sock: No such file
/// or directory", or worse starts the other container. One at a time.
static START_CWD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub async fn start_container(state: &Arc<AgentState>, id: &str) -> Result<i32, ContainerError> {
    let c = state.container(id)?;
    if c.started.swap(true, Ordering::SeqCst) {
        return Err(ContainerError::WrongState {
            id: id.to_string(),
            reason: "already started",
        });
    }
    if c.init.exited().is_some() {
        return Err(ContainerError::WrongState {
            id: id.to_string(),
            reason: "init exited before start",
        });
    }
    let st = state.clone();
    let cid = id.to_string();
    let res = blocking(move || {
        let mut lc = st.load(&cid)?;
        let _cwd = lock(&START_CWD_LOCK);
        lc.start()
            .map_err(|e| ContainerError::Libcontainer("starting the container", e))
    })
    .await;
    if let Err(e) = res {
        c.started.store(false, Ordering::SeqCst);
        return Err(e);
    }
    tracing::debug!(id, pid = c.init.pid, "container started");
    Ok(c.init.pid)
}

struct ExecReservation<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    exec_id: String,
}

impl Drop for ExecReservation<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.exec_id);
    }
}

pub async fn exec_process(
    state: &AgentState,
    id: &str,
    exec_id: &str,
    process_json: &[u8],
    mut stdio: StdioRequest,
) -> Result<i32, ContainerError> {
    check_id("exec id", exec_id)?;
    let c = state.container(id)?;
    if !c.started.load(Ordering::SeqCst) || c.init.exited().is_some() {
        return Err(ContainerError::WrongState {
            id: id.to_string(),
            reason: "not running",
        });
    }
    let _reservation = {
        let execs = lock(&c.execs);
        let mut reserved = lock(&c.exec_reserved);
        if execs.contains_key(exec_id) || !reserved.insert(exec_id.to_string()) {
            return Err(ContainerError::ExecExists {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
        }
        ExecReservation {
            set: &c.exec_reserved,
            exec_id: exec_id.to_string(),
        }
    };
    let process: OciProcess = spec_check::parse("process", process_json)?;
    spec_check::check_process("process", &process)?;
    stdio.terminal = process.terminal().unwrap_or(false);

    let path = c.bundle.join(format!("exec-{exec_id}.json"));
    let json = serde_json::to_vec(&process)
        .map_err(|e| ContainerError::Io("encoding process.json", std::io::Error::other(e)))?;
    std::fs::write(&path, json).map_err(|e| ContainerError::Io("writing process.json", e))?;

    let setup = make_stdio(stdio)?;
    let console = if stdio.terminal {
        Some(ConsoleSocket::bind(&console_path(state))?)
    } else {
        None
    };
    let root = state.config.containers_dir();
    let res = helper::run(
        &state.reaper,
        HelperRequest {
            op: HelperOp::Exec {
                process_json: &path,
            },
            container_id: id,
            root: &root,
            console_socket: console.as_ref().map(|c| c.path()),
            stdio: setup.child,
            work_dir: &state.config.state_dir,
        },
    )
    .await;
    let _ = std::fs::remove_file(&path);
    let (pid, since) = res?;
    let exited = state.reaper.watch(pid, since);
    if let Some(console) = console {
        match console.receive() {
            Ok(master) => {
                let _ = setup.slots.tty.set(Arc::new(master));
            }
            Err(e) => {
                let _ = state.reaper.signal(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(e.into());
            }
        }
    }
    let p = Process::new(exec_id, pid, setup.slots, exited);
    lock(&c.execs).insert(exec_id.to_string(), p);
    tracing::debug!(id, exec_id, pid, "exec started");
    Ok(pid)
}
