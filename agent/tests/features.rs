//! Spec features, exec, tty, cgroup limits and events, against a real agent.

mod common;

use std::time::Duration;

use cocoon_agent_protocol::agent::*;
use cocoon_agent_protocol::stream_header::StreamKind;
use common::*;
use oci_spec::runtime::{
    LinuxBuilder, LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, ProcessBuilder, UserBuilder,
};
use tokio::io::AsyncReadExt;

const T: Duration = Duration::from_secs(15);

fn creq(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_cwd_and_user_applied() {
    let a = Agent::start().await;
    let mut spec = a.spec("u", &["sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G"]);
    let p = spec.process_mut().as_mut().unwrap();
    p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar".into()]));
    p.set_cwd("/tmp".into());
    p.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1001u32)
            .additional_gids(vec![2000u32])
            .build()
            .unwrap(),
    );
    let (st, out, err) = a.run("u", &spec).await;
    assert_eq!(st, 0, "stderr: {err}");
    assert_eq!(out, "bar\n/tmp\n1000\n1001\n1001 2000\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_refuses_writes() {
    let a = Agent::start().await;
    let mut spec = a.spec("ro", &["sh", "-c", "touch /newfile"]);
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let (st, _, err) = a.run("ro", &spec).await;
    assert_ne!(st, 0);
    assert!(err.contains("Read-only file system"), "stderr: {err}");
}

/// A profile that allows everything but mkdir/mkdirat (EPERM).
fn deny_mkdir() -> oci_spec::runtime::LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(1u32)
            .build()
            .unwrap()])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_is_applied() {
    let a = Agent::start().await;
    let mut spec = a.spec("sc", &["sh", "-c", "mkdir /tmp/d"]);
    let seccomp = deny_mkdir();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(seccomp));
    spec.set_linux(Some(linux));
    let (st, _, err) = a.run("sc", &spec).await;
    assert_ne!(st, 0);
    assert!(err.contains("Operation not permitted"), "stderr: {err}");
}

/// Runs `args` as exec `exec_id` in the running container `id`; returns
/// (exit status, stdout + stderr).
async fn exec_output(a: &Agent, id: &str, exec_id: &str, args: &[&str]) -> (i32, String) {
    let proc = ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .cwd("/")
        .env(vec!["PATH=/bin".to_string()])
        .build()
        .unwrap();
    let mut req = ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.oci_process_json = serde_json::to_vec(&proc).unwrap();
    let mut s = Stdio::new();
    (s.stdout, s.stderr) = (true, true);
    req.stdio = protobuf::MessageField::some(s);
    a.client.exec_process(ctx(), &req).await.unwrap();
    let out = a.stream(id, exec_id, StreamKind::Stdout).await;
    let err = a.stream(id, exec_id, StreamKind::Stderr).await;
    let (o, e) = tokio::join!(read_all(out), read_all(err));
    let status = a.wait(id, exec_id).await.unwrap().exit_status;
    (status, o + &e)
}

/// A status line of /proc/self/status as a process of the container sees it.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status:?}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_covers_exec_processes() {
    // libcontainer leaves the container's profile out of an exec's spec:
    // the agent loads it itself (exec_seccomp), also for a process without
    // noNewPrivileges and without CAP_SYS_ADMIN, which must not keep the
    // CAP_SYS_ADMIN it is lent for loading the filter.
    let a = Agent::start().await;
    let mut spec = a.spec("sx", &["sleep", "100"]);
    let seccomp = deny_mkdir();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(seccomp));
    spec.set_linux(Some(linux));
    let p = spec.process_mut().as_mut().unwrap();
    p.set_no_new_privileges(None);
    a.create("sx", &spec, (false, false, false)).await.unwrap();
    a.start_c("sx").await.unwrap();

    let (st, init) = exec_output(&a, "sx", "e0", &["cat", "/proc/1/status"]).await;
    assert_eq!(st, 0, "{init}");
    assert_eq!(status_field(&init, "Seccomp:"), "2", "the init: {init}");

    let (st, out) = exec_output(&a, "sx", "e1", &["mkdir", "/tmp/d"]).await;
    assert_ne!(st, 0, "mkdir succeeded in an exec: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");

    let (st, status) = exec_output(&a, "sx", "e2", &["cat", "/proc/self/status"]).await;
    assert_eq!(st, 0, "{status}");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            status_field(&status, key),
            status_field(&init, key),
            "{key} of the exec differs from the init's"
        );
    }
    a.remove("sx").await.unwrap();
}

