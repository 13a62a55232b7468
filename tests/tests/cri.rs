//! Kubernetes' view of cocoon: containerd's CRI plugin with the `cocoon`
//! runtime handler (tests/ctr/containerd.sh start-cri: CNI bridge network,
//! local registry), driven by `crictl` as a node operator would, pod to pod
//! over the pods' IPs, and judged by `critest`, the CRI validation suite.
//!
//! crictl and critest come from `COCOON_CRI_TOOLS` (make e2e sets it from
//! scripts/cri-tools.sh).
#![cfg(feature = "e2e")]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Containerd;

/// The busybox of the CRI images (containerd.sh pushes it to its registry).
const BUSYBOX: &str = "cocoon.local/e2e-test-images/busybox:1.29-2";
/// The CNI bridge's address: the pods' gateway, the host as pods see it.
const BRIDGE_IP: &str = "10.66.0.1";
const STEP: Duration = Duration::from_secs(300);

fn cri() -> &'static Containerd {
    common::shared_cri()
}

fn tools() -> PathBuf {
    PathBuf::from(
        std::env::var("COCOON_CRI_TOOLS")
            .expect("COCOON_CRI_TOOLS is not set: make e2e sets it (scripts/cri-tools.sh)"),
    )
}

/// Runs crictl against our containerd; (exit code, stdout, stderr).
fn crictl(args: &[&str]) -> (i32, String, String) {
    let c = cri();
    let sock = format!("unix://{}", c.dir.join("containerd.sock").display());
    let out = Command::new("timeout")
        .arg(STEP.as_secs().to_string())
        .arg(tools().join("crictl"))
        .args(["--runtime-endpoint", &sock, "--image-endpoint", &sock])
        .args(["--timeout", "240s"])
        .args(args)
        .envs(c.env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .expect("run crictl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// crictl that must succeed; its stdout, trimmed.
fn ok(args: &[&str]) -> String {
    let t = Instant::now();
    let (rc, out, err) = crictl(args);
    eprintln!("crictl {} ({:.1?})", args.join(" "), t.elapsed());
    assert_eq!(rc, 0, "crictl {args:?}: {err}{out}");
    out.trim().to_string()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("crictl's JSON: {e}: {text}"))
}

/// A CRI counter (`{"value": "123"}`, a uint64 the JSON gives as a string)
/// at `pointer`; 0 when it is missing.
fn counter(v: &serde_json::Value, pointer: &str) -> u64 {
    match v.pointer(&format!("{pointer}/value")) {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        Some(n) => n.as_u64().unwrap_or(0),
        None => 0,
    }
}

fn write_json(dir: &Path, name: &str, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A pod config: a hostname, DNS, a cgroup parent (as the kubelet gives
/// one: `statsp` reads it) and optional port mappings.
fn pod_config(name: &str, port_mappings: &str) -> String {
    let logs = cri().dir.join("logs").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"cocoon-e2e","uid":"{name}-uid","attempt":0}},
"hostname":"{name}-host","log_directory":"{logs}",
"dns_config":{{"servers":["10.66.0.53"],"searches":["cocoon.test"],"options":["ndots:2"]}},
"port_mappings":[{port_mappings}],
"linux":{{"cgroup_parent":"/cocoon-e2e-cri/{name}"}}}}"#,
        logs = logs.display()
    )
}

fn container_config(name: &str, script: &str) -> String {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"{{"metadata":{{"name":"{name}"}},"image":{{"image":"{BUSYBOX}"}},
"command":["sh","-c","{script}"],"log_path":"{name}.log"}}"#
    )
}

/// A pod (handler `cocoon`) with one started container; (pod id,
/// container id).
fn run_pod(name: &str, ports: &str, script: &str) -> (String, String) {
    let dir = cri().dir.join("configs");
    let pod = write_json(&dir, &format!("{name}-pod.json"), &pod_config(name, ports));
    let ctr = write_json(
        &dir,
        &format!("{name}-ctr.json"),
        &container_config(name, script),
    );
    let pod_id = ok(&["runp", "--runtime", "cocoon", &pod]);
    let ctr_id = ok(&["create", &pod_id, &ctr, &pod]);
    ok(&["start", &ctr_id]);
    (pod_id, ctr_id)
}

/// The pod's IP as CRI reports it.
fn pod_ip(pod_id: &str) -> String {
    let out = ok(&[
        "inspectp",
        "-o",
        "go-template",
        "--template",
        "{{.status.network.ip}}",
        pod_id,
    ]);
    assert!(out.parse::<std::net::Ipv4Addr>().is_ok(), "pod IP {out:?}");
    out
}

