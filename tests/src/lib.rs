//! Helpers for cocoon's end-to-end tests: where the built artefacts are, and
//! running a process with a deadline while capturing its output.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The artefacts `make e2e` hands to the tests through the environment.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The test-mode init's initrd (rootfs/devtest-init).
    pub devtest_initrd: PathBuf,
    /// The initrd with cocoon-agent as /init (`COCOON_AGENT_INITRD`).
    pub agent_initrd: PathBuf,
}

impl Artifacts {
    /// Reads `COCOON_VMM`, `COCOON_KERNEL` and `COCOON_INITRD`; panics with
    /// the way out when one is missing (these tests run through `make e2e`).
    pub fn from_env() -> Self {
        let get = |name: &str| -> PathBuf {
            let path = std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    panic!("{name} is not set: run the end-to-end tests with `make e2e`")
                });
            assert!(
                path.exists(),
                "{name}={} does not exist: run `make e2e`",
                path.display()
            );
            path
        };
        Artifacts {
            vmm: get("COCOON_VMM"),
            kernel: get("COCOON_KERNEL"),
            initrd: get("COCOON_INITRD"),
            devtest_initrd: get("COCOON_DEVTEST_INITRD"),
            agent_initrd: get("COCOON_AGENT_INITRD"),
        }
    }

    /// The VMM arguments that boot the test-mode init (rootfs/devtest-init)
    /// with `cmdline` (which names the checks: `cocoon.test=...`).
    pub fn devtest_args(&self, cmdline: &str) -> Vec<OsString> {
        vec![
            "--kernel".into(),
            self.kernel.clone().into(),
            "--initrd".into(),
            self.devtest_initrd.clone().into(),
            "--cmdline".into(),
            cmdline.into(),
        ]
    }

    /// `cocoon-vmm` booting the test-mode init; add the devices under test.
    pub fn devtest_vmm(&self, cmdline: &str) -> Command {
        let mut cmd = Command::new(&self.vmm);
        cmd.args(self.devtest_args(cmdline));
        cmd
    }
}

/// Asserts that a test-mode guest finished in time, reported exactly the
/// checks `checks`, in that order, all passed, printed `cocoon-devtest:
/// done` and exited 0. Returns the checks' details.
pub fn assert_devtest_all_passed(f: &Finished, checks: &[&str]) -> Vec<String> {
    assert!(!f.timed_out, "the guest did not finish:\n{}", f.describe());
    let (verdicts, done) = devtest_report(&f.stdout);
    let names: Vec<&str> = verdicts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, checks, "the checks reported:\n{}", f.describe());
    let details = verdicts
        .iter()
        .map(|(name, v)| match v {
            CheckVerdict::Ok(detail) => detail.clone(),
            CheckVerdict::Fail(why) => panic!("{name} check failed: {why}\n{}", f.describe()),
        })
        .collect::<Vec<_>>();
    assert!(done, "no 'cocoon-devtest: done':\n{}", f.describe());
    assert_eq!(f.status.code(), Some(0), "{}", f.describe());
    for (name, detail) in checks.iter().zip(&details) {
        println!("{name}: ok: {detail}");
    }
    println!("{} checks in one boot: {:?}", checks.len(), f.elapsed);
    details
}

/// The verdict the test-mode init printed for one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckVerdict {
    Ok(String),
    Fail(String),
}

/// Parses the test-mode init's report (`cocoon-devtest: NAME ok[: detail]`,
/// `cocoon-devtest: NAME FAIL: why`) from the guest console. Returns the
/// verdicts by name and whether the final `cocoon-devtest: done` was seen.
pub fn devtest_report(console: &str) -> (Vec<(String, CheckVerdict)>, bool) {
    let mut verdicts = Vec::new();
    let mut done = false;
    for line in console.lines() {
        let Some(rest) = line.trim_end_matches('\r').split("cocoon-devtest: ").nth(1) else {
            continue;
        };
        if rest == "done" {
            done = true;
            continue;
        }
        let Some((name, verdict)) = rest.split_once(' ') else {
            continue;
        };
        let v = if let Some(why) = verdict.strip_prefix("FAIL: ") {
            CheckVerdict::Fail(why.to_string())
        } else if verdict == "ok" {
            CheckVerdict::Ok(String::new())
        } else if let Some(detail) = verdict.strip_prefix("ok: ") {
            CheckVerdict::Ok(detail.to_string())
        } else {
            continue;
        };
        verdicts.push((name.to_string(), v));
    }
    (verdicts, done)
}

/// What a finished (or killed) process left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Finished {
    /// A readable dump for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?} (timed out: {}) after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.timed_out, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdin closed, capturing stdout and stderr, and kills it
/// (SIGKILL) if it is still running after `deadline`.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Finished {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
        timed_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devtest_report_is_parsed() {
        let console = "noise\r\ncocoon-devtest: rng ok: read 64 bytes\r\n\
                       [ 1.0] cocoon-devtest: fs FAIL: no tag\ncocoon-devtest: blk ok\ncocoon-devtest: done\n";
        let (v, done) = devtest_report(console);
        assert!(done);
        assert_eq!(
            v,
            vec![
                ("rng".into(), CheckVerdict::Ok("read 64 bytes".into())),
                ("fs".into(), CheckVerdict::Fail("no tag".into())),
                ("blk".into(), CheckVerdict::Ok(String::new())),
            ]
        );
        assert!(!devtest_report("cocoon-devtest: rng ok").1);
    }

    #[test]
    fn deadline_kills_a_hanging_process() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let f = run_with_deadline(cmd, Duration::from_millis(200));
        assert!(f.timed_out);
        assert!(!f.status.success());
        assert!(f.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn output_and_exit_code_are_captured() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let f = run_with_deadline(cmd, Duration::from_secs(10));
        assert!(!f.timed_out);
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "err\n");
    }
}