/// A CRI container's spec: the pod annotations and host paths (which mean
/// nothing in the guest) for the namespaces it shares with its sandbox.
fn cri_container_spec(
    a: &Agent,
    name: &str,
    sandbox: &str,
    args: &[&str],
) -> oci_spec::runtime::Spec {
    let mut spec = a.spec(name, args);
    spec.set_annotations(Some(
        [
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-id", sandbox),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    ));
    let mut linux = spec.linux().clone().unwrap();
    let nss = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|mut ns| {
            let kind = match ns.typ() {
                LinuxNamespaceType::Pid => "pid",
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Uts => "uts",
                _ => return ns,
            };
            ns.set_path(Some(format!("/proc/999999999/ns/{kind}").into()));
            ns
        })
        .collect();
    linux.set_namespaces(Some(nss));
    spec.set_linux(Some(linux));
    spec
}

fn ns_of(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_its_pid_ipc_and_uts_namespaces() {
    let a = Agent::start().await;
    let mut sandbox = a.spec("pod", &["sleep", "100"]);
    sandbox.set_hostname(Some("pod-host".into()));
    let sandbox_pid = a
        .create("pod", &sandbox, (false, false, false))
        .await
        .unwrap()
        .pid;
    a.start_c("pod").await.unwrap();

    let spec = cri_container_spec(
        &a,
        "app",
        "pod",
        &["sh", "-c", "hostname; for n in ipc uts pid; do readlink /proc/self/ns/$n; done; cat /proc/1/cmdline; echo"],
    );
    let (st, out, err) = a.run("app", &spec).await;
    assert_eq!(st, 0, "stderr: {err}");
    let want = format!(
        "pod-host\n{}\n{}\n{}\nsleep\u{0}100\u{0}\n",
        ns_of(sandbox_pid, "ipc"),
        ns_of(sandbox_pid, "uts"),
        ns_of(sandbox_pid, "pid"),
    );
    assert_eq!(out, want, "the container is not in its pod's namespaces");

    // A sandbox this guest does not have is named, not replaced by fresh
    // namespaces.
    let spec = cri_container_spec(&a, "orphan", "no-such-pod", &["true"]);
    let (code, msg) = code_of(
        a.create("orphan", &spec, (false, false, false))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("no-such-pod"), "{msg}");
    a.remove("pod").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_port_of_the_pod() {
    use cocoon_agent_protocol::address::{open_stream, AddressError};
    use cocoon_agent_protocol::stream_header::{AttachStatus, StreamHeader};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Agent::start().await;
    // The pod's network namespace is the agent's (on the host here, the
    // guest's in a VM): the container shares it and listens on loopback.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut spec = a.spec(
        "fwd",
        &[
            "sh",
            "-c",
            &format!("echo pong | nc -l -p {port} 127.0.0.1"),
        ],
    );
    let mut linux = spec.linux().clone().unwrap();
    let nss = linux.namespaces().clone().unwrap();
    linux.set_namespaces(Some(
        nss.into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Network)
            .collect(),
    ));
    spec.set_linux(Some(linux));
    a.create("fwd", &spec, (false, true, false)).await.unwrap();
    let out = a.stream("fwd", "", StreamKind::Stdout).await;
    a.start_c("fwd").await.unwrap();

    // Nothing listens on port 1; an unknown pod is refused.
    let refused = |r: Result<_, AddressError>| match r {
        Err(AddressError::Refused(s)) => s,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(
        refused(open_stream(&a.streams, &StreamHeader::port_forward("fwd", 1)).await),
        AttachStatus::Unreachable
    );
    assert_eq!(
        refused(open_stream(&a.streams, &StreamHeader::port_forward("nope", port)).await),
        AttachStatus::NoSuchProcess
    );
    let mut conn = None;
    for _ in 0..100 {
        match open_stream(&a.streams, &StreamHeader::port_forward("fwd", port)).await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut conn = conn.expect("the forwarded port never accepted");
    conn.write_all(b"ping\n").await.unwrap();
    // The reply before our EOF: busybox nc exits at the peer's EOF, and
    // may do so before it has sent what it read from its stdin.
    let mut pong = [0u8; 5];
    conn.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong\n");
    conn.shutdown().await.unwrap();
    assert_eq!(read_all(conn).await, "");
    assert_eq!(read_all(out).await, "ping\n");
    a.wait("fwd", "").await.unwrap();
    a.remove("fwd").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_running_container() {
    let a = Agent::start().await;
    a.create(
        "ex",
        &a.spec("ex", &["sleep", "100"]),
        (false, false, false),
    )
    .await
    .unwrap();
    a.start_c("ex").await.unwrap();
    let proc = ProcessBuilder::default()
        .args(vec![
            "sh".into(),
            "-c".into(),
            "echo inside $(hostname); exit 5".into(),
        ])
        .cwd("/")
        .env(vec!["PATH=/bin".to_string()])
        .build()
        .unwrap();
    let mut req = ExecProcessRequest::new();
    req.container_id = "ex".into();
    req.exec_id = "e1".into();
    req.oci_process_json = serde_json::to_vec(&proc).unwrap();
    let mut s = Stdio::new();
    s.stdout = true;
    req.stdio = protobuf::MessageField::some(s);
    a.client.exec_process(ctx(), &req).await.unwrap();
    let out = a.stream("ex", "e1", StreamKind::Stdout).await;
    assert!(read_all(out).await.starts_with("inside"));
    assert_eq!(a.wait("ex", "e1").await.unwrap().exit_status, 5);
    // The exec id is taken; the init is unaffected.
    assert_eq!(
        code_of(a.client.exec_process(ctx(), &req).await.unwrap_err()).0,
        ttrpc::Code::ALREADY_EXISTS
    );
    let list = a.client.list_processes(ctx(), &creq("ex")).await.unwrap();
    assert_eq!(list.processes.len(), 1);
    a.remove("ex").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_with_resize() {
    let a = Agent::start().await;
    let mut spec = a.spec("tty", &["sh", "-c", "read x; stty size; exit 0"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_terminal(Some(true));
    a.create("tty", &spec, (false, false, false)).await.unwrap();
    let mut tty = a.stream("tty", "", StreamKind::Tty).await;
    a.start_c("tty").await.unwrap();
    let mut req = ResizeTtyRequest::new();
    req.container_id = "tty".into();
    req.rows = 42;
    req.columns = 117;
    a.client.resize_tty(ctx(), &req).await.unwrap();
    write_all(&mut tty, b"go\n").await;
    read_until(&mut tty, "42 117", T).await;
    assert_eq!(a.wait("tty", "").await.unwrap().exit_status, 0);
    a.remove("tty").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kill_and_event() {
    let a = Agent::start().await;
    let mut spec = a.spec(
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(16i64 << 20)
                .swap(16i64 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
    a.create("oom", &spec, (false, false, false)).await.unwrap();
    a.start_c("oom").await.unwrap();
    assert_eq!(a.wait("oom", "").await.unwrap().exit_status, 137);
    let ev = tokio::time::timeout(T, a.client.get_oom_event(ctx(), &GetOOMEventRequest::new()))
        .await
        .expect("an OOM event")
        .unwrap();
    assert_eq!(ev.container_id, "oom");
    a.remove("oom").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_holds() {
    let a = Agent::start().await;
    let mut spec = a.spec("pids", &["sleep", "100"]);
    let res = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(5i64).build().unwrap())
        .build()
        .unwrap();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
    a.create("pids", &spec, (false, false, false))
        .await
        .unwrap();
    a.start_c("pids").await.unwrap();
    // An exec that tries to start ten more processes.
    let proc = ProcessBuilder::default()
        .args(vec![
            "sh".into(),
            "-c".into(),
            "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; echo all".into(),
        ])
        .cwd("/")
        .env(vec!["PATH=/bin".to_string()])
        .build()
        .unwrap();
    let mut req = ExecProcessRequest::new();
    req.container_id = "pids".into();
    req.exec_id = "forker".into();
    req.oci_process_json = serde_json::to_vec(&proc).unwrap();
    let mut s = Stdio::new();
    s.stdout = true;
    s.stderr = true;
    req.stdio = protobuf::MessageField::some(s);
    a.client.exec_process(ctx(), &req).await.unwrap();
    let out = a.stream("pids", "forker", StreamKind::Stdout).await;
    let err = a.stream("pids", "forker", StreamKind::Stderr).await;
    let status = a.wait("pids", "forker").await.unwrap().exit_status;
    let stats = a
        .client
        .stats_container(ctx(), &creq("pids"))
        .await
        .unwrap();
    assert!(
        stats.pids.current <= 5,
        "pids.current = {}",
        stats.pids.current
    );
    assert_eq!(stats.pids.limit, 5);
    let list = a.client.list_processes(ctx(), &creq("pids")).await.unwrap();
    assert!(list.processes.len() <= 5);
    a.remove("pids").await.unwrap();
    let (out, err) = (read_all(out).await, read_all(err).await);
    assert_ne!(status, 0, "all forks succeeded: {out}");
    assert!(err.contains("fork"), "stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_progress_and_resume_continues() {
    let a = Agent::start().await;
    let spec = a.spec(
        "tick",
        &["sh", "-c", "while true; do echo tick; sleep 0.02; done"],
    );
    a.create("tick", &spec, (false, true, false)).await.unwrap();
    let mut out = a.stream("tick", "", StreamKind::Stdout).await;
    a.start_c("tick").await.unwrap();
    read_until(&mut out, "tick", T).await;
    a.client
        .pause_container(ctx(), &creq("tick"))
        .await
        .unwrap();
    // Drain what was written before the freeze, then expect silence.
    let mut buf = [0u8; 4096];
    while tokio::time::timeout(Duration::from_millis(100), out.read(&mut buf))
        .await
        .is_ok()
    {}
    let quiet = tokio::time::timeout(Duration::from_millis(400), out.read(&mut buf)).await;
    assert!(quiet.is_err(), "a paused container produced output");
    a.client
        .resume_container(ctx(), &creq("tick"))
        .await
        .unwrap();
    read_until(&mut out, "tick", T).await;
    let stats = a
        .client
        .stats_container(ctx(), &creq("tick"))
        .await
        .unwrap();
    assert!(stats.cpu.usage_usec > 0);
    assert!(stats.memory.usage_bytes > 0);
    assert!(stats.pids.current > 0);
    a.remove("tick").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_container_resources() {
    let a = Agent::start().await;
    a.create(
        "up",
        &a.spec("up", &["sleep", "100"]),
        (false, false, false),
    )
    .await
    .unwrap();
    a.start_c("up").await.unwrap();
    let mut req = UpdateContainerRequest::new();
    req.container_id = "up".into();
    req.linux_resources_json = br#"{"pids":{"limit":7}}"#.to_vec();
    a.client.update_container(ctx(), &req).await.unwrap();
    let stats = a.client.stats_container(ctx(), &creq("up")).await.unwrap();
    assert_eq!(stats.pids.limit, 7);
    req.linux_resources_json = br#"{"pids":{"limit":0}}"#.to_vec();
    let (code, msg) = code_of(a.client.update_container(ctx(), &req).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert!(msg.contains("resources.pids.limit"), "{msg}");
    a.remove("up").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_leaves_nothing_behind() {
    let a = Agent::start().await;
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let spec = a.spec("rm", &["sh", "-c", "sleep 100 & sleep 100"]);
    let pid = a
        .create("rm", &spec, (false, false, false))
        .await
        .unwrap()
        .pid as i32;
    a.start_c("rm").await.unwrap();
    let cg = format!("{}/rm", a.cgroup_parent);
    assert!(cgroup_exists(&cg));
    a.remove("rm").await.unwrap();
    assert!(!cgroup_exists(&cg), "cgroup {cg} left behind");
    // SAFETY: kill with signal 0 only probes for existence.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "init still alive");
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert_eq!(mounts_before, mounts_after);
    assert!(!a.dir.path().join("state/bundles/rm").exists());
    assert!(!a.dir.path().join("state/containers/rm").exists());
    let (code, _) = code_of(a.wait("rm", "").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_real_codes() {
    let a = Agent::start().await;
    let expect = |r: ttrpc::Error, code: ttrpc::Code, field: &str| {
        let (c, msg) = code_of(r);
        assert_eq!(c, code, "{msg}");
        assert!(msg.contains(field), "{msg:?} does not name {field}");
    };
    // Malformed JSON, a wrongly typed field, missing parts, bad values.
    let mut req = CreateContainerRequest::new();
    req.container_id = "bad".into();
    req.oci_spec_json = b"{not json".to_vec();
    expect(
        a.client.create_container(ctx(), &req).await.unwrap_err(),
        ttrpc::Code::INVALID_ARGUMENT,
        "spec",
    );
    req.oci_spec_json = br#"{"ociVersion":"1.0.2","process":{"args":"sh","cwd":"/"}}"#.to_vec();
    expect(
        a.client.create_container(ctx(), &req).await.unwrap_err(),
        ttrpc::Code::INVALID_ARGUMENT,
        "spec.process.args",
    );
    let mut spec = a.spec("bad", &["sh"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_cwd("relative".into());
    expect(
        a.create("bad", &spec, (false, false, false))
            .await
            .unwrap_err(),
        ttrpc::Code::INVALID_ARGUMENT,
        "process.cwd",
    );
    let mut spec = a.spec("bad", &["sh"]);
    spec.set_linux(Some(LinuxBuilder::default().build().unwrap()));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-7i64).build().unwrap())
            .build()
            .unwrap(),
    ));
    spec.set_linux(Some(linux));
    expect(
        a.create("bad", &spec, (false, false, false))
            .await
            .unwrap_err(),
        ttrpc::Code::INVALID_ARGUMENT,
        "linux.resources.memory.limit",
    );
    expect(
        a.create("../x", &a.spec("x", &["sh"]), (false, false, false))
            .await
            .unwrap_err(),
        ttrpc::Code::INVALID_ARGUMENT,
        "container id",
    );
    // Unknown ids, a second create, out-of-order calls.
    expect(
        a.start_c("nope").await.unwrap_err(),
        ttrpc::Code::NOT_FOUND,
        "nope",
    );
    expect(
        a.signal("nope", "", 9).await.unwrap_err(),
        ttrpc::Code::NOT_FOUND,
        "nope",
    );
    a.create(
        "dup",
        &a.spec("dup", &["sleep", "100"]),
        (false, false, false),
    )
    .await
    .unwrap();
    expect(
        a.create("dup", &a.spec("dup2", &["sh"]), (false, false, false))
            .await
            .unwrap_err(),
        ttrpc::Code::ALREADY_EXISTS,
        "dup",
    );
    expect(
        a.signal("dup", "", 999).await.unwrap_err(),
        ttrpc::Code::INVALID_ARGUMENT,
        "signal",
    );
    expect(
        a.wait("dup", "nosuchexec").await.unwrap_err(),
        ttrpc::Code::NOT_FOUND,
        "nosuchexec",
    );
    let mut rz = ResizeTtyRequest::new();
    rz.container_id = "dup".into();
    expect(
        a.client.resize_tty(ctx(), &rz).await.unwrap_err(),
        ttrpc::Code::FAILED_PRECONDITION,
        "terminal",
    );
    a.start_c("dup").await.unwrap();
    expect(
        a.start_c("dup").await.unwrap_err(),
        ttrpc::Code::FAILED_PRECONDITION,
        "already started",
    );
    a.remove("dup").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_containers_without_cross_talk() {
    let a = std::sync::Arc::new(Agent::start().await);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("c{i}");
            let script = format!("for n in 1 2 3 4 5; do echo {id}; done; sleep 100");
            a.create(
                &id,
                &a.spec(&id, &["sh", "-c", &script]),
                (false, true, false),
            )
            .await
            .unwrap();
            let out = a.stream(&id, "", StreamKind::Stdout).await;
            a.start_c(&id).await.unwrap();
            (id, out)
        }));
    }
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await.unwrap());
    }
    // Each sees exactly its own output.
    for (id, out) in outs.iter_mut() {
        let want = format!("{id}\n").repeat(5);
        let got = read_until(out, &want, T).await;
        assert_eq!(got, want, "output of {id}");
    }
    // Kill only c3: it alone exits; then kill the rest.
    a.signal("c3", "", 9).await.unwrap();
    assert_eq!(a.wait("c3", "").await.unwrap().exit_status, 137);
    for (id, _) in &outs {
        if id != "c3" {
            let w = tokio::time::timeout(Duration::from_millis(50), a.wait(id, "")).await;
            assert!(w.is_err(), "{id} exited after c3 was killed");
            a.signal(id, "", 9).await.unwrap();
        }
    }
    for (id, out) in outs {
        assert_eq!(read_all(out).await, "", "late output of {id}");
        a.remove(&id).await.unwrap();
    }
}

/// CreateSandbox reseeds the guest's RNG (clones of one VM snapshot share
/// its state) before anything else: without host entropy, or with too
/// little or too much, it is refused, naming the field, and sets nothing
/// up. With 64 bytes it succeeds: RNDADDENTROPY and RNDRESEEDCRNG really
/// run, on the host kernel here, which more entropy never harms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sandbox_requires_host_entropy() {
    let a = Agent::start().await;
    let sandbox_dir = a.dir.path().join("state").join("sandbox");
    for len in [0, 1, 31, 4097] {
        let mut req = sandbox_request("e");
        req.hostname = "entropy-test".into();
        req.entropy.resize(len, 0x5a);
        let (code, msg) = code_of(a.create_sandbox(&req).await.unwrap_err());
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{len} bytes: {msg}");
        assert!(
            msg.contains(&format!("entropy: {len} bytes")),
            "{len} bytes: {msg}"
        );
        assert!(
            !sandbox_dir.exists(),
            "{len} bytes: the sandbox was set up before its entropy was checked"
        );
    }
    let mut req = sandbox_request("e");
    req.hostname = "entropy-test".into();
    a.create_sandbox(&req)
        .await
        .expect("CreateSandbox with 64 bytes of entropy");
    let hostname = std::fs::read_to_string(sandbox_dir.join("hostname")).unwrap();
    assert_eq!(hostname, "entropy-test\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_sandbox_removes_containers_and_the_cgroup_parent() {
    let a = Agent::start().await;
    let pid = a
        .create("d", &a.spec("d", &["sleep", "100"]), (false, false, false))
        .await
        .unwrap()
        .pid as i32;
    a.start_c("d").await.unwrap();
    assert!(cgroup_exists(&a.cgroup_parent));
    a.client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .unwrap();
    // The agent owns the parent: gone with the last container it held.
    assert!(
        !cgroup_exists(&a.cgroup_parent),
        "cgroup parent {} left behind",
        a.cgroup_parent
    );
    // SAFETY: kill with signal 0 only probes for existence.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "init still alive");
    let (code, _) = code_of(a.wait("d", "").await.unwrap_err());
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
}
