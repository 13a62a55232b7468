//! containerd-shim-cocoon-v2: the shim v2 binary (`start`, `delete`, the
//! task server) plus `check`, a host readiness report.

use containerd_shim::Config as ShimConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check") {
        std::process::exit(cocoon_shim::check::run(&args[2..]));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(containerd_shim::run::<cocoon_shim::shim::CocoonShim>(
        "io.containerd.cocoon.v2",
        Some(ShimConfig {
            // Logs go to the bundle's log FIFO through tracing.
            no_setup_logger: true,
            default_log_level: "info".into(),
            // tokio reaps our own children (VMM, virtiofsd); the crate's
            // SIGCHLD reaper would steal their exit statuses.
            no_reaper: true,
            no_sub_reaper: true,
        }),
    ));
}
