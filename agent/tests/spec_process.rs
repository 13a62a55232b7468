//! The process and isolation parts of the OCI spec, seen from inside the
//! container: user namespace mappings, capabilities (ambient included),
//! rlimits, no_new_privileges, oom_score_adj, hostname, sysctl, masked and
//! readonly paths.

mod common;

use common::*;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, PosixRlimitBuilder, PosixRlimitType, Spec, UserBuilder,
};

/// A `Name:\tvalue` line of /proc/self/status as printed by `cat`.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

fn caps(list: &[Capability]) -> std::collections::HashSet<Capability> {
    list.iter().copied().collect()
}

fn set_caps(spec: &mut Spec, set: &[Capability], ambient: &[Capability]) {
    let c = LinuxCapabilitiesBuilder::default()
        .bounding(caps(set))
        .effective(caps(set))
        .permitted(caps(set))
        .inheritable(caps(ambient))
        .ambient(caps(ambient))
        .build()
        .unwrap();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_capabilities(Some(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_exactly_the_spec() {
    let a = Agent::start().await;
    // Root: effective = the spec's set (CAP_CHOWN is bit 0, NET_BIND_SERVICE bit 10).
    let mut spec = a.spec("caps", &["cat", "/proc/self/status"]);
    set_caps(
        &mut spec,
        &[Capability::Chown, Capability::NetBindService],
        &[],
    );
    let (st, out, err) = a.run("caps", &spec).await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000401");
    assert_eq!(status_field(&out, "CapBnd"), "0000000000000401");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambient_capabilities_reach_a_non_root_process() {
    let a = Agent::start().await;
    let mut spec = a.spec("amb", &["cat", "/proc/self/status"]);
    set_caps(
        &mut spec,
        &[Capability::Chown, Capability::NetBindService],
        &[Capability::NetBindService],
    );
    let p = spec.process_mut().as_mut().unwrap();
    p.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .unwrap(),
    );
    let (st, out, err) = a.run("amb", &spec).await;
    assert_eq!(st, 0, "{err}");
    // Without ambient capabilities uid 1000 would have none at all.
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000400");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000400");
    assert_eq!(status_field(&out, "Uid"), "1000\t1000\t1000\t1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimits_nnp_and_oom_score_adj() {
    let a = Agent::start().await;
    let mut spec = a.spec(
        "lim",
        &[
            "sh",
            "-c",
            "ulimit -n; cat /proc/self/oom_score_adj /proc/self/status",
        ],
    );
    let p = spec.process_mut().as_mut().unwrap();
    p.set_rlimits(Some(vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(123u64)
        .hard(456u64)
        .build()
        .unwrap()]));
    p.set_no_new_privileges(Some(true));
    p.set_oom_score_adj(Some(500));
    let (st, out, err) = a.run("lim", &spec).await;
    assert_eq!(st, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("123"), "{out}");
    assert_eq!(lines.next(), Some("500"), "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_sysctl_masked_and_readonly_paths() {
    let a = Agent::start().await;
    let mut spec = a.spec(
        "iso",
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/hostname /proc/sys/net/ipv4/ip_forward; \
             echo masked:$(cat /proc/version 2>&1 | wc -c); \
             echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo rw || echo ro",
        ],
    );
    spec.set_hostname(Some("cocoon-box".into()));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some(
        [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
    ));
    linux.set_masked_paths(Some(vec!["/proc/version".into()]));
    linux.set_readonly_paths(Some(vec!["/proc/sys".into()]));
    spec.set_linux(Some(linux));
    let (st, out, err) = a.run("iso", &spec).await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(out, "cocoon-box\n1\nmasked:0\nro\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_maps_root_to_an_unprivileged_range() {
    let a = Agent::start().await;
    let mut spec = a.spec(
        "userns",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g",
        ],
    );
    let mut linux = spec.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    ns.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(ns));
    let map = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(100000u32)
        .size(65536u32)
        .build()
        .unwrap();
    linux.set_uid_mappings(Some(vec![map]));
    linux.set_gid_mappings(Some(vec![map]));
    spec.set_linux(Some(linux));
    let (st, out, err) = a.run("userns", &spec).await;
    assert_eq!(st, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "100000", "65536", "0", "100000", "65536", "0", "0"],
        "{out}"
    );
}
