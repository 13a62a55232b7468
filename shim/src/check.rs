//! `containerd-shim-cocoon-v2 check [--config PATH]`: can this host run
//! cocoon pods? One pass/fail line per item, with the fix.

use std::path::{Path, PathBuf};

use cocoon_vmm::kvm_probe::{probe, KvmFlavor};

use crate::config::Config;

#[derive(Debug, Clone, PartialEq)]
pub struct CheckLine {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: String,
}

/// `name` as given if it has a slash, else looked up on `$PATH`.
pub fn resolve_binary(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 || name.is_absolute() {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn line(name: &'static str, ok: bool, detail: String, fix: &str) -> CheckLine {
    CheckLine {
        name,
        ok,
        detail,
        fix: if ok { String::new() } else { fix.to_string() },
    }
}

pub fn kvm_line(flavor: KvmFlavor) -> CheckLine {
    line(
        "kvm kind",
        flavor.is_hardware(),
        flavor.describe().to_string(),
        match flavor {
            KvmFlavor::Missing => "load kvm_intel or kvm_amd (modprobe), or enable virtualization in the firmware",
            KvmFlavor::NotPermitted => "run as root or add the user to the kvm group",
            _ => "use a machine with VT-x/AMD-V; here, run inside the test host: tests/testhost/run.sh -- ...",
        },
    )
}

pub fn checks(cfg: &Config) -> Vec<CheckLine> {
    let mut out = vec![kvm_line(probe())];
    let access = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    out.push(line(
        "/dev/kvm access",
        access.is_ok(),
        match &access {
            Ok(_) => "read-write".into(),
            Err(e) => e.to_string(),
        },
        "run as root or add the user to the kvm group; modprobe kvm_intel/kvm_amd",
    ));
    for (name, bin, fix) in [
        (
            "virtiofsd",
            &cfg.virtiofsd,
            "apt-get install libcap-ng-dev libseccomp-dev && cargo install virtiofsd (or set virtiofsd in the config)",
        ),
        (
            "cocoon-vmm",
            &cfg.vmm,
            "cargo build --release -p cocoon-vmm and put it on PATH (or set vmm in the config)",
        ),
    ] {
        let found = resolve_binary(bin);
        out.push(line(
            name,
            found.is_some(),
            found
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("{} not found", bin.display())),
            fix,
        ));
    }
    for (name, p, fix) in [
        (
            "kernel",
            &cfg.kernel,
            "make kernel, then set kernel in /etc/cocoon/config.toml",
        ),
        (
            "initrd",
            &cfg.initrd,
            "make initrd, then set initrd in /etc/cocoon/config.toml",
        ),
    ] {
        out.push(line(
            name,
            p.is_file(),
            if p.is_file() {
                p.display().to_string()
            } else {
                format!("{} missing", p.display())
            },
            fix,
        ));
    }
    let v2 = crate::sandbox::cgroup::cgroup2_root();
    out.push(line(
        "cgroup v2",
        v2.is_some(),
        match &v2 {
            Some(p) => format!("mounted at {} (pod cgroups go there)", p.display()),
            None => {
                "no cgroup2 mount: the pod's VMM and virtiofsd need a cgroup to be torn down by"
                    .into()
            }
        },
        "boot the host with systemd.unified_cgroup_hierarchy=1 (or mount cgroup2)",
    ));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    out.push(host_kernel_line(release));
    out
}

/// The shim's host-side path and mount calls need Linux 5.12 (openat2,
/// open_tree, move_mount, mount_setattr); cgroup.kill needs 5.14.
pub fn host_kernel_line(release: &str) -> CheckLine {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let v = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    line(
        "host kernel",
        v >= (5, 12),
        format!(
            "{release}{}",
            if ((5, 12)..(5, 14)).contains(&v) {
                " (no cgroup.kill: pods are killed pid by pid)"
            } else {
                ""
            }
        ),
        "Linux 5.12 or newer is needed (openat2, open_tree, move_mount, mount_setattr)",
    )
}

pub fn render(lines: &[CheckLine]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(&format!(
            "[{}] {:<16} {}\n",
            if l.ok { "pass" } else { "FAIL" },
            l.name,
            l.detail
        ));
        if !l.ok {
            s.push_str(&format!("       fix: {}\n", l.fix));
        }
    }
    s
}

/// Entry point; returns the process exit code (0: every check passed).
pub fn run(args: &[String]) -> i32 {
    let path = match args {
        [] => None,
        [flag, p] if flag == "--config" => Some(PathBuf::from(p)),
        _ => {
            eprintln!("usage: containerd-shim-cocoon-v2 check [--config PATH]");
            return 2;
        }
    };
    let cfg = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config: {}", crate::task::rpc_error::chain(&e));
            return 1;
        }
    };
    let lines = checks(&cfg);
    print!("{}", render(&lines));
    if lines.iter().all(|l| l.ok) {
        println!("cocoon check: all passed");
        0
    } else {
        println!("cocoon check: some checks failed");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_lines_have_fixes() {
        assert!(kvm_line(KvmFlavor::HardwareSvm).ok);
        let l = kvm_line(KvmFlavor::Pvm);
        assert!(!l.ok);
        assert!(l.fix.contains("VT-x"));
        assert!(!kvm_line(KvmFlavor::Missing).fix.is_empty());
    }

    #[test]
    fn missing_files_fail_with_a_fix() {
        let cfg = Config {
            kernel: "/nonexistent/vmlinux".into(),
            virtiofsd: "/nonexistent/virtiofsd".into(),
            ..Config::default()
        };
        let lines = checks(&cfg);
        let k = lines.iter().find(|l| l.name == "kernel").unwrap();
        assert!(!k.ok && k.fix.contains("make kernel"));
        let v = lines.iter().find(|l| l.name == "virtiofsd").unwrap();
        assert!(!v.ok && v.fix.contains("cargo install virtiofsd"));
        assert!(render(&lines).contains("FAIL"));
    }

    #[test]
    fn host_kernel_version() {
        assert!(host_kernel_line("6.1.0-18-amd64").ok);
        assert!(host_kernel_line("5.12.0").ok);
        assert!(host_kernel_line("5.13.2").detail.contains("cgroup.kill"));
        let old = host_kernel_line("5.10.0-28-amd64");
        assert!(!old.ok && old.fix.contains("5.12"));
        assert!(!host_kernel_line("garbage").ok);
    }

    #[test]
    fn resolves_on_path() {
        assert!(resolve_binary(Path::new("sh")).is_some());
        assert!(resolve_binary(Path::new("/nonexistent/x")).is_none());
    }
}
