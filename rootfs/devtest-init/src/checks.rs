//! The registry of checks, by name.

use crate::params::Params;

/// Runs check `name`; `Ok` carries an optional detail for the report line.
pub fn run(name: &str, p: &Params) -> Result<String, String> {
    match name {
        "vsock" => crate::vsock::check(p),
        "fs" => crate::fs::check(p),
        "fs-bench" => crate::fs_bench::run(p),
        "blk" => crate::blk::check(p),
        "net" => crate::net::check(p),
        "rng" => crate::rng::check(p),
        other => Err(format!("unknown check '{other}'")),
    }
}
