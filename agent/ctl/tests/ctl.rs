//! Drives `cocoon-agent-ctl` against a real agent on Unix sockets: Check,
//! Version, `run` (exit code, stdout and stderr kept apart), a container
//! through create/start/ps/stats/signal/wait/remove, a refused call, and the
//! agent's SIGTERM cleanup. Runs as root, like the agent's own tests.
//!
//! This binary embeds the agent: started with `COCOON_CTL_TEST_AGENT=1` it
//! runs `cocoon_agent::entry::agent_main` (which also serves the helper
//! re-executions), so no second package's binary has to be found.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use oci_spec::runtime::Spec;

const AS_AGENT: &str = "COCOON_CTL_TEST_AGENT";
const CTL: &str = env!("CARGO_BIN_EXE_cocoon-agent-ctl");

fn main() {
    if std::env::var_os(AS_AGENT).is_some() {
        cocoon_agent::entry::agent_main();
    }
    // libtest's flags (`--test-threads=2`, a filter) are accepted and ignored.
    let start = Instant::now();
    match ctl_drives_a_host_agent() {
        Ok(()) => {
            println!("test ctl_drives_a_host_agent ... ok");
            println!(
                "\ntest result: ok. 1 passed; 0 failed; finished in {:.2}s",
                start.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            println!("test ctl_drives_a_host_agent ... FAILED\n{e:?}");
            println!("\ntest result: FAILED. 0 passed; 1 failed");
            std::process::exit(1);
        }
    }
}

struct Agent {
    dir: tempfile::TempDir,
    child: Option<Child>,
    cgroup_parent: String,
}

impl Agent {
    fn start() -> Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("cocoon-ctl-test")
            .tempdir()?;
        let cgroup_parent = format!("/cocoon-ctl-test-{}", std::process::id());
        let child = Command::new(std::env::current_exe()?)
            .env(AS_AGENT, "1")
            .arg("--listen")
            .arg(format!("unix://{}", dir.path().join("ctl.sock").display()))
            .arg("--stream-listen")
            .arg(format!(
                "unix://{}",
                dir.path().join("stream.sock").display()
            ))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .arg("--share-dir")
            .arg(dir.path().join("share"))
            .arg("--log")
            .arg("warn,libcgroups=error")
            .stdin(Stdio::null())
            .spawn()?;
        let a = Agent {
            dir,
            child: Some(child),
            cgroup_parent,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !a.dir.path().join("stream.sock").exists() {
            ensure!(Instant::now() < deadline, "the agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(a)
    }

    fn ctl(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(CTL)
            .arg("--addr")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("ctl.sock").display()
            ))
            .arg("--stream-addr")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("stream.sock").display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running cocoon-agent-ctl {args:?}"))?;
        Ok(out)
    }

    /// Runs ctl and expects success; returns its stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        ensure!(
            out.status.success(),
            "cocoon-agent-ctl {args:?}: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A busybox rootfs and a config.json running `args`; returns its path.
    fn bundle(&self, name: &str, args: &[&str]) -> Result<PathBuf> {
        let root = self.dir.path().join("rootfs").join(name);
        for d in ["bin", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
        for a in ["sh", "echo", "sleep"] {
            symlink("busybox", root.join("bin").join(a))?;
        }
        let mut spec = Spec::default();
        let mut r = spec.root().clone().context("default root")?;
        r.set_path(root);
        r.set_readonly(Some(false));
        spec.set_root(Some(r));
        let p = spec.process_mut().as_mut().context("default process")?;
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        let path = self.dir.path().join(format!("{name}.json"));
        spec.save(&path)?;
        Ok(path)
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        let base = Path::new("/sys/fs/cgroup");
        let rel = self.cgroup_parent.trim_start_matches('/');
        let roots: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
            vec![base.to_path_buf()]
        } else {
            std::fs::read_dir(base)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        roots
            .into_iter()
            .map(|r| r.join(rel))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// SIGTERM, and wait for the agent's exit status.
    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("agent already stopped")?;
        // SAFETY: kill(2) on the pid of our own child, which has not been
        // waited for yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // After a failure: whatever cgroups are left, deepest first.
        for d in self.parent_dirs() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn ctl_drives_a_host_agent() -> Result<()> {
    let mut a = Agent::start()?;

    let out = a.ok(&["check"])?;
    ensure!(out == "serving: true\n", "check: {out:?}");
    let out = a.ok(&["version"])?;
    ensure!(out.contains(" protocol 1"), "version: {out:?}");

    // run: exit code, and stdout and stderr kept apart.
    let spec = a.bundle("r", &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"])?;
    let out = a.ctl(&["run", "r1", spec.to_str().context("path")?])?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.code() == Some(7) && stdout == "to-out\n" && stderr == "to-err\n",
        "run: {} stdout {stdout:?} stderr {stderr:?}",
        out.status
    );

    // A container step by step.
    let spec = a.bundle("s", &["sleep", "100"])?;
    let created = a.ok(&["create", "s1", spec.to_str().context("path")?])?;
    let pid = created
        .strip_prefix("pid ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .with_context(|| format!("create: {created:?}"))?;
    a.ok(&["start", "s1"])?;
    let ps = a.ok(&["ps", "s1"])?;
    ensure!(
        ps.lines()
            .any(|l| l.split('\t').next() == Some(&pid.to_string())),
        "ps: {ps:?}"
    );
    let stats = a.ok(&["stats", "s1"])?;
    ensure!(stats.contains("pids"), "stats: {stats:?}");
    a.ok(&["signal", "s1", "9"])?;
    let wait = a.ok(&["wait", "s1"])?;
    ensure!(wait.contains(" exit 137 "), "wait: {wait:?}");
    a.ok(&["remove", "s1"])?;

    // A refused call: a non-zero exit that names the problem.
    let out = a.ctl(&["start", "nope"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("NOT_FOUND") && stderr.contains("nope"),
        "start of an unknown id: {} {stderr:?}",
        out.status
    );

    // A container left running: SIGTERM removes it and the cgroup parent.
    let created = a.ok(&["create", "left", spec.to_str().context("path")?])?;
    let pid = created
        .strip_prefix("pid ")
        .and_then(|p| p.trim().parse::<i32>().ok())
        .with_context(|| format!("create: {created:?}"))?;
    a.ok(&["start", "left"])?;
    ensure!(
        !a.parent_dirs().is_empty(),
        "no cgroup parent while running"
    );
    let status = a.terminate()?;
    ensure!(status.success(), "agent after SIGTERM: {status}");
    let left = a.parent_dirs();
    ensure!(left.is_empty(), "cgroup parent left behind: {left:?}");
    // SAFETY: kill with signal 0 only probes for existence.
    ensure!(unsafe { libc::kill(pid, 0) } == -1, "sleep still alive");
    Ok(())
}
