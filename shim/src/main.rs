//! containerd-shim-cocoon-v2: a later issue fills this in; for now the crate
//! only reserves its place in the workspace.

fn main() {
    println!("containerd-shim-cocoon-v2 {}", env!("CARGO_PKG_VERSION"));
}
