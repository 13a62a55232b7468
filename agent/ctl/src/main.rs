//! cocoon-agent-ctl: drives every agent RPC and attaches to stdio streams.
//!
//! `cocoon-agent-ctl --addr unix:///tmp/a.sock check`
//! `cocoon-agent-ctl --addr hvsock:///run/vm.sock:1024 --stream-addr hvsock:///run/vm.sock:1025 run c1 config.json`

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cocoon_agent_protocol::address::{connect_agent, open_stream, Address};
use cocoon_agent_protocol::agent::*;
use cocoon_agent_protocol::agent_ttrpc::AgentClient;
use cocoon_agent_protocol::stream_header::{StreamHeader, StreamKind};
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
#[command(version, about = "debugging client for cocoon-agent")]
struct Cli {
    /// Control address: unix:///PATH, vsock://CID:PORT or hvsock:///PATH:PORT.
    #[arg(long, env = "COCOON_AGENT_ADDR")]
    addr: Address,
    /// Stream address (needed by `attach` and `run`).
    #[arg(long, env = "COCOON_AGENT_STREAM_ADDR")]
    stream_addr: Option<Address>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Check,
    Version,
    CreateSandbox {
        #[arg(long, default_value = "")]
        hostname: String,
        #[arg(long = "dns")]
        dns: Vec<String>,
        #[arg(long, default_value = "")]
        share_tag: String,
        /// Set the guest clock from this machine's.
        #[arg(long)]
        set_time: bool,
    },
    DestroySandbox,
    /// Create from a config.json.
    Create {
        id: String,
        spec: PathBuf,
        #[arg(long)]
        stdin: bool,
        #[arg(long)]
        stdout: bool,
        #[arg(long)]
        stderr: bool,
    },
    Start {
        id: String,
    },
    /// Run a process (OCI process JSON) in a running container.
    Exec {
        id: String,
        exec_id: String,
        process: PathBuf,
        #[arg(long)]
        stdout: bool,
        #[arg(long)]
        stderr: bool,
    },
    Signal {
        id: String,
        signal: u32,
        #[arg(long, default_value = "")]
        exec_id: String,
        #[arg(long)]
        all: bool,
    },
    Wait {
        id: String,
        #[arg(long, default_value = "")]
        exec_id: String,
    },
    Ps {
        id: String,
    },
    Resize {
        id: String,
        rows: u32,
        columns: u32,
        #[arg(long, default_value = "")]
        exec_id: String,
    },
    CloseStdin {
        id: String,
        #[arg(long, default_value = "")]
        exec_id: String,
    },
    /// Apply linux.resources JSON from a file.
    Update {
        id: String,
        resources: PathBuf,
    },
    Stats {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Remove {
        id: String,
        #[arg(long, default_value_t = 0)]
        timeout_secs: u32,
    },
    /// Print OOM events as they come.
    OomEvents,
    /// Copy one stream to stdout (stdout/stderr/tty) or from stdin (stdin).
    Attach {
        id: String,
        kind: String,
        #[arg(long, default_value = "")]
        exec_id: String,
    },
    /// Create with stdout+stderr, attach, start, wait, remove; exits with
    /// the container's status.
    Run {
        id: String,
        spec: PathBuf,
    },
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

fn stdio(stdin: bool, stdout: bool, stderr: bool) -> protobuf::MessageField<Stdio> {
    let mut s = Stdio::new();
    s.stdin = stdin;
    s.stdout = stdout;
    s.stderr = stderr;
    protobuf::MessageField::some(s)
}

fn creq(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.into();
    r
}

fn preq(id: &str, exec_id: &str) -> ProcessRequest {
    let mut r = ProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec_id.into();
    r
}

fn kind(s: &str) -> Result<StreamKind> {
    Ok(match s {
        "stdin" => StreamKind::Stdin,
        "stdout" => StreamKind::Stdout,
        "stderr" => StreamKind::Stderr,
        "tty" => StreamKind::Tty,
        other => bail!("unknown stream {other:?}: stdin, stdout, stderr or tty"),
    })
}

async fn attach(addr: &Address, id: &str, exec_id: &str, k: StreamKind) -> Result<()> {
    let mut conn = open_stream(addr, &StreamHeader::new(k, id, exec_id)).await?;
    match k {
        StreamKind::Stdin => {
            tokio::io::copy(&mut tokio::io::stdin(), &mut conn).await?;
            conn.shutdown().await?;
        }
        StreamKind::Stdout | StreamKind::Tty => {
            tokio::io::copy(&mut conn, &mut tokio::io::stdout()).await?;
        }
        // Not a stream name `stream_kind` accepts.
        StreamKind::PortForward => bail!("port forward is not a process stream"),
        StreamKind::Stderr => {
            tokio::io::copy(&mut conn, &mut tokio::io::stderr()).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let c: AgentClient = connect_agent(&cli.addr).await?;
    let streams = || cli.stream_addr.clone().context("--stream-addr is required");
    match cli.cmd {
        Cmd::Check => println!(
            "serving: {}",
            c.check(ctx(), &CheckRequest::new()).await?.serving
        ),
        Cmd::Version => {
            let v = c.version(ctx(), &VersionRequest::new()).await?;
            println!("agent {} protocol {}", v.agent_version, v.protocol_version);
        }
        Cmd::CreateSandbox {
            hostname,
            dns,
            share_tag,
            set_time,
        } => {
            let mut r = CreateSandboxRequest::new();
            // The agent reseeds the guest's RNG with it and requires it.
            let mut entropy = vec![0u8; 64];
            std::io::Read::read_exact(
                &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
                &mut entropy,
            )
            .context("reading /dev/urandom")?;
            r.entropy = entropy;
            r.hostname = hostname;
            r.dns_servers = dns;
            r.share_tag = share_tag;
            if set_time {
                r.guest_time_unix_nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos() as i64;
            }
            println!(
                "share at {}",
                c.create_sandbox(ctx(), &r).await?.share_mount_point
            );
        }
        Cmd::DestroySandbox => {
            c.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
                .await?;
        }
        Cmd::Create {
            id,
            spec,
            stdin,
            stdout,
            stderr,
        } => {
            let mut r = CreateContainerRequest::new();
            r.container_id = id;
            r.oci_spec_json = std::fs::read(&spec).with_context(|| spec.display().to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&r.oci_spec_json)?;
            r.terminal = v["process"]["terminal"].as_bool().unwrap_or(false);
            r.stdio = stdio(stdin, stdout, stderr);
            println!("pid {}", c.create_container(ctx(), &r).await?.pid);
        }
        Cmd::Start { id } => println!("pid {}", c.start_container(ctx(), &creq(&id)).await?.pid),
        Cmd::Exec {
            id,
            exec_id,
            process,
            stdout,
            stderr,
        } => {
            let mut r = ExecProcessRequest::new();
            r.container_id = id;
            r.exec_id = exec_id;
            r.oci_process_json = std::fs::read(&process)?;
            r.stdio = stdio(false, stdout, stderr);
            println!("pid {}", c.exec_process(ctx(), &r).await?.pid);
        }
        Cmd::Signal {
            id,
            signal,
            exec_id,
            all,
        } => {
            let mut r = SignalProcessRequest::new();
            r.container_id = id;
            r.exec_id = exec_id;
            r.signal = signal;
            r.all = all;
            c.signal_process(ctx(), &r).await?;
        }
        Cmd::Wait { id, exec_id } => {
            let w = c.wait_process(ctx(), &preq(&id, &exec_id)).await?;
            println!(
                "pid {} exit {} at {}",
                w.pid, w.exit_status, w.exited_at_unix_nanos
            );
        }
        Cmd::Ps { id } => {
            for p in c.list_processes(ctx(), &creq(&id)).await?.processes {
                println!("{}\t{}", p.pid, p.exec_id);
            }
        }
        Cmd::Resize {
            id,
            rows,
            columns,
            exec_id,
        } => {
            let mut r = ResizeTtyRequest::new();
            r.container_id = id;
            r.exec_id = exec_id;
            r.rows = rows;
            r.columns = columns;
            c.resize_tty(ctx(), &r).await?;
        }
        Cmd::CloseStdin { id, exec_id } => {
            c.close_stdin(ctx(), &preq(&id, &exec_id)).await?;
        }
        Cmd::Update { id, resources } => {
            let mut r = UpdateContainerRequest::new();
            r.container_id = id;
            r.linux_resources_json = std::fs::read(&resources)?;
            c.update_container(ctx(), &r).await?;
        }
        Cmd::Stats { id } => {
            let s = c.stats_container(ctx(), &creq(&id)).await?;
            println!("{}", protobuf::text_format::print_to_string_pretty(&s));
        }
        Cmd::Pause { id } => {
            c.pause_container(ctx(), &creq(&id)).await?;
        }
        Cmd::Resume { id } => {
            c.resume_container(ctx(), &creq(&id)).await?;
        }
        Cmd::Remove { id, timeout_secs } => {
            let mut r = RemoveContainerRequest::new();
            r.container_id = id;
            r.timeout_secs = timeout_secs;
            c.remove_container(ctx(), &r).await?;
        }
        Cmd::OomEvents => loop {
            let e = c.get_oom_event(ctx(), &GetOOMEventRequest::new()).await?;
            println!("oom {}", e.container_id);
        },
        Cmd::Attach {
            id,
            kind: k,
            exec_id,
        } => attach(&streams()?, &id, &exec_id, kind(&k)?).await?,
        Cmd::Run { id, spec } => {
            let addr = streams()?;
            let mut r = CreateContainerRequest::new();
            r.container_id = id.clone();
            r.oci_spec_json = std::fs::read(&spec)?;
            r.stdio = stdio(false, true, true);
            c.create_container(ctx(), &r).await?;
            let out = tokio::spawn({
                let (a, i) = (addr.clone(), id.clone());
                async move { attach(&a, &i, "", StreamKind::Stdout).await }
            });
            let err = tokio::spawn({
                let (a, i) = (addr.clone(), id.clone());
                async move { attach(&a, &i, "", StreamKind::Stderr).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            c.start_container(ctx(), &creq(&id)).await?;
            let w = c.wait_process(ctx(), &preq(&id, "")).await?;
            out.await??;
            err.await??;
            let mut rm = RemoveContainerRequest::new();
            rm.container_id = id;
            c.remove_container(ctx(), &rm).await?;
            std::process::exit(w.exit_status);
        }
    }
    Ok(())
}
