//! The whole task service: TaskService + local backend (a real cocoon-agent
//! over Unix sockets) on the host, or real micro-VMs in `make e2e`
//! (`COCOON_SHIM_TEST_BACKEND=vm`), driven through a ttrpc TaskClient.
//! Needs root and `cargo build -p cocoon-agent`.

mod common;

use std::time::Duration;

use common::*;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

/// A last resort around a step: every harness call has its own, named
/// deadline (at most `wait_timeout()`), which fires first.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    let limit = wait_timeout() + Duration::from_secs(10);
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_exit_code_stdout_stderr_and_events() {
    let h = Harness::start().await;
    let (status, out, err) = within(h.run(
        "c1",
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        |_| {},
    ))
    .await;
    assert_eq!(status, 3);
    assert_eq!(out, "to-stdout\n");
    assert_eq!(err, "to-stderr\n");
    let topics = h.events.topics();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{topics:?}"
    );
    let exit = h.events.events.lock().unwrap()[2].1.clone();
    let exit = TaskExit::parse_from_bytes(&exit).unwrap();
    assert_eq!(
        (
            exit.container_id.as_str(),
            exit.id.as_str(),
            exit.exit_status
        ),
        ("c1", "c1", 3)
    );
    assert!(exit.exited_at.seconds > 0);
    h.shutdown().await;
    h.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_not_lost_at_exit() {
    let h = Harness::start().await;
    let (status, out, _) = within(h.run(
        "big",
        &["sh", "-c", "busybox seq 0 19999 | busybox sed s/^/line-/"],
        |_| {},
    ))
    .await;
    assert_eq!(status, 0);
    assert_eq!(out.lines().count(), 20000);
    assert!(
        out.starts_with("line-0\nline-1\n"),
        "{}",
        &out[..out.len().min(40)]
    );
    assert!(out.ends_with("line-19999\n"));
    h.shutdown().await;
    h.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_copied_and_closed_by_close_io() {
    let h = Harness::start().await;
    let bundle = h.bundle("cat", &["cat"], |_| {});
    let (i, o) = (h.fifo("cat.in"), h.fifo("cat.out"));
    within(h.create("cat", &bundle, (&i, &o, ""), false))
        .await
        .unwrap();
    let ro = reader(&o);
    let mut w = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(&i)
        .unwrap();
    h.start_task("cat", "").await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut w, b"hello through stdin\n")
        .await
        .unwrap();
    drop(w);
    let req = CloseIORequest {
        id: "cat".into(),
        stdin: true,
        ..Default::default()
    };
    call("CloseIO cat", h.client.close_io(ctx(), &req))
        .await
        .unwrap();
    let wr = within(h.wait("cat", "")).await.unwrap();
    assert_eq!(wr.exit_status, 0);
    assert_eq!(ro.text().await, "hello through stdin\n");
    h.delete("cat", "").await.unwrap();
    h.shutdown().await;
    h.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_gives_a_tty() {
    let h = Harness::start().await;
    let bundle = h.bundle("tty", &["sh", "-c", "tty; stty size"], |s| {
        s.process_mut().as_mut().unwrap().set_terminal(Some(true));
    });
    let o = h.fifo("tty.out");
    within(h.create("tty", &bundle, ("", &o, ""), true))
        .await
        .unwrap();
    let ro = reader(&o);
    h.start_task("tty", "").await.unwrap();
    let wr = within(h.wait("tty", "")).await.unwrap();
    assert_eq!(wr.exit_status, 0);
    let out = ro.text().await;
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    h.delete("tty", "").await.unwrap();
    h.shutdown().await;
    h.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_kill_pids_state_and_errors() {
    let h = Harness::start().await;
    let bundle = h.bundle("svc", &["sleep", "1000"], |_| {});
    let pid = within(h.create("svc", &bundle, ("", "", ""), false))
        .await
        .unwrap()
        .pid;
    assert!(pid > 0);
    assert_eq!(h.state("svc", "").await.unwrap().status(), Status::CREATED);
    h.start_task("svc", "").await.unwrap();
    let e = h.start_task("svc", "").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
    assert_eq!(h.state("svc", "").await.unwrap().status(), Status::RUNNING);

    // An exec with output.
    let o = h.fifo("exec1.out");
    let process = r#"{"args":["sh","-c","echo from-exec; exit 7"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#;
    let exec = |id: &str, stdout: &str| ExecProcessRequest {
        id: "svc".into(),
        exec_id: id.into(),
        stdout: stdout.into(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: process.as_bytes().to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    call("Exec e1", h.client.exec(ctx(), &exec("e1", &o)))
        .await
        .unwrap();
    let e = call("Exec e1 again", h.client.exec(ctx(), &exec("e1", "")))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::ALREADY_EXISTS);
    // containerd opens its FIFO ends before Start.
    let ro = reader(&o);
    h.start_task("svc", "e1").await.unwrap();
    let w = within(h.wait("svc", "e1")).await.unwrap();
    assert_eq!(w.exit_status, 7);
    assert_eq!(ro.text().await, "from-exec\n");
    let d = h.delete("svc", "e1").await.unwrap();
    assert_eq!(d.exit_status, 7);

    // SIGTERM to a non-init exec process: 128 + 15.
    let sleeper =
        r#"{"args":["sleep","1000"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#;
    let mut req = exec("e2", "");
    req.spec.as_mut().unwrap().value = sleeper.as_bytes().to_vec();
    call("Exec e2", h.client.exec(ctx(), &req)).await.unwrap();
    h.start_task("svc", "e2").await.unwrap();
    let pids = call(
        "Pids svc",
        h.client.pids(
            ctx(),
            &PidsRequest {
                id: "svc".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert!(pids.processes.len() >= 2, "{:?}", pids.processes);
    h.kill("svc", "e2", 15).await.unwrap();
    assert_eq!(within(h.wait("svc", "e2")).await.unwrap().exit_status, 143);
    let e = h.kill("svc", "e2", 15).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
    h.delete("svc", "e2").await.unwrap();

    // Deleting a running init is refused; SIGKILL gives 137.
    let e = h.delete("svc", "").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
    h.kill("svc", "", 9).await.unwrap();
    let w = within(h.wait("svc", "")).await.unwrap();
    assert_eq!(w.exit_status, 137);
    let st = h.state("svc", "").await.unwrap();
    assert_eq!((st.status(), st.exit_status), (Status::STOPPED, 137));
    h.delete("svc", "").await.unwrap();

    // Unknown ids and unimplemented methods.
    let e = h.state("nope", "").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
    let e = call(
        "Checkpoint svc",
        h.client.checkpoint(
            ctx(),
            &CheckpointTaskRequest {
                id: "svc".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::UNIMPLEMENTED);
    let topics = h.events.topics();
    for t in [
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(topics.iter().any(|x| x == t), "{t} missing from {topics:?}");
    }
    h.shutdown().await;
    h.assert_clean();
}

/// Runs `sh -c script` as exec `exec_id` in the running task `id`;
/// returns (exit status, stdout).
async fn exec_sh(h: &Harness, id: &str, exec_id: &str, script: &str) -> (u32, String) {
    let process = serde_json::json!({
        "args": ["sh", "-c", script],
        "cwd": "/",
        "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
    });
    let o = h.fifo(&format!("{id}-{exec_id}.out"));
    let req = ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        stdout: o.clone(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).unwrap(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    call(&format!("Exec {id}/{exec_id}"), h.client.exec(ctx(), &req))
        .await
        .unwrap();
    let ro = reader(&o);
    h.start_task(id, exec_id).await.unwrap();
    let status = h.wait(id, exec_id).await.unwrap().exit_status;
    let out = ro.text().await;
    h.delete(id, exec_id).await.unwrap();
    (status, out)
}

/// The container's own pids and memory limits, read inside it from its
/// cgroup (cgroup v2, or v1's pids and memory controllers).
const READ_LIMITS: &str = "if [ -f /sys/fs/cgroup/cgroup.controllers ]; \
    then cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max; \
    else cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes; fi";

/// Polls `cond` every 50 ms until it holds; fails with `what` after `limit`.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a Pause: waits until `r` has received nothing new for `quiet`
/// (lines written before the freeze may still be on their way); its line
/// count.
async fn settled_lines(r: &Reader, quiet: Duration, limit: Duration) -> usize {
    let deadline = std::time::Instant::now() + limit;
    let mut n = r.so_far().lines().count();
    loop {
        tokio::time::sleep(quiet).await;
        let m = r.so_far().lines().count();
        if m == n {
            return n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ticker kept running while paused: its output still grew after {limit:?} ({m} lines)"
        );
        n = m;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_stats_and_update() {
    let h = Harness::start().await;
    // A ticker: one line every 50 ms while it runs.
    let bundle = h.bundle(
        "p",
        &["sh", "-c", "while :; do echo tick; sleep 0.05; done"],
        |_| {},
    );
    let o = h.fifo("p.out");
    within(h.create("p", &bundle, ("", &o, ""), false))
        .await
        .unwrap();
    let ticks = reader(&o);
    h.start_task("p", "").await.unwrap();
    let lines = || ticks.so_far().lines().count();
    eventually("the ticker's first lines", op_timeout(), || lines() >= 3).await;

    // Paused: State says so and the ticker makes no progress.
    call(
        "Pause p",
        h.client.pause(
            ctx(),
            &PauseRequest {
                id: "p".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(h.state("p", "").await.unwrap().status(), Status::PAUSED);
    // Lines written before the freeze may still be on their way.
    let frozen_at = settled_lines(&ticks, Duration::from_secs(1), op_timeout()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lines(),
        frozen_at,
        "the ticker kept running while paused (2 s after it had settled)"
    );

    // Resumed: State says so and the ticker goes on.
    call(
        "Resume p",
        h.client.resume(
            ctx(),
            &ResumeRequest {
                id: "p".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(h.state("p", "").await.unwrap().status(), Status::RUNNING);
    eventually("the ticker's progress after Resume", op_timeout(), || {
        lines() >= frozen_at + 3
    })
    .await;

    let stats = || async {
        let s = call(
            "Stats p",
            h.client.stats(
                ctx(),
                &StatsRequest {
                    id: "p".into(),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
        let any = s.stats.unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value).unwrap()
    };
    let m = stats().await;
    // sh and its sleep, a few hundred KiB at least.
    assert!(m.pids.current >= 1, "{m:?}");
    assert!(m.memory.usage > 100 << 10, "{m:?}");

    // Update: the new limits are where they take effect, the container's
    // cgroup, as read from inside it (and as Stats reads them), and were
    // not there before.
    const MEM: u64 = 96 << 20;
    let (st, before) = exec_sh(&h, "p", "limits-before", READ_LIMITS).await;
    assert_eq!(st, 0, "{before}");
    assert_ne!(
        before,
        format!("50\n{MEM}\n"),
        "the limits were set already"
    );
    let update = UpdateTaskRequest {
        id: "p".into(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: format!(r#"{{"pids":{{"limit":50}},"memory":{{"limit":{MEM}}}}}"#).into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    call("Update p", h.client.update(ctx(), &update))
        .await
        .unwrap();
    let (st, after) = exec_sh(&h, "p", "limits-after", READ_LIMITS).await;
    assert_eq!((st, after.as_str()), (0, format!("50\n{MEM}\n").as_str()));
    let m = stats().await;
    assert_eq!((m.pids.limit, m.memory.usage_limit), (50, MEM), "{m:?}");

    let c = call(
        "Connect p",
        h.client.connect(
            ctx(),
            &ConnectRequest {
                id: "p".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(c.shim_pid, std::process::id());
    assert!(c.task_pid > 0);
    h.kill("p", "", 9).await.unwrap();
    within(h.wait("p", "")).await.unwrap();
    ticks.text().await;
    h.delete("p", "").await.unwrap();
    let topics = h.events.topics();
    assert!(topics.contains(&"/tasks/paused".to_string()), "{topics:?}");
    assert!(topics.contains(&"/tasks/resumed".to_string()), "{topics:?}");
    h.shutdown().await;
    h.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_env_cwd_and_bind_mounts() {
    let h = Harness::start().await;
    let data = h.dir.path().join("data.txt");
    std::fs::write(&data, "host data\n").unwrap();
    let data2 = data.clone();
    let (status, out, err) = within(h.run(
        "ro",
        &[
            "sh",
            "-c",
            "cat /data.txt; echo $GREETING; pwd; touch /x || echo ro-ok",
        ],
        move |s| {
            let mut r = s.root().clone().unwrap();
            r.set_readonly(Some(true));
            s.set_root(Some(r));
            let p = s.process_mut().as_mut().unwrap();
            p.set_env(Some(vec!["PATH=/bin".into(), "GREETING=hi-env".into()]));
            p.set_cwd("/tmp".into());
            let mut mounts = s.mounts().clone().unwrap();
            let mut m = oci_spec::runtime::Mount::default();
            m.set_destination("/data.txt".into());
            m.set_typ(Some("bind".into()));
            m.set_source(Some(data2));
            m.set_options(Some(vec!["rbind".into(), "ro".into()]));
            mounts.push(m);
            s.set_mounts(Some(mounts));
        },
    ))
    .await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, "host data\nhi-env\n/tmp\nro-ok\n", "{err}");
    h.shutdown().await;
    h.assert_clean();
}

/// `Name:\tvalue` of a /proc/self/status dump.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_ambient_and_user_namespace_reach_the_process() {
    use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder};
    let h = Harness::start().await;
    // Ambient CAP_NET_BIND_SERVICE (bit 10) for uid 1000, inside a user
    // namespace mapping 0..65536 to 100000..
    let (status, out, err) = within(h.run(
        "caps",
        &["sh", "-c", "cat /proc/self/status /proc/self/uid_map"],
        |s| {
            let set = |c: &[Capability]| -> std::collections::HashSet<Capability> {
                c.iter().copied().collect()
            };
            let p = s.process_mut().as_mut().unwrap();
            p.set_capabilities(Some(
                LinuxCapabilitiesBuilder::default()
                    .bounding(set(&[Capability::Chown, Capability::NetBindService]))
                    .effective(set(&[Capability::Chown, Capability::NetBindService]))
                    .permitted(set(&[Capability::Chown, Capability::NetBindService]))
                    .inheritable(set(&[Capability::NetBindService]))
                    .ambient(set(&[Capability::NetBindService]))
                    .build()
                    .unwrap(),
            ));
            p.set_user(
                oci_spec::runtime::UserBuilder::default()
                    .uid(1000u32)
                    .gid(1000u32)
                    .build()
                    .unwrap(),
            );
            let linux = s.linux_mut().as_mut().unwrap();
            let mut ns = linux.namespaces().clone().unwrap_or_default();
            ns.push(
                oci_spec::runtime::LinuxNamespaceBuilder::default()
                    .typ(oci_spec::runtime::LinuxNamespaceType::User)
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
        },
    ))
    .await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000400", "{out}");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000400", "{out}");
    assert_eq!(status_field(&out, "Uid"), "1000\t1000\t1000\t1000");
    let map: Vec<&str> = out.lines().last().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"], "{out}");
    h.shutdown().await;
    h.assert_clean();
}

/// Waits (up to the operation timeout) until an event with this topic has
/// been published.
async fn wait_topic(h: &Harness, topic: &str) {
    let deadline = std::time::Instant::now() + op_timeout();
    while !h.events.topics().iter().any(|t| t == topic) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {topic} in {:?}",
            h.events.topics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_death_exits_every_task_non_zero() {
    let h = Harness::start().await;
    let bundle = h.bundle("doomed", &["sleep", "1000"], |_| {});
    within(h.create("doomed", &bundle, ("", "", ""), false))
        .await
        .unwrap();
    let pid = h.start_task("doomed", "").await.unwrap().pid;
    // What must go with the pod: the task pid (the agent, or the VMM's
    // monitor) and what runs under it: without a VM the container's own
    // `sleep`, with one the jailed VMM.
    // (The container's process may still be the agent's helper, about to
    // exec `sleep`.)
    let want = if vm_backend() {
        "cocoon-vmm"
    } else {
        "sleep 1000"
    };
    let is_it = |cmd: &str| {
        if vm_backend() {
            let argv0 = cmd.split(' ').next().unwrap_or_default();
            std::path::Path::new(argv0).file_name() == Some(std::ffi::OsStr::new(want))
        } else {
            cmd == want
        }
    };
    let deadline = std::time::Instant::now() + op_timeout();
    let tree = loop {
        let tree = process_tree(pid as i32);
        if tree
            .iter()
            .any(|(p, _, cmd)| *p != pid as i32 && is_it(cmd))
        {
            break tree;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {want:?} under the task pid {pid}: {tree:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let w = within(h.wait("doomed", "")).await.unwrap();
    assert_eq!(w.exit_status, 255);
    // Published by the exit watcher just after it wakes the waiters (as
    // containerd's runc shim does), so it may trail Wait's answer.
    wait_topic(&h, "/tasks/exit").await;
    h.delete("doomed", "").await.unwrap();
    h.shutdown().await;
    // No process of the pod is left: not the container's `sleep` (the dead
    // agent's child, reparented when it died), not a VMM or virtiofsd.
    assert_gone(
        &tree,
        Duration::from_secs(10),
        "after the pod's agent died and its task was deleted",
    );
    h.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_annotations_put_containers_in_one_pod() {
    let h = Harness::start().await;
    let ann = |ty: &str| {
        let ty = ty.to_string();
        move |s: &mut oci_spec::runtime::Spec| {
            let mut a = std::collections::HashMap::new();
            a.insert("io.kubernetes.cri.container-type".to_string(), ty);
            a.insert(
                "io.kubernetes.cri.sandbox-id".to_string(),
                "sbx".to_string(),
            );
            s.set_annotations(Some(a));
        }
    };
    let b1 = h.bundle("sbx", &["sleep", "1000"], |s| {
        ann("sandbox")(s);
        s.set_hostname(Some("pod-host".into()));
    });
    let b2 = h.bundle("app", &["sleep", "1000"], ann("container"));
    let p1 = within(h.create("sbx", &b1, ("", "", ""), false))
        .await
        .unwrap()
        .pid;
    let p2 = within(h.create("app", &b2, ("", "", ""), false))
        .await
        .unwrap()
        .pid;
    assert_eq!(p1, p2, "both containers report the same pod pid");
    // (`vmm-uids` holds the VMMs' uid claims, not a pod.)
    let pods: Vec<_> = std::fs::read_dir(h.run_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "vmm-uids")
        .collect();
    assert_eq!(pods, vec![std::ffi::OsString::from("sbx")]);
    // The pod is one set of namespaces in the guest: a container that
    // containerd points (by host paths) at its sandbox's pid, ipc and uts
    // namespaces shares them there.
    h.start_task("sbx", "").await.unwrap();
    let (status, out, err) = within(h.run(
        "shares",
        &["sh", "-c", "hostname; cat /proc/1/cmdline"],
        |s| {
            ann("container")(s);
            let linux = s.linux_mut().as_mut().unwrap();
            let nss = linux
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .map(|mut ns| {
                    use oci_spec::runtime::LinuxNamespaceType as T;
                    if matches!(ns.typ(), T::Pid | T::Ipc | T::Uts) {
                        let kind = format!("{:?}", ns.typ()).to_lowercase();
                        ns.set_path(Some(format!("/proc/{p1}/ns/{kind}").into()));
                    }
                    ns
                })
                .collect();
            linux.set_namespaces(Some(nss));
        },
    ))
    .await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        out, "pod-host\nsleep\u{0}1000\u{0}",
        "not in the sandbox's namespaces"
    );
    for id in ["app", "sbx"] {
        if id == "app" {
            h.start_task(id, "").await.unwrap();
        }
        h.kill(id, "", 9).await.unwrap();
        assert_eq!(within(h.wait(id, "")).await.unwrap().exit_status, 137);
    }
    h.delete("app", "").await.unwrap();
    assert!(
        h.run_dir().join("sbx").exists(),
        "pod outlives its first deleted container"
    );
    h.delete("sbx", "").await.unwrap();
    h.shutdown().await;
    h.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kill_publishes_an_oom_event() {
    let h = Harness::start().await;
    let (status, _, _) = within(h.run(
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        |s| {
            let mem = oci_spec::runtime::LinuxMemoryBuilder::default()
                .limit(16i64 << 20)
                .swap(16i64 << 20)
                .build()
                .unwrap();
            let res = oci_spec::runtime::LinuxResourcesBuilder::default()
                .memory(mem)
                .build()
                .unwrap();
            s.linux_mut().as_mut().unwrap().set_resources(Some(res));
        },
    ))
    .await;
    assert_eq!(status, 137);
    // The OOM loop publishes asynchronously.
    wait_topic(&h, "/tasks/oom").await;
    h.shutdown().await;
    h.assert_clean();
}

/// A process stopped with SIGSTOP (an agent, or a whole VM, that accepts
/// connections and never answers), continued again when dropped.
struct Frozen(Vec<nix::unistd::Pid>);

impl Frozen {
    /// SIGSTOPs the task pid: the local agent, or the jailed VMM's monitor
    /// and the VMM itself (the monitor's `cocoon-vmm` child).
    fn stop(pid: u32) -> Frozen {
        let mut pids = vec![pid as i32];
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for k in kids
            .split_whitespace()
            .filter_map(|k| k.parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap_or_default();
            if comm.trim() == "cocoon-vmm" {
                pids.push(k);
            }
        }
        let pids: Vec<_> = pids.into_iter().map(nix::unistd::Pid::from_raw).collect();
        for pid in &pids {
            nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        }
        for pid in &pids {
            let mut stopped = false;
            for _ in 0..100 {
                let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
                if st.contains(") T ") {
                    stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(stopped, "{pid} did not stop");
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

/// The agent-call deadline of the stuck-agent tests: short, so that they
/// wait it out, but on the VM backend long enough that a healthy agent's
/// CreateContainer answers within it under nested emulation on a loaded
/// machine (3 s was seen to run out there).
fn stuck_call_deadline() -> Duration {
    if vm_backend() {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(3)
    }
}

/// Two pods of one `sleep` container each: `calm` created, `stuck`
/// started and then frozen with SIGSTOP.
async fn calm_and_frozen_pods(h: &Harness, calm: &str, stuck: &str) -> Frozen {
    for id in [calm, stuck] {
        let bundle = h.bundle(id, &["sleep", "1000"], |_| {});
        within(h.create(id, &bundle, ("", "", ""), false))
            .await
            .unwrap();
    }
    let pid = within(h.start_task(stuck, "")).await.unwrap().pid;
    Frozen::stop(pid)
}

/// While a call on the stuck pod waits for its agent (until `done`, or
/// the agent call's deadline `call` less 500 ms): every 200 ms, State of
/// the (healthy, created) task `id` must answer within 2 s. The number of
/// probes made.
async fn probe_while_pending(
    h: &Harness,
    id: &str,
    done: &std::sync::atomic::AtomicBool,
    call: Duration,
) -> u32 {
    let started = std::time::Instant::now();
    let mut n = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if done.load(std::sync::atomic::Ordering::SeqCst)
            || started.elapsed() + Duration::from_millis(500) > call
        {
            return n;
        }
        let t = std::time::Instant::now();
        let st = tokio::time::timeout(Duration::from_secs(2), h.state(id, ""))
            .await
            .unwrap_or_else(|_| panic!("State of {id} waited behind the stuck pod (probe {n})"))
            .unwrap();
        assert_eq!(st.status, Status::CREATED.into(), "State of {id}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        n += 1;
    }
}

/// An agent that stops answering (its VM, or the local agent, stopped with
/// SIGSTOP: connections are accepted, nothing comes back). Kill and Delete
/// must finish within the call deadline, the VM must be gone, and another
/// pod's State must not wait behind the stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_that_never_answers_cannot_wedge_kill_delete_or_other_pods() {
    let call = stuck_call_deadline();
    let h = Harness::start_with_call_timeout(call).await;
    let frozen = calm_and_frozen_pods(&h, "bystander", "stuck").await;
    let pid = frozen.0.clone();
    // Kill: bounded by the call deadline (plus slack), not forever; while
    // it waits on the stuck agent, the other pod answers at once.
    let bound = call + Duration::from_secs(10);
    let done = std::sync::atomic::AtomicBool::new(false);
    let kill = async {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(bound, h.kill("stuck", "", libc::SIGKILL as u32)).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (r, started.elapsed())
    };
    let (kill, probes) = tokio::join!(kill, probe_while_pending(&h, "bystander", &done, call));
    // The Kill waits out the call deadline: a probe every 200 ms.
    assert!(
        probes >= 5,
        "only {probes} State probes while Kill was pending"
    );
    let (r, took) = kill;
    let r = r.unwrap_or_else(|_| panic!("Kill did not return within {bound:?}"));
    assert!(r.is_ok(), "SIGKILL to a stuck pod: {r:?}");
    assert!(took >= call - Duration::from_millis(500), "{took:?}");
    // The VM (or agent) was killed: the task exits, 255.
    let w = tokio::time::timeout(bound, h.wait("stuck", ""))
        .await
        .expect("Wait did not return after the stuck pod was killed")
        .unwrap();
    assert_eq!(w.exit_status, 255);
    // Gone or a zombie; the exit may still be under way when Wait answers
    // (the agent's socket closes as it dies).
    for pid in &pid {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            if gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the stuck pod's process {pid} is still alive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    tokio::time::timeout(bound, h.delete("stuck", ""))
        .await
        .expect("Delete of a stuck pod did not return in time")
        .unwrap();
    within(h.kill("bystander", "", libc::SIGKILL as u32))
        .await
        .ok();
    within(h.delete("bystander", "")).await.unwrap();
    h.shutdown().await;
    h.assert_clean();
}

/// A Create that waits on a stuck agent (a second container joining a pod
/// whose VM stopped answering) holds only its own pod: another pod's State
/// answers at once, and the Create fails within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_stuck_on_its_agent_does_not_block_other_pods() {
    let call = stuck_call_deadline();
    let h = Harness::start_with_call_timeout(call).await;
    let frozen = calm_and_frozen_pods(&h, "calm", "frozen").await;
    let joiner = h.bundle("frozen-2", &["true"], |s| {
        let mut a = std::collections::HashMap::new();
        a.insert(
            "io.kubernetes.cri.container-type".to_string(),
            "container".to_string(),
        );
        a.insert(
            "io.kubernetes.cri.sandbox-id".to_string(),
            "frozen".to_string(),
        );
        s.set_annotations(Some(a));
    });
    let bound = call + Duration::from_secs(10);
    let done = std::sync::atomic::AtomicBool::new(false);
    let create = async {
        let r =
            tokio::time::timeout(bound, h.create("frozen-2", &joiner, ("", "", ""), false)).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    };
    let (created, probes) = tokio::join!(create, probe_while_pending(&h, "calm", &done, call));
    drop(frozen);
    assert!(
        probes >= 5,
        "only {probes} State probes while Create was pending"
    );
    let e = created
        .unwrap_or_else(|_| panic!("Create did not return within {bound:?}"))
        .expect_err("a Create whose agent never answers must fail");
    assert!(format!("{e:?}").contains("no answer within"), "{e:?}");
    // The stuck pod's VM was stopped: its running task exits.
    let w = tokio::time::timeout(bound, h.wait("frozen", ""))
        .await
        .expect("Wait did not return after the stuck pod was stopped")
        .unwrap();
    assert_eq!(w.exit_status, 255);
    within(h.delete("frozen", "")).await.unwrap();
    within(h.delete("calm", "")).await.unwrap();
    h.shutdown().await;
    h.assert_clean();
}
