//! Lifecycle, exit codes and stdio, against a real agent on Unix sockets.

mod common;

use std::time::Duration;

use cocoon_agent_protocol::agent::*;
use cocoon_agent_protocol::stream_header::StreamKind;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_version() {
    let a = Agent::start().await;
    assert!(
        a.client
            .check(ctx(), &CheckRequest::new())
            .await
            .unwrap()
            .serving
    );
    let v = a
        .client
        .version(ctx(), &VersionRequest::new())
        .await
        .unwrap();
    assert_eq!(v.protocol_version, cocoon_agent_protocol::PROTOCOL_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_separate_stdout_stderr() {
    let a = Agent::start().await;
    let (st, out, err) = a
        .run("ok", &a.spec("ok", &["sh", "-c", "echo out; echo err >&2"]))
        .await;
    assert_eq!((st, out.as_str(), err.as_str()), (0, "out\n", "err\n"));
    let (st, _, _) = a
        .run("three", &a.spec("three", &["sh", "-c", "exit 3"]))
        .await;
    assert_eq!(st, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_gives_137() {
    let a = Agent::start().await;
    a.create("k", &a.spec("k", &["sleep", "100"]), (false, false, false))
        .await
        .unwrap();
    a.start_c("k").await.unwrap();
    a.signal("k", "", 9).await.unwrap();
    assert_eq!(a.wait("k", "").await.unwrap().exit_status, 137);
    a.remove("k").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_piped_and_closed() {
    let a = Agent::start().await;
    a.create("cat", &a.spec("cat", &["cat"]), (true, true, false))
        .await
        .unwrap();
    let mut inp = a.stream("cat", "", StreamKind::Stdin).await;
    let out = a.stream("cat", "", StreamKind::Stdout).await;
    a.start_c("cat").await.unwrap();
    write_all(&mut inp, b"hello through stdin\n").await;
    drop(inp); // EOF
    let got = tokio::time::timeout(Duration::from_secs(10), read_all(out))
        .await
        .unwrap();
    assert_eq!(got, "hello through stdin\n");
    assert_eq!(a.wait("cat", "").await.unwrap().exit_status, 0);
    a.remove("cat").await.unwrap();

    // CloseStdin without a stream ever attached also gives EOF.
    a.create("cat2", &a.spec("cat2", &["cat"]), (true, true, false))
        .await
        .unwrap();
    let out = a.stream("cat2", "", StreamKind::Stdout).await;
    a.start_c("cat2").await.unwrap();
    let mut req = ProcessRequest::new();
    req.container_id = "cat2".into();
    a.client.close_stdin(ctx(), &req).await.unwrap();
    assert_eq!(read_all(out).await, "");
    assert_eq!(a.wait("cat2", "").await.unwrap().exit_status, 0);
    a.remove("cat2").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_at_exit_is_not_lost() {
    let a = Agent::start().await;
    // 200 KiB, more than a pipe holds, written right before exit; the
    // stream attaches only after the process has exited.
    let spec = a.spec(
        "burst",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero bs=1024 count=200 2>/dev/null | tr '\\0' x; exit 0",
        ],
    );
    a.create("burst", &spec, (false, true, false))
        .await
        .unwrap();
    a.start_c("burst").await.unwrap();
    let out = a.stream("burst", "", StreamKind::Stdout).await;
    let got = read_all(out).await;
    assert_eq!(got.len(), 200 * 1024);
    assert_eq!(a.wait("burst", "").await.unwrap().exit_status, 0);
    a.remove("burst").await.unwrap();
}

/// The pid of `agent`'s child named `cocoon-forksrv`, if any.
fn fork_server_of(agent: u32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{agent}/task/{agent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "cocoon-forksrv")
        })
}

/// The arguments of a created (not started) container's init: a clone of
/// its libcontainer helper, so they are the helper's.
fn init_cmdline(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ")
}

async fn wait_gone(pid: i32) {
    for _ in 0..500 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} is still there");
}

/// Helpers are forked by the agent's fork server (not re-executed: the
/// created container's init, a clone of the helper, carries the agent's own
/// arguments, not `__helper`); with the server killed, the agent falls back
/// to re-executing itself and containers still run; the server dies with
/// the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_come_from_the_fork_server_and_outlive_its_loss() {
    let a = Agent::start().await;
    let agent = a.child.id();
    let server = fork_server_of(agent).expect("the agent has a fork server");

    let forked = a
        .create("f1", &a.spec("f1", &["true"]), (false, false, false))
        .await
        .unwrap();
    let cmd = init_cmdline(forked.pid);
    assert!(
        cmd.contains("--listen") && !cmd.contains("__helper"),
        "not forked by the fork server: {cmd}"
    );

    // SAFETY: kill(2) on the agent's fork server, found above.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    wait_gone(server).await;
    let execd = a
        .create("f2", &a.spec("f2", &["true"]), (false, false, false))
        .await
        .unwrap();
    let cmd = init_cmdline(execd.pid);
    assert!(cmd.contains("__helper create"), "not re-executed: {cmd}");
    for id in ["f1", "f2"] {
        a.start_c(id).await.unwrap();
        assert_eq!(a.wait(id, "").await.unwrap().exit_status, 0, "{id}");
        a.remove(id).await.unwrap();
    }

    let b = Agent::start().await;
    let server = fork_server_of(b.child.id()).expect("the agent has a fork server");
    drop(b);
    wait_gone(server).await;
}