/// Polls `f` until it returns Some, for up to `limit`.
fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An HTTP GET of `/` at `addr`; the body, or None while nothing answers.
fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (_, body) = r.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

/// Stops and removes the pod, then checks it left nothing on the host.
fn remove_pod(pod_id: &str) {
    ok(&["stopp", pod_id]);
    ok(&["rmp", pod_id]);
    let c = cri();
    let pod_dir = c.run_dir.join(pod_id);
    assert!(!pod_dir.exists(), "{} outlived the pod", pod_dir.display());
    let left: Vec<_> = common::processes()
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| a.contains(pod_id)))
        .collect();
    assert!(
        left.is_empty(),
        "processes of pod {pod_id} outlived it: {left:?}"
    );
    let mounts: Vec<_> = common::mount_points()
        .into_iter()
        .filter(|m| m.to_string_lossy().contains(pod_id))
        .collect();
    assert!(
        mounts.is_empty(),
        "mounts of pod {pod_id} outlived it: {mounts:?}"
    );
}

/// The node operator's crictl session: runp, pull, create, start, logs,
/// exec (sync and streaming), the pod's IP, a host port, port-forward,
/// stats, statsp, stop, rm, stopp, rmp, each step's result checked.
#[test]
fn crictl_pod_lifecycle() {
    require_supported_vmm!();
    ok(&["pull", BUSYBOX]);
    let script = "echo start; printf 'part'; sleep 1; echo 'ial'; mkdir -p /www; \
                  echo cocoon-web >/www/index.html; exec httpd -f -p 80 -h /www";
    let mapping = r#"{"protocol":0,"container_port":80,"host_port":18080}"#;
    let (pod, ctr) = run_pod("flow", mapping, script);
    let ip = pod_ip(&pod);
    // A pod on a CNI network restores from a template with a NIC: the
    // guest's interface got the pod's MAC (the traffic below needs it).
    let log = cri().log();
    assert!(
        log.lines()
            .any(|l| l.contains("the pod's VM starts from a template") && l.contains(&pod)),
        "the pod's VM was not restored from a template:\n{log}"
    );

    // Logs arrive whole, the partial line joined.
    let logs = eventually("the container's first log lines", STEP, || {
        let (_, out, _) = crictl(&["logs", &ctr]);
        out.contains("partial\n").then_some(out)
    });
    assert_eq!(logs, "start\npartial\n");

    // ExecSync and a streaming exec see the pod's hostname and DNS.
    assert_eq!(ok(&["exec", "-s", &ctr, "hostname"]), "flow-host");
    let resolv = ok(&["exec", "-s", &ctr, "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.66.0.53") && resolv.contains("search cocoon.test"),
        "{resolv}"
    );
    assert_eq!(
        ok(&["exec", &ctr, "sh", "-c", "echo streamed; exit 0"]),
        "streamed"
    );

    // The pod's IP answers from the host, so does the host port.
    let body = eventually("the pod's web server at its IP", STEP, || {
        http_get(&format!("{ip}:80"))
    });
    assert_eq!(body, "cocoon-web\n");
    let body = eventually("the host port 18080", STEP, || {
        http_get(&format!("{BRIDGE_IP}:18080"))
    });
    assert_eq!(body, "cocoon-web\n");

    // port-forward: containerd dials localhost:80 in the pod's netns.
    let c = cri();
    let sock = format!("unix://{}", c.dir.join("containerd.sock").display());
    let mut fwd = Command::new(tools().join("crictl"))
        .args([
            "--runtime-endpoint",
            &sock,
            "port-forward",
            &pod,
            "18081:80",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let body = eventually("port-forward 18081:80", STEP, || {
        http_get("127.0.0.1:18081")
    });
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert_eq!(body, "cocoon-web\n");

    // Numbers from the guest (stats) and from the pod cgroup on the host,
    // the sandbox's cgroup parent (statsp): that one holds the VMM and
    // virtiofsd, so it counts more memory than the container alone.
    let stats = json(&ok(&["stats", "-o", "json", "--id", &ctr]));
    let ctr_mem = counter(&stats, "/stats/0/memory/workingSetBytes");
    assert!(
        counter(&stats, "/stats/0/cpu/usageCoreNanoSeconds") > 0,
        "{stats}"
    );
    assert!(ctr_mem > 0, "{stats}");
    let statsp = json(&ok(&["statsp", "-o", "json", "--id", &pod]));
    assert!(
        counter(&statsp, "/stats/0/linux/cpu/usageCoreNanoSeconds") > 0,
        "{statsp}"
    );
    let pod_mem = counter(&statsp, "/stats/0/linux/memory/workingSetBytes");
    assert!(
        pod_mem > ctr_mem,
        "pod {pod_mem} B <= its container's {ctr_mem} B: {statsp}"
    );

    ok(&["stop", &ctr]);
    ok(&["rm", &ctr]);
    remove_pod(&pod);
}

/// Two cocoon pods reach each other over their pod IPs, and a pod reaches
/// the host.
#[test]
fn two_pods_talk_over_their_ips() {
    require_supported_vmm!();
    ok(&["pull", BUSYBOX]);
    let (server, _) = run_pod(
        "server",
        "",
        "mkdir -p /www; echo from-server >/www/index.html; exec httpd -f -p 8080 -h /www",
    );
    let server_ip = pod_ip(&server);
    let host = TcpListener::bind((BRIDGE_IP, 0)).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let script = format!(
        "until wget -q -O - http://{server_ip}:8080/; do sleep 1; done; \
         echo from-pod | nc {BRIDGE_IP} {host_port}; sleep 1000"
    );
    let (client, client_ctr) = run_pod("client", "", &script);
    let got = eventually("the client pod's log", STEP, || {
        let (_, out, _) = crictl(&["logs", &client_ctr]);
        out.contains("from-server").then_some(out)
    });
    assert_eq!(got, "from-server\n");
    host.set_nonblocking(true).unwrap();
    let (mut conn, peer) = eventually("the client pod's connection to the host", STEP, || {
        host.accept().ok()
    });
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(
        peer.ip().to_string(),
        pod_ip(&client),
        "the pod's own IP reached the host"
    );
    let mut line = String::new();
    conn.read_to_string(&mut line).unwrap();
    assert_eq!(line, "from-pod\n");
    remove_pod(&client);
    remove_pod(&server);
}

/// What `critest` may not run here, each with the reason a VM runtime
/// cannot claim it. Every entry must match a test the run skipped.
const CRITEST_EXCLUDED: &[(&str, &str)] = &[
    (
        "HostIpc is true",
        "the pod's processes run on the guest's kernel: the host's IPC namespace \
         (its SysV and POSIX IPC objects) cannot be shared with them",
    ),
    (
        "HostNetwork is true",
        "host network is refused: sharing the host's network stack with a VM means \
         handing the host's interfaces to the guest",
    ),
    (
        "portforward in host network",
        "needs a host-network pod (refused, as above)",
    ),
    (
        "mount with 'rshared'",
        "Bidirectional propagation: a mount made in the guest's kernel cannot appear \
         on the host (host-to-container propagation, 'rslave', is tested)",
    ),
    ("benchmark", "benchmarks, not validation tests"),
];

/// One critest test case from its JUnit report.
struct CritestCase {
    name: String,
    status: String,
    secs: f64,
}

fn xml_unescape(s: &str) -> String {
    s.replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn xml_attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(xml_unescape(&tag[start..start + len]))
}

fn critest_cases(junit: &str) -> Vec<CritestCase> {
    junit
        .split("<testcase ")
        .skip(1)
        .filter_map(|t| {
            let tag = format!(" {}", &t[..t.find('>')?]);
            Some(CritestCase {
                name: xml_attr(&tag, "name")?,
                status: xml_attr(&tag, "status")?,
                secs: xml_attr(&tag, "time")?.parse().ok()?,
            })
        })
        .filter(|c| c.name.starts_with("[It]"))
        .collect()
}

/// Runs critest (`--runtime-handler cocoon`) over `groups` (critest's
/// top-level `[k8s.io] <group>` names), with [`CRITEST_EXCLUDED`] left out;
/// prints each test's result and the counts, and fails on any failure, on a
/// run that ran nothing, on a test of these groups skipped without being
/// excluded here, and on pods or pod directories left behind.
fn critest(group: &str, groups: &[&str]) {
    let focus = format!(
        r"\[k8s\.io\] ({}) ",
        groups
            .iter()
            .map(|g| regex_quote(g))
            .collect::<Vec<_>>()
            .join("|")
    );
    let focus = focus.as_str();
    let c = cri();
    let sock = format!("unix://{}", c.dir.join("containerd.sock").display());
    let report = c.dir.join(format!("critest-{group}.xml"));
    let _ = std::fs::remove_file(&report);
    let skip = CRITEST_EXCLUDED
        .iter()
        .map(|(t, _)| regex_quote(t))
        .collect::<Vec<_>>()
        .join("|");
    let t = Instant::now();
    let status = Command::new("timeout")
        .args(["-k", "30", "3000"])
        .arg(tools().join("critest"))
        .args(["--runtime-endpoint", &sock, "--image-endpoint", &sock])
        .args(["--runtime-handler", "cocoon"])
        .arg("--test-images-file")
        .arg(c.dir.join("critest-images.yaml"))
        .args(["--ginkgo.focus", focus, "--ginkgo.skip", &skip])
        .arg(format!("--ginkgo.junit-report={}", report.display()))
        .args(["--ginkgo.no-color", "--ginkgo.timeout=50m"])
        .envs(c.env.iter().cloned())
        .stdin(Stdio::null())
        .status()
        .expect("run critest");
    let junit = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "critest ({status}) wrote no report {}: {e}",
            report.display()
        )
    });
    let all = critest_cases(&junit);
    // The tests of these groups (critest reports the others as skipped).
    let cases: Vec<&CritestCase> = all
        .iter()
        .filter(|c| {
            groups
                .iter()
                .any(|g| c.name.starts_with(&format!("[It] [k8s.io] {g} ")))
        })
        .collect();
    let count = |s: &str| cases.iter().filter(|c| c.status == s).count();
    let (passed, failed, skipped) = (count("passed"), count("failed"), count("skipped"));
    // Straight to stderr: libtest would swallow eprintln! of a passing test.
    let mut summary = format!("\ncritest {group} ({focus}), {:.0?}:\n", t.elapsed());
    for c in cases
        .iter()
        .filter(|c| c.status != "skipped" || !c.name.contains("benchmark"))
    {
        summary += &format!("  {:7} {:5.0} s  {}\n", c.status, c.secs, c.name);
    }
    summary += &format!(
        "critest {group}: {passed} passed, {failed} failed, {skipped} skipped (excluded: {})\n",
        CRITEST_EXCLUDED
            .iter()
            .map(|(t, why)| format!("\"{t}\": {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = std::io::stderr().write_all(summary.as_bytes());
    let other: Vec<_> = all
        .iter()
        .filter(|c| !["passed", "failed", "skipped"].contains(&c.status.as_str()))
        .map(|c| format!("{}: {}", c.status, c.name))
        .collect();
    assert!(
        other.is_empty(),
        "critest {group}: tests that did not finish: {other:#?}"
    );
    assert_eq!(failed, 0, "critest {group}: {failed} failed (listed above)");
    assert!(
        passed > 0,
        "critest {group}: nothing ran for focus {focus:?}"
    );
    assert!(
        status.success(),
        "critest {group}: {status} with no failed test"
    );
    // A test of these groups that critest skipped is one excluded here.
    for s in cases.iter().filter(|c| c.status == "skipped") {
        assert!(
            CRITEST_EXCLUDED.iter().any(|(t, _)| s.name.contains(t)),
            "critest {group} skipped a test that is not excluded: {}",
            s.name
        );
    }
    // What critest made, it removed: no pod, shim or pod directory is left.
    let pods = ok(&["pods", "-q"]);
    assert!(pods.is_empty(), "critest {group} left pods: {pods}");
    let dirs: Vec<_> = std::fs::read_dir(&c.run_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        dirs.is_empty(),
        "critest {group} left pod directories: {dirs:?}"
    );
}

fn regex_quote(s: &str) -> String {
    s.chars()
        .flat_map(|ch| {
            let special = "\\.+*?()|[]{}^$".contains(ch);
            special.then_some('\\').into_iter().chain([ch])
        })
        .collect()
}

/// critest's Security Context, Networking and Streaming groups.
#[test]
fn critest_security_networking_streaming() {
    critest(
        "security-networking-streaming",
        &["Security Context", "Networking", "Streaming"],
    );
}

/// critest's PodSandbox, Container (mount propagation included) and
/// Multiple Containers groups.
#[test]
fn critest_pods_and_containers() {
    critest(
        "pods-and-containers",
        &["PodSandbox", "Container", "Multiple Containers"],
    );
}

#[test]
fn critest_report_parsing() {
    let junit = r#"<testsuites><testsuite>
<testcase name="[BeforeSuite]" classname="CRI validation" status="passed" time="0.2"></testcase>
<testcase name="[It] [k8s.io] mount with &#39;rshared&#39; should" classname="CRI validation" status="skipped" time="0"></testcase>
<testcase name="[It] [k8s.io] a &amp; b" classname="CRI validation" status="failed" time="41.5"><failure>x</failure></testcase>
</testsuite></testsuites>"#;
    let cases = critest_cases(junit);
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].name, "[It] [k8s.io] mount with 'rshared' should");
    assert!(cases[0].name.contains(CRITEST_EXCLUDED[3].0));
    assert_eq!((cases[1].status.as_str(), cases[1].secs), ("failed", 41.5));
    assert_eq!(regex_quote("a (b)|c."), r"a \(b\)\|c\.");
}
