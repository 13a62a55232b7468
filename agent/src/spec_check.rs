//! Checks and rewrites the OCI documents the shim sends, before libcontainer
//! sees them. Every refusal names the offending field.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::de::DeserializeOwned;

/// Largest OCI document accepted (ttrpc frames are at most 4 MiB anyway).
pub const MAX_DOC_LEN: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid spec: {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("unsupported spec: {field}: {reason}")]
    Unsupported { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses JSON, naming the field (`linux.resources.memory.limit`) on error.
pub fn parse<T: DeserializeOwned>(what: &str, json: &[u8]) -> Result<T, SpecError> {
    if json.len() > MAX_DOC_LEN {
        return Err(invalid(what, "larger than 1 MiB"));
    }
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            what.to_string()
        } else {
            format!("{what}.{path}")
        };
        invalid(field, e.inner().to_string())
    })
}

/// How the agent places containers.
pub struct Placement<'a> {
    pub container_id: &'a str,
    pub share_dir: &'a Path,
    pub cgroup_parent: &'a Path,
    pub terminal: bool,
}

/// Validates a container spec and rewrites the parts that belong to the
/// guest: rootfs path, cgroups path, host-only fields.
pub fn check_spec(mut spec: Spec, place: &Placement<'_>) -> Result<Spec, SpecError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing"))?;
    check_process("process", process)?;
    if process.terminal().unwrap_or(false) != place.terminal {
        return Err(invalid(
            "process.terminal",
            "does not match the request's terminal flag",
        ));
    }

    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "missing"))?;
    let mut root_path = root.path().clone();
    if root_path.is_relative() {
        root_path = place.share_dir.join(place.container_id).join(root_path);
    }
    if !root_path.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} is not a directory", root_path.display()),
        ));
    }
    let mut root = root.clone();
    root.set_path(root_path);
    spec.set_root(Some(root));

    // Hooks name host binaries; there is nothing to run them with here.
    if spec.hooks().is_some() {
        tracing::warn!(
            id = place.container_id,
            "ignoring hooks: they name host paths"
        );
        spec.set_hooks(None);
    }

    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| invalid("linux", "missing"))?;
    if linux.intel_rdt().is_some() {
        return Err(unsupported("linux.intelRdt", "no RDT in the guest"));
    }
    if linux.memory_policy().is_some() {
        return Err(unsupported(
            "linux.memoryPolicy",
            "not supported by the agent",
        ));
    }
    if let Some(p) = linux.rootfs_propagation().clone() {
        linux.set_rootfs_propagation(Some(rootfs_propagation(&p)?.to_string()));
    }
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if let Some(p) = ns.path() {
            if !p.exists() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    format!("{} does not exist in the guest", p.display()),
                ));
            }
        }
    }
    if let Some(res) = linux.resources() {
        check_resources("linux.resources", res)?;
    }
    let cgroup = Path::new("/")
        .join(
            place
                .cgroup_parent
                .strip_prefix("/")
                .unwrap_or(place.cgroup_parent),
        )
        .join(place.container_id);
    linux.set_cgroups_path(Some(cgroup));

    if let Some(p) = spec.process_mut().as_mut() {
        // No LSM in the guest kernel.
        if p.apparmor_profile().is_some() {
            p.set_apparmor_profile(None);
        }
        if p.selinux_label().is_some() {
            p.set_selinux_label(None);
        }
    }
    Ok(spec)
}

/// `linux.rootfsPropagation` as libcontainer takes it. runc and containerd
/// use mount(8)'s names, recursive ones included (CRI sets `rslave` for a
/// HostToContainer mount, `rshared` for a Bidirectional one); libcontainer
/// knows only the plain names and always applies them recursively, so an
/// `rslave` would fail the container's start with "failed to prepare rootfs".
fn rootfs_propagation(p: &str) -> Result<&'static str, SpecError> {
    Ok(match p {
        "shared" | "rshared" => "shared",
        "slave" | "rslave" => "slave",
        "private" | "rprivate" => "private",
        "unbindable" | "runbindable" => "unbindable",
        other => {
            return Err(invalid(
                "linux.rootfsPropagation",
                format!("{other:?} is not a mount propagation (shared, slave, private, unbindable, or their r- forms)"),
            ))
        }
    })
}

/// Validates a process (a spec's or an exec's).
pub fn check_process(field: &str, p: &Process) -> Result<(), SpecError> {
    match p.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => return Err(invalid(format!("{field}.args"), "empty")),
    }
    if !p.cwd().is_absolute() {
        return Err(invalid(format!("{field}.cwd"), "must be an absolute path"));
    }
    for (i, e) in p.env().iter().flatten().enumerate() {
        if !e.contains('=') {
            return Err(invalid(format!("{field}.env[{i}]"), "expected KEY=VALUE"));
        }
    }
    if let Some(adj) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(
                format!("{field}.oomScoreAdj"),
                "outside -1000..=1000",
            ));
        }
    }
    Ok(())
}

