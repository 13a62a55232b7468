//! The agent's container-start benchmark (issue item 8), `#[ignore]`d so
//! that `cargo test` skips it; `tests/bench/agent.sh` runs it (as root).
//!
//! CreateContainer → first byte of stdout for sequential containers through
//! the agent on a Unix socket, against `runc run` of the same rootfs and
//! spec on the same host; and the agent's RSS idle and with 10 running
//! containers. Prints a markdown table. `COCOON_TEST_AGENT_BIN` picks the
//! agent binary (the script uses the static release build), `BENCH_RUNS`
//! the number of containers (default 20), `COCOON_BENCH_RUNC` runc's path.

mod common;

use std::io::Read;
use std::process::{Command, Stdio as PStdio};
use std::time::{Duration, Instant};

use cocoon_agent_protocol::stream_header::StreamKind;
use common::*;
use tokio::io::AsyncReadExt;

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

/// The nearest-rank 95th percentile.
fn p95(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let rank = (s.len() as f64 * 0.95).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One container through the agent: CreateContainer, attach stdout,
/// StartContainer, first byte. Removal is not timed.
async fn agent_once(a: &Agent, id: &str) -> Duration {
    let spec = a.spec(id, &["echo", "hi"]);
    let t0 = Instant::now();
    a.create(id, &spec, (false, true, false))
        .await
        .expect("create");
    let mut out = a.stream(id, "", StreamKind::Stdout).await;
    a.start_c(id).await.expect("start");
    let mut b = [0u8; 1];
    out.read_exact(&mut b).await.expect("first byte");
    let took = t0.elapsed();
    let rest = read_all(out).await;
    assert_eq!(format!("{}{rest}", b[0] as char), "hi\n");
    assert_eq!(a.wait(id, "").await.unwrap().exit_status, 0);
    a.remove(id).await.expect("remove");
    took
}

/// One `runc run` of a bundle with the same rootfs and spec: spawn to
/// first byte of stdout. runc removes the container when it exits.
fn runc_once(a: &Agent, runc: &str, id: &str) -> Duration {
    let bundle = a.dir.path().join("runc").join(id);
    std::fs::create_dir_all(&bundle).unwrap();
    let spec = a.spec(&format!("runc-{id}"), &["echo", "hi"]);
    spec.save(bundle.join("config.json")).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(runc)
        .arg("--root")
        .arg(a.dir.path().join("runc-state"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(id)
        .stdin(PStdio::null())
        .stdout(PStdio::piped())
        .stderr(PStdio::piped())
        .spawn()
        .expect("runc");
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    let got = out.read(&mut b).expect("runc stdout");
    let took = t0.elapsed();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let res = child.wait_with_output().unwrap();
    assert!(
        got == 1 && res.status.success(),
        "runc run: {} {}",
        res.status,
        String::from_utf8_lossy(&res.stderr)
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by tests/bench/agent.sh"]
async fn container_start_latency_and_rss() {
    let runc = std::env::var("COCOON_BENCH_RUNC").unwrap_or_else(|_| "runc".into());
    let n = runs();
    let a = Agent::start().await;
    let agent_pid = a.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(agent_pid);

    // One warm-up each (page cache, first cgroup creation), not counted.
    agent_once(&a, "warm").await;
    runc_once(&a, &runc, "warm");
    let mut agent = Vec::new();
    let mut runc_t = Vec::new();
    // Interleaved, so that both see the same background load.
    for i in 0..n {
        agent.push(agent_once(&a, &format!("a{i}")).await);
        let r = tokio::task::block_in_place(|| runc_once(&a, &runc, &format!("r{i}")));
        runc_t.push(r);
    }

    for i in 0..10 {
        let id = format!("s{i}");
        a.create(&id, &a.spec(&id, &["sleep", "100"]), (false, false, false))
            .await
            .unwrap();
        a.start_c(&id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_10 = rss_kib(agent_pid);
    for i in 0..10 {
        a.remove(&format!("s{i}")).await.unwrap();
    }

    let ratio = |x: Duration, y: Duration| format!("{:.2}×", x.as_secs_f64() / y.as_secs_f64());
    let (am, rm, ap, rp) = (median(&agent), median(&runc_t), p95(&agent), p95(&runc_t));
    println!();
    println!("| {n} sequential containers (`echo hi`, busybox rootfs) | cocoon-agent (Unix socket) | runc run | agent / runc |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| CreateContainer → first byte, median | {} | {} | {} |",
        ms(am),
        ms(rm),
        ratio(am, rm)
    );
    println!(
        "| CreateContainer → first byte, p95 | {} | {} | {} |",
        ms(ap),
        ms(rp),
        ratio(ap, rp)
    );
    println!(
        "| agent RSS, idle | {:.1} MiB | | |",
        rss_idle as f64 / 1024.0
    );
    println!(
        "| agent RSS, 10 running containers | {:.1} MiB | | |",
        rss_10 as f64 / 1024.0
    );
    println!();
    println!(
        "agent binary: {}",
        std::env::var("COCOON_TEST_AGENT_BIN").unwrap_or_else(|_| "the debug build".into())
    );
}
