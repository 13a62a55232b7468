//! What the shim knows about each container and process.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use crate::stdio::{IoHandle, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitInfo {
    pub status: u32,
    pub at_nanos: i64,
}

impl ExitInfo {
    pub fn timestamp(&self) -> Timestamp {
        let mut t = Timestamp::new();
        t.seconds = self.at_nanos.div_euclid(1_000_000_000);
        t.nanos = self.at_nanos.rem_euclid(1_000_000_000) as i32;
        t
    }
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub struct Process {
    /// Empty for the init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// Exec: the OCI process JSON, sent to the agent at Start.
    pub spec_json: Vec<u8>,
    pub status: Status,
    pub io: Option<IoHandle>,
    pub exit_tx: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths, spec_json: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            stdio,
            spec_json,
            status: Status::CREATED,
            io: None,
            exit_tx: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit_tx.borrow()
    }
}

pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub bundle: PathBuf,
    pub mounted_rootfs: bool,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Option<&Process> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}
