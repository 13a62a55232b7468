//! Test-mode PID 1 for the device end-to-end tests. The kernel command line
//! names the checks to run (`cocoon.test=vsock,fs,blk,net,rng`) and their
//! parameters (`cocoon.<check>.<key>=<value>`); every check reports one line
//! `cocoon-devtest: <name> ok[: detail]` or `cocoon-devtest: <name> FAIL: <why>`,
//! then `cocoon-devtest: done` and the VM is reset.

mod blk;
mod checks;
mod fs;
mod fs_bench;
mod net;
mod params;
mod rng;
mod sys;
mod vsock;
mod vsock_bench;

use std::io::Write;

fn main() {
    let mut out = std::io::stdout();
    for (fs, dir) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        if let Err(e) = sys::mount(fs, dir, fs, 0, None) {
            let _ = writeln!(out, "cocoon-devtest: mounting {dir}: {e}");
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = params::Params::parse(&cmdline);
    for name in params.tests() {
        let line = match checks::run(&name, &params) {
            Ok(detail) if detail.is_empty() => format!("cocoon-devtest: {name} ok"),
            Ok(detail) => format!("cocoon-devtest: {name} ok: {detail}"),
            Err(why) => format!("cocoon-devtest: {name} FAIL: {why}"),
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    let _ = writeln!(out, "cocoon-devtest: done");
    let _ = out.flush();
    sys::reset();
}
