//! UpdateContainer, PauseContainer, ResumeContainer.

use std::sync::Arc;

use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

use crate::container::{blocking, AgentState, ContainerError};
use crate::spec_check;

pub async fn update_container(
    state: &AgentState,
    id: &str,
    resources_json: &[u8],
) -> Result<(), ContainerError> {
    let res: LinuxResources = spec_check::parse("resources", resources_json)?;
    spec_check::check_resources("resources", &res)?;
    let cg = state.container(id)?.cgroup()?;
    blocking(move || {
        cg.apply(&ControllerOpt {
            resources: &res,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| ContainerError::Cgroup("applying resources", Box::new(e)))
    })
    .await
}

pub async fn pause_container(state: &Arc<AgentState>, id: &str) -> Result<(), ContainerError> {
    state.container(id)?;
    let st = state.clone();
    let id = id.to_string();
    blocking(move || {
        st.load(&id)?
            .pause()
            .map_err(|e| ContainerError::Libcontainer("pausing", e))
    })
    .await
}

pub async fn resume_container(state: &Arc<AgentState>, id: &str) -> Result<(), ContainerError> {
    state.container(id)?;
    let st = state.clone();
    let id = id.to_string();
    blocking(move || {
        st.load(&id)?
            .resume()
            .map_err(|e| ContainerError::Libcontainer("resuming", e))
    })
    .await
}
