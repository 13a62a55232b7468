//! containerd-shim-cocoon-v2: containerd's task API on top of one cocoon
//! micro-VM per pod.

pub mod agent_client;
pub mod check;
pub mod cleanup;
pub mod config;
pub mod events;
pub mod host_entropy;
pub mod hostfs;
pub mod sandbox;
pub mod shim;
pub mod stdio;
pub mod storage;
pub mod task;
