//! cocoon-agent: the in-guest agent. A later issue fills this in; for now the
//! crate only reserves its place in the workspace.

fn main() {
    println!("cocoon-agent {}", env!("CARGO_PKG_VERSION"));
}
