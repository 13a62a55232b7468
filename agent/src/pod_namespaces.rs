//! A pod is one set of namespaces in the guest.
//!
//! For a CRI container (annotation `io.kubernetes.cri.container-type` =
//! `container`), containerd names the sandbox's namespaces by host paths
//! (`/proc/<sandbox pid>/ns/ipc`, `.../uts`, and `.../pid` when the pod
//! shares its process namespace). Those paths mean nothing in the guest:
//! the agent joins the same kinds of namespaces of the sandbox container's
//! init here instead (the sandbox's id is the `io.kubernetes.cri.sandbox-id`
//! annotation). The network namespace is the pod's too, but the shim has
//! already taken it out of the spec: every container of a pod with a
//! network shares the guest's own, where the pod's interface is.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::container::{lock, AgentState};

pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, thiserror::Error)]
pub enum PodNamespacesError {
    #[error("container {id} asks for its pod's {kind} namespace, but it names no sandbox ({ANNOTATION_SANDBOX_ID} is missing or empty)")]
    NoSandboxId { id: String, kind: &'static str },
    #[error("container {id} asks for the {kind} namespace of its pod's sandbox {sandbox}, which is not a container of this guest")]
    NoSandbox {
        id: String,
        kind: &'static str,
        sandbox: String,
    },
    #[error("container {id} asks for the {kind} namespace of its pod's sandbox {sandbox}, whose process has exited")]
    SandboxExited {
        id: String,
        kind: &'static str,
        sandbox: String,
    },
}

/// The kinds a CRI container may share with its sandbox, and their
/// `/proc/<pid>/ns/` names.
fn shared_kind(t: LinuxNamespaceType) -> Option<&'static str> {
    match t {
        LinuxNamespaceType::Pid => Some("pid"),
        LinuxNamespaceType::Ipc => Some("ipc"),
        LinuxNamespaceType::Uts => Some("uts"),
        _ => None,
    }
}

/// Rewrites the namespace paths of CRI container `id` to its sandbox's
/// namespaces in the guest. Other containers' specs are left as they are.
pub fn join_sandbox(
    state: &AgentState,
    id: &str,
    spec: &mut Spec,
) -> Result<(), PodNamespacesError> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    if annotations
        .get(ANNOTATION_CONTAINER_TYPE)
        .map(String::as_str)
        != Some("container")
    {
        return Ok(());
    }
    let sandbox = annotations
        .get(ANNOTATION_SANDBOX_ID)
        .filter(|s| !s.is_empty())
        .cloned();
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(());
    };
    let Some(mut namespaces) = linux.namespaces().clone() else {
        return Ok(());
    };
    for ns in namespaces.iter_mut() {
        let Some(kind) = shared_kind(ns.typ()) else {
            continue;
        };
        if ns.path().is_none() {
            continue;
        }
        let sandbox = sandbox.clone().ok_or(PodNamespacesError::NoSandboxId {
            id: id.to_string(),
            kind,
        })?;
        let init = lock(&state.containers)
            .get(&sandbox)
            .map(|c| c.init.clone())
            .ok_or_else(|| PodNamespacesError::NoSandbox {
                id: id.to_string(),
                kind,
                sandbox: sandbox.clone(),
            })?;
        if init.exited().is_some() {
            return Err(PodNamespacesError::SandboxExited {
                id: id.to_string(),
                kind,
                sandbox,
            });
        }
        ns.set_path(Some(format!("/proc/{}/ns/{kind}", init.pid).into()));
    }
    linux.set_namespaces(Some(namespaces));
    Ok(())
}
