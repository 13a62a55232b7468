//! libcontainer runs in a short-lived helper process, not in the agent.
//!
//! libcontainer clones its intermediate and init processes with a raw
//! `clone3` and runs Rust code in the child without `exec`. In the agent's
//! multi-threaded tokio runtime another thread may hold the allocator's lock
//! at that moment (no atfork handlers run for a raw clone), so the child could
//! deadlock. So the builder runs in a single-threaded helper that calls it
//! and exits: forked by the agent's fork server ([`crate::forkserver`]), or,
//! when that is gone, the agent re-executed as `cocoon-agent __helper ...`.
//! The container's init is a child of the helper; when the helper exits it is
//! reparented to the agent (PID 1, or a child subreaper on the host), whose
//! reaper collects its exit status.
//!
//! Interface: the container's stdin/stdout/stderr are the helper's fds 3, 4
//! and 5; on success the helper prints the new pid and exits 0; on failure it
//! prints the error and exits with a class code (see [`HelperFailure`]).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use crate::forkserver::{ForkServer, ForkServerError};
use crate::reaper::Reaper;

const EXIT_INTERNAL: i32 = 1;
const EXIT_INVALID: i32 = 2;
const EXIT_EXISTS: i32 = 3;
const EXIT_STATE: i32 = 4;

/// What a failed helper reported, by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperFailure {
    Internal,
    InvalidSpec,
    AlreadyExists,
    WrongState,
}

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("starting the libcontainer helper")]
    Spawn(#[source] std::io::Error),
    #[error("starting the libcontainer helper through the fork server")]
    ForkServer(#[source] ForkServerError),
    #[error("helper log file")]
    Log(#[source] std::io::Error),
    #[error("the helper was lost before it exited")]
    Lost,
    #[error("libcontainer: {message}")]
    Failed {
        class: HelperFailure,
        message: String,
    },
    #[error("the helper printed no pid: {0:?}")]
    NoPid(String),
}

pub enum HelperOp<'a> {
    /// Create (not start) a container from `<bundle>/config.json`.
    Create { bundle: &'a Path },
    /// Run the process in `process.json` in the running container.
    Exec { process_json: &'a Path },
}

pub struct HelperRequest<'a> {
    pub op: HelperOp<'a>,
    pub container_id: &'a str,
    /// libcontainer's state root.
    pub root: &'a Path,
    pub console_socket: Option<&'a Path>,
    /// The process's stdin, stdout and stderr.
    pub stdio: [OwnedFd; 3],
    /// Directory for the helper's output files.
    pub work_dir: &'a Path,
}

/// Runs the helper and returns the new process's pid and the instant
/// before it was spawned (for [`Reaper::watch`]).
pub async fn run(reaper: &Reaper, req: HelperRequest<'_>) -> Result<(i32, Instant), HelperError> {
    let tag = format!("{}-{}", std::process::id(), unique());
    let out_path = req.work_dir.join(format!("helper-{tag}.out"));
    let err_path = req.work_dir.join(format!("helper-{tag}.err"));
    let out = File::create(&out_path).map_err(HelperError::Log)?;
    let err = File::create(&err_path).map_err(HelperError::Log)?;

    let mut args = vec!["__helper".to_string()];
    match req.op {
        HelperOp::Create { bundle } => args.extend(["create".into(), path_arg(bundle)?]),
        HelperOp::Exec { process_json } => args.extend(["exec".into(), path_arg(process_json)?]),
    };
    args.push(path_arg(req.root)?);
    args.push(req.container_id.to_string());
    if let Some(c) = req.console_socket {
        args.push(path_arg(c)?);
    }

    let since = Instant::now();
    let exited = {
        let guard = reaper.spawn_guard();
        let forked = FORK_SERVER.get().map(|server| {
            server.spawn(
                &args[1..],
                [
                    out.as_fd(),
                    err.as_fd(),
                    req.stdio[0].as_fd(),
                    req.stdio[1].as_fd(),
                    req.stdio[2].as_fd(),
                ],
            )
        });
        let pid = match forked {
            Some(Ok(pid)) => pid,
            // Any other failure may have left a helper running.
            Some(Err(e)) if !matches!(e, ForkServerError::Gone) => {
                return Err(HelperError::ForkServer(e))
            }
            other => {
                if other.is_some() {
                    tracing::warn!(
                        "the fork server is gone: re-executing the agent for the helper"
                    );
                }
                let mut cmd = exec_command(&args, out, err, &req.stdio)?;
                cmd.spawn().map_err(HelperError::Spawn)?.id() as i32
            }
        };
        guard.watch(pid)
    };
    // The agent's copies of the child's ends must go, or EOF never comes.
    drop(req.stdio);
    let status = exited.await.map_err(|_| HelperError::Lost)?.status;

    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    if status != 0 {
        let class = match status {
            EXIT_INVALID => HelperFailure::InvalidSpec,
            EXIT_EXISTS => HelperFailure::AlreadyExists,
            EXIT_STATE => HelperFailure::WrongState,
            _ => HelperFailure::Internal,
        };
        let message = stderr.lines().last().unwrap_or("helper failed").to_string();
        if !stderr.is_empty() {
            tracing::debug!(%stderr, "helper output");
        }
        return Err(HelperError::Failed { class, message });
    }
    let pid = stdout
        .trim()
        .parse::<i32>()
        .map_err(|_| HelperError::NoPid(stdout.clone()))?;
    Ok((pid, since))
}

/// The agent's fork server ([`crate::forkserver`]), when it runs.
pub static FORK_SERVER: OnceLock<ForkServer> = OnceLock::new();

fn path_arg(p: &Path) -> Result<String, HelperError> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        HelperError::Spawn(std::io::Error::other(format!(
            "{} is not UTF-8",
            p.display()
        )))
    })
}

