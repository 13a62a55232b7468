//! cocoon-agent: the in-guest agent. PID 1 of the VM; a ttrpc server that
//! builds and runs containers from OCI specs (through libcontainer, in a
//! helper process), streams their stdio over raw connections and reports
//! exits, OOM kills and statistics. It also runs on the host over Unix
//! sockets, which is how its tests drive it.

pub mod cgroup_parent;
pub mod cgroup_stats;
pub mod config;
pub mod console;
pub mod container;
pub mod container_create;
pub mod container_remove;
pub mod container_resources;
pub mod container_signal;
pub mod container_start;
pub mod entropy;
pub mod entry;
pub mod error_code;
pub mod exec_seccomp;
pub mod fd_move;
pub mod forkserver;
pub mod helper;
pub mod listen;
pub mod network;
pub mod oom;
pub mod pid1;
pub mod pod_namespaces;
pub mod reaper;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod spec_check;
pub mod stdio;
pub mod stream;
