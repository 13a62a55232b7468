//! The cocoon agent protocol, shared by the agent, `cocoon-agent-ctl` and the
//! shim: the ttrpc service generated from `protos/agent.proto`, the header
//! that opens a raw stdio stream, and address helpers for both transports.

pub mod address;
pub mod deadline;
pub mod stream_header;

/// Messages of `cocoon.agent.v1`.
#[allow(
    clippy::all,
    missing_docs,
    unused_imports,
    unused_results,
    renamed_and_removed_lints
)]
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unused_mut
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The `Agent` ttrpc service: server trait, `create_agent` and the client.
#[allow(
    clippy::all,
    missing_docs,
    unused_imports,
    unused_results,
    renamed_and_removed_lints
)]
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unused_mut
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// Bumped on every incompatible change of the proto or the stream header.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default vsock port of the control (ttrpc) listener in the guest.
pub const DEFAULT_CONTROL_PORT: u32 = 1024;
/// Default vsock port of the stdio stream listener in the guest.
pub const DEFAULT_STREAM_PORT: u32 = 1025;

pub use protobuf;
pub use ttrpc;
