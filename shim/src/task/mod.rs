//! The containerd task service (`containerd.task.v2.Task`) over pods.

mod exit;
mod pod;
pub mod reply;
pub mod rpc_error;
mod service;
mod state;

pub use pod::{remove_pod_dir, OomGate};
pub use service::{
    pod_id_for, runtime_config_path, valid_id, BackendFactory, BundleRecord, PodParams,
    TaskService, ANNOTATION_CONTAINER_TYPE, BUNDLE_POD_FILE,
};
pub use state::ExitInfo;

/// Now as a protobuf timestamp.
pub fn exit_timestamp_now(
) -> containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp {
    state::ExitInfo {
        status: 0,
        at_nanos: state::now_nanos(),
    }
    .timestamp()
}