/// Validates cgroup resources (a spec's or an update's).
pub fn check_resources(field: &str, r: &LinuxResources) -> Result<(), SpecError> {
    let limit = |name: &str, v: Option<i64>| -> Result<(), SpecError> {
        match v {
            Some(v) if v <= 0 && v != -1 => Err(invalid(
                format!("{field}.{name}"),
                "must be positive, or -1 for no limit",
            )),
            _ => Ok(()),
        }
    };
    if let Some(m) = r.memory() {
        limit("memory.limit", m.limit())?;
        limit("memory.swap", m.swap())?;
        limit("memory.reservation", m.reservation())?;
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return Err(invalid(
                    format!("{field}.memory.swap"),
                    "memory+swap limit is below the memory limit",
                ));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            if !(2..=262_144).contains(&s) {
                return Err(invalid(format!("{field}.cpu.shares"), "outside 2..=262144"));
            }
        }
        if let Some(p) = c.period() {
            if !(1_000..=1_000_000).contains(&p) {
                return Err(invalid(
                    format!("{field}.cpu.period"),
                    "outside 1000..=1000000 us",
                ));
            }
        }
        if let Some(q) = c.quota() {
            if q <= 0 && q != -1 {
                return Err(invalid(
                    format!("{field}.cpu.quota"),
                    "must be positive, or -1",
                ));
            }
        }
        if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
            return Err(unsupported(
                format!("{field}.cpu.realtimeRuntime"),
                "realtime scheduling is not available with cgroup v2",
            ));
        }
    }
    if let Some(p) = r.pids() {
        limit("pids.limit", Some(p.limit()))?;
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            if !(10..=1000).contains(&w) {
                return Err(invalid(
                    format!("{field}.blockIO.weight"),
                    "outside 10..=1000",
                ));
            }
        }
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(unsupported(format!("{field}.rdma"), "no RDMA in the guest"));
    }
    Ok(())
}

/// The absolute cgroup path of a container under `parent`.
pub fn cgroup_path(parent: &Path, id: &str) -> PathBuf {
    Path::new("/")
        .join(parent.strip_prefix("/").unwrap_or(parent))
        .join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(dir: &Path) -> Placement<'_> {
        Placement {
            container_id: "c1",
            share_dir: dir,
            cgroup_parent: Path::new("/cocoon"),
            terminal: false,
        }
    }

    fn spec_with_root(root: &Path) -> Spec {
        let mut s = Spec::default();
        let mut r = s.root().clone().unwrap();
        r.set_path(root.to_path_buf());
        s.set_root(Some(r));
        s
    }

    fn field_of(e: SpecError) -> String {
        match e {
            SpecError::Invalid { field, .. } | SpecError::Unsupported { field, .. } => field,
        }
    }

    #[test]
    fn rewrites_root_and_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("c1/rootfs")).unwrap();
        let spec = check_spec(Spec::default(), &place(dir.path())).unwrap();
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            &dir.path().join("c1/rootfs")
        );
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/cocoon/c1"))
        );
    }

    #[test]
    fn names_the_bad_field() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_spec(Spec::default(), &place(dir.path())).unwrap_err();
        assert_eq!(field_of(e), "root.path");

        let mut s = spec_with_root(dir.path());
        s.process_mut().as_mut().unwrap().set_args(Some(vec![]));
        assert_eq!(
            field_of(check_spec(s, &place(dir.path())).unwrap_err()),
            "process.args"
        );

        let mut s = spec_with_root(dir.path());
        s.process_mut().as_mut().unwrap().set_terminal(Some(true));
        assert_eq!(
            field_of(check_spec(s, &place(dir.path())).unwrap_err()),
            "process.terminal"
        );

        let json = br#"{"ociVersion":"1.0.2","linux":{"resources":{"memory":{"limit":"lots"}}}}"#;
        let e = parse::<Spec>("spec", json).unwrap_err();
        assert_eq!(field_of(e), "spec.linux.resources.memory.limit");

        let json = br#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"bogus"}]}}"#;
        let e = parse::<Spec>("spec", json).unwrap_err();
        assert!(field_of(e).starts_with("spec.linux.namespaces"));
    }

    #[test]
    fn rootfs_propagation_takes_mount8_names() {
        let dir = tempfile::tempdir().unwrap();
        for (given, want) in [
            ("rslave", "slave"),
            ("rshared", "shared"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
            ("slave", "slave"),
        ] {
            let mut s = spec_with_root(dir.path());
            let linux = s.linux_mut().as_mut().unwrap();
            linux.set_rootfs_propagation(Some(given.into()));
            let s = check_spec(s, &place(dir.path())).unwrap();
            let got = s.linux().as_ref().unwrap().rootfs_propagation().clone();
            assert_eq!(got.as_deref(), Some(want), "{given}");
        }
        let mut s = spec_with_root(dir.path());
        let linux = s.linux_mut().as_mut().unwrap();
        linux.set_rootfs_propagation(Some("sideways".into()));
        let e = check_spec(s, &place(dir.path())).unwrap_err();
        assert!(e.to_string().contains("\"sideways\""), "{e}");
        assert_eq!(field_of(e), "linux.rootfsPropagation");
    }

    #[test]
    fn resources_ranges() {
        let r: LinuxResources = parse("r", br#"{"memory":{"limit":0}}"#).unwrap();
        assert_eq!(
            field_of(check_resources("r", &r).unwrap_err()),
            "r.memory.limit"
        );
        let r: LinuxResources = parse("r", br#"{"cpu":{"shares":1}}"#).unwrap();
        assert_eq!(
            field_of(check_resources("r", &r).unwrap_err()),
            "r.cpu.shares"
        );
        let r: LinuxResources = parse("r", br#"{"pids":{"limit":-5}}"#).unwrap();
        assert_eq!(
            field_of(check_resources("r", &r).unwrap_err()),
            "r.pids.limit"
        );
        let r: LinuxResources = parse(
            "r",
            br#"{"memory":{"limit":1048576,"swap":-1},"pids":{"limit":-1}}"#,
        )
        .unwrap();
        check_resources("r", &r).unwrap();
    }
}
