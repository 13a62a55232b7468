//! The agent's `main`: the helper dispatch, PID 1 setup, then the server.
//! A library function so that test binaries can embed the agent (they
//! re-execute themselves as the agent and as its helper).

use clap::Parser;

use crate::config::AgentConfig;
use crate::{helper, pid1, run};

/// Runs the agent (or, for `__helper ...`, one libcontainer helper) with
/// this process's arguments, and exits.
pub fn agent_main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__helper") {
        std::process::exit(helper::helper_main(&args[2..]));
    }
    let is_init = pid1::is_init();
    // As PID 1 the kernel's command line words that are not its own arrive
    // as arguments; parse only what the agent knows from the environment.
    let config = if is_init {
        AgentConfig::parse_from(["cocoon-agent"])
    } else {
        AgentConfig::parse()
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    if is_init {
        if let Err(e) = pid1::setup() {
            tracing::error!(error = %crate::error_code::chain(&e), "guest setup failed");
            pid1::power_off();
        }
    }
    // While this process has one thread: after the guest setup (the
    // server shares its root and mounts), before the runtime's threads.
    match crate::forkserver::ForkServer::start(helper::helper_main) {
        Ok(server) => {
            let _ = helper::FORK_SERVER.set(server);
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_code::chain(&e), "no fork server: helpers re-execute the agent");
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "tokio runtime");
            exit(is_init, 1);
        }
    };
    if let Err(e) = rt.block_on(run::run(config, is_init)) {
        tracing::error!(error = %crate::error_code::chain(&e), "agent failed");
        exit(is_init, 1);
    }
    exit(is_init, 0)
}

fn exit(is_init: bool, code: i32) -> ! {
    if is_init {
        pid1::power_off();
    }
    std::process::exit(code)
}