/// The helper by re-executing this binary (when there is no fork server):
/// `args` after argv[0], output to `out` and `err`, the process's stdio
/// on its fds 3, 4 and 5.
fn exec_command(
    args: &[String],
    out: File,
    err: File,
    stdio: &[OwnedFd; 3],
) -> Result<Command, HelperError> {
    let exe = std::env::current_exe().map_err(HelperError::Spawn)?;
    let mut cmd = Command::new(exe);
    cmd.args(args);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.env_remove("RUST_LOG");
    let fds = [
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
    ];
    // SAFETY: the closure runs between fork and exec and only makes
    // system calls (fcntl, close, dup2: async-signal-safe), no allocation;
    // the child's copies of the stdio descriptors are its to give up.
    unsafe {
        cmd.pre_exec(move || crate::fd_move::move_onto(fds, [3, 4, 5]));
    }
    Ok(cmd)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Entry point of `cocoon-agent __helper OP PATH ROOT ID [CONSOLE]`.
pub fn helper_main(args: &[String]) -> i32 {
    // This thread's default, not the global one: a helper forked by the
    // fork server has the agent's global subscriber already.
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter("warn,libcgroups=error")
            .finish(),
    );
    let [op, path, root, id, rest @ ..] = args else {
        eprintln!("usage: __helper create|exec PATH ROOT ID [CONSOLE]");
        return EXIT_INTERNAL;
    };
    let console = rest.first().map(PathBuf::from);
    match helper_run(op, Path::new(path), Path::new(root), id, console) {
        Ok(pid) => {
            println!("{pid}");
            0
        }
        Err(e) => {
            let class = classify(&e);
            eprintln!("{}", crate::error_code::chain(&e));
            class
        }
    }
}

fn classify(e: &libcontainer::error::LibcontainerError) -> i32 {
    use libcontainer::error::LibcontainerError as L;
    match e {
        L::InvalidSpec(_) | L::MissingSpec(_) | L::InvalidInput(_) | L::InvalidID(_) => {
            EXIT_INVALID
        }
        L::Exist => EXIT_EXISTS,
        L::IncorrectStatus(_) => EXIT_STATE,
        _ => EXIT_INTERNAL,
    }
}

fn helper_run(
    op: &str,
    path: &Path,
    root: &Path,
    id: &str,
    console: Option<PathBuf>,
) -> Result<i32, libcontainer::error::LibcontainerError> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    // SAFETY: the agent placed the process's stdio on fds 3, 4 and 5 of this
    // process (see `run`), and nothing else in the helper owns them.
    let stdio = unsafe {
        [
            OwnedFd::from_raw_fd(3),
            OwnedFd::from_raw_fd(4),
            OwnedFd::from_raw_fd(5),
        ]
    };
    let [stdin, stdout, stderr] = stdio;
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(root)?
        .with_console_socket(console)
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr);
    match op {
        "create" => {
            let container = builder
                .as_init(path)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            Ok(container.pid().map(|p| p.as_raw()).unwrap_or(0))
        }
        "exec" => {
            // The container's seccomp profile, which libcontainer leaves
            // out of a tenant's spec (see exec_seccomp).
            let container = libcontainer::container::Container::load(root.join(id))?;
            let config = container.bundle().join("config.json");
            let plan = crate::exec_seccomp::plan(&config, path).map_err(|e| {
                libcontainer::error::LibcontainerError::Other(crate::error_code::chain(&e))
            })?;
            let pid = builder
                .with_executor(plan.executor)
                .as_tenant()
                .with_process(Some(&plan.process_json))
                .with_detach(true)
                .build()?;
            Ok(pid.as_raw())
        }
        other => Err(libcontainer::error::LibcontainerError::InvalidInput(
            format!("unknown helper op {other}"),
        )),
    }
}
