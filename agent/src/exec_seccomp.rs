//! The container's seccomp profile for exec'd processes.
//!
//! libcontainer 0.7 builds an exec (a "tenant") from a spec of its own that
//! keeps the container's namespaces and cgroup but not its `linux.seccomp`:
//! without this module every `crictl exec`/`ctr task exec` process would run
//! unfiltered in a container whose profile denies, say, `chmod`. runc and
//! Kata apply the container's profile to exec'd processes too.
//!
//! The helper therefore runs the tenant with [`SeccompExecutor`], which
//! loads the container's profile as the last step before `execvp` (the
//! profile then also covers every process the exec'd one starts).
//! Loading a filter needs `no_new_privs` or `CAP_SYS_ADMIN`. When the
//! process asks for `noNewPrivileges` it has it; otherwise (runc loads the
//! filter before dropping capabilities there) the process is given
//! `CAP_SYS_ADMIN` in its effective and permitted sets only, for the few
//! instructions between loading the filter and `execvp`. `execve` computes
//! the new permitted and effective sets from the bounding, inheritable and
//! ambient sets and the file's capabilities, never from the old permitted
//! set (capabilities(7)); those stay the spec's, so the program runs
//! without it (the agent's tests compare its CapEff/CapPrm with the init's).

use std::path::{Path, PathBuf};

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{Capability as SpecCap, LinuxSeccomp, Process, Spec};

#[derive(Debug, thiserror::Error)]
pub enum ExecSeccompError {
    #[error("reading the container's spec {path}")]
    Spec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("reading the exec's process {path}")]
    ReadProcess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the exec's process {path} is not valid JSON")]
    ParseProcess {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}")]
    WriteProcess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exec's process file and executor: `process_json` unchanged and the
/// default executor when the container has no seccomp profile.
pub struct TenantPlan {
    pub process_json: PathBuf,
    pub executor: SeccompExecutor,
}

/// Plans an exec into the container whose spec is `container_config`: the
/// process file to hand libcontainer (a rewritten copy beside
/// `process_json` when the process needs `CAP_SYS_ADMIN` to load the
/// filter) and the executor that loads it.
pub fn plan(container_config: &Path, process_json: &Path) -> Result<TenantPlan, ExecSeccompError> {
    let spec = Spec::load(container_config).map_err(|source| ExecSeccompError::Spec {
        path: container_config.to_path_buf(),
        source,
    })?;
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
        return Ok(TenantPlan {
            process_json: process_json.to_path_buf(),
            executor: SeccompExecutor::default(),
        });
    };
    let text = std::fs::read(process_json).map_err(|source| ExecSeccompError::ReadProcess {
        path: process_json.to_path_buf(),
        source,
    })?;
    let mut process: Process =
        serde_json::from_slice(&text).map_err(|source| ExecSeccompError::ParseProcess {
            path: process_json.to_path_buf(),
            source,
        })?;
    let raise = grant_sys_admin_for_loading(&mut process);
    let process_json = if raise {
        let path = process_json.with_extension("seccomp.json");
        let json = serde_json::to_vec(&process).expect("a Process serialises");
        std::fs::write(&path, json).map_err(|source| ExecSeccompError::WriteProcess {
            path: path.clone(),
            source,
        })?;
        path
    } else {
        process_json.to_path_buf()
    };
    Ok(TenantPlan {
        process_json,
        executor: SeccompExecutor {
            seccomp: Some(seccomp),
        },
    })
}

/// Adds `CAP_SYS_ADMIN` to the effective and permitted sets of a process
/// that has neither `noNewPrivileges` nor that capability; true if it did.
fn grant_sys_admin_for_loading(process: &mut Process) -> bool {
    if process.no_new_privileges() == Some(true) {
        return false;
    }
    let mut caps = process.capabilities().clone().unwrap_or_default();
    let has = |set: &Option<std::collections::HashSet<SpecCap>>| {
        set.as_ref().is_some_and(|s| s.contains(&SpecCap::SysAdmin))
    };
    if has(caps.effective()) && has(caps.permitted()) {
        return false;
    }
    let mut effective = caps.effective().clone().unwrap_or_default();
    effective.insert(SpecCap::SysAdmin);
    let mut permitted = caps.permitted().clone().unwrap_or_default();
    permitted.insert(SpecCap::SysAdmin);
    caps.set_effective(Some(effective))
        .set_permitted(Some(permitted));
    process.set_capabilities(Some(caps));
    true
}

/// libcontainer's default executor, preceded by loading the container's
/// seccomp profile (if any).
#[derive(Clone, Default)]
pub struct SeccompExecutor {
    seccomp: Option<LinuxSeccomp>,
}

fn failed(what: String) -> ExecutorError {
    ExecutorError::Other(what)
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(seccomp) = &self.seccomp {
            match libcontainer::seccomp::initialize_seccomp(seccomp) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(failed(
                        "the container's seccomp profile asks for a notify listener, \
                         which exec'd processes do not support"
                            .into(),
                    ))
                }
                Err(e) => {
                    return Err(failed(format!(
                        "loading the container's seccomp profile for the exec: {e}"
                    )))
                }
            }
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, ProcessBuilder};

    fn process(nnp: Option<bool>, effective: &[SpecCap]) -> Process {
        let set: std::collections::HashSet<_> = effective.iter().copied().collect();
        let b = ProcessBuilder::default()
            .args(vec!["sh".to_string()])
            .cwd("/")
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(set.clone())
                    .effective(set.clone())
                    .permitted(set)
                    .build()
                    .unwrap(),
            );
        let mut p = b.build().unwrap();
        // (The builder's default is Some(true).)
        p.set_no_new_privileges(nnp);
        p
    }

    #[test]
    fn sys_admin_is_granted_only_for_loading_without_no_new_privs() {
        let mut p = process(None, &[SpecCap::Chown]);
        assert!(grant_sys_admin_for_loading(&mut p));
        let caps = p.capabilities().clone().unwrap();
        for set in [caps.effective(), caps.permitted()] {
            let set = set.as_ref().unwrap();
            assert!(set.contains(&SpecCap::SysAdmin) && set.contains(&SpecCap::Chown));
        }
        // Never the sets that survive execve.
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&SpecCap::SysAdmin));
        assert!(caps
            .inheritable()
            .as_ref()
            .is_none_or(|s| !s.contains(&SpecCap::SysAdmin)));
        assert!(caps
            .ambient()
            .as_ref()
            .is_none_or(|s| !s.contains(&SpecCap::SysAdmin)));

        let mut p = process(Some(false), &[]);
        assert!(grant_sys_admin_for_loading(&mut p));
        let mut p = process(Some(true), &[]);
        assert!(!grant_sys_admin_for_loading(&mut p));
        let mut p = process(None, &[SpecCap::SysAdmin]);
        assert!(!grant_sys_admin_for_loading(&mut p));
    }

    #[test]
    fn without_a_profile_the_process_file_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        let mut spec = Spec::default();
        spec.set_process(Some(process(None, &[])));
        spec.save(&cfg).unwrap();
        let pj = dir.path().join("process.json");
        std::fs::write(&pj, serde_json::to_vec(&process(None, &[])).unwrap()).unwrap();
        let plan = plan(&cfg, &pj).unwrap();
        assert_eq!(plan.process_json, pj);
        assert!(plan.executor.seccomp.is_none());
    }

    #[test]
    fn a_missing_container_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = plan(&dir.path().join("nope.json"), &dir.path().join("p.json"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("nope.json"), "{e}");
    }
}
