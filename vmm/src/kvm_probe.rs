//! What kind of KVM this host offers.
//!
//! `/dev/kvm` can be backed by hardware virtualization (Intel VT-x or AMD-V)
//! or by PVM (`kvm_pvm`), which runs guest user mode natively but interprets
//! guest kernel mode at roughly a million instructions per second. Tiny test
//! payloads run fine on PVM; a Linux kernel does not boot at a useful speed.
//! This probe is shared with other binaries (`cocoon check`).

use std::fs;
use std::path::{Path, PathBuf};

/// The virtualization backend that `/dev/kvm` would use on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmFlavor {
    /// KVM backed by Intel VT-x.
    HardwareVmx,
    /// KVM backed by AMD-V (SVM).
    HardwareSvm,
    /// KVM backed by PVM: kernel-mode guest code is interpreted (slow).
    Pvm,
    /// `/dev/kvm` exists but the CPU shows neither vmx nor svm and no PVM
    /// module is loaded (an unusual emulator); treated like PVM.
    SoftwareUnknown,
    /// `/dev/kvm` is missing.
    Missing,
    /// `/dev/kvm` exists but cannot be opened read-write by this user.
    NotPermitted,
}

impl KvmFlavor {
    /// True when Linux guests boot at hardware speed.
    pub fn is_hardware(&self) -> bool {
        matches!(self, KvmFlavor::HardwareVmx | KvmFlavor::HardwareSvm)
    }

    /// True when `/dev/kvm` can run guests at all (possibly slowly).
    pub fn is_usable(&self) -> bool {
        !matches!(self, KvmFlavor::Missing | KvmFlavor::NotPermitted)
    }

    /// A one-line human description.
    pub fn describe(&self) -> &'static str {
        match self {
            KvmFlavor::HardwareVmx => "kvm with intel vt-x",
            KvmFlavor::HardwareSvm => "kvm with amd-v (svm)",
            KvmFlavor::Pvm => "kvm_pvm (guest kernel mode is interpreted, ~1M instructions/s)",
            KvmFlavor::SoftwareUnknown => "kvm without vmx/svm cpu flags (software backend)",
            KvmFlavor::Missing => "/dev/kvm is missing",
            KvmFlavor::NotPermitted => "/dev/kvm is not accessible to this user",
        }
    }
}

/// Where the probe looks; overridable for tests.
#[derive(Debug, Clone)]
pub struct ProbePaths {
    /// The KVM device node.
    pub dev_kvm: PathBuf,
    /// The sysfs directory that exists when the PVM module is loaded.
    pub pvm_module: PathBuf,
    /// The cpuinfo file with the `flags` lines.
    pub cpuinfo: PathBuf,
}

impl Default for ProbePaths {
    fn default() -> Self {
        ProbePaths {
            dev_kvm: PathBuf::from("/dev/kvm"),
            pvm_module: PathBuf::from("/sys/module/kvm_pvm"),
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
        }
    }
}

/// Probe this host's KVM flavour using the standard paths.
pub fn probe() -> KvmFlavor {
    probe_with(&ProbePaths::default())
}

/// Probe using the given paths.
pub fn probe_with(paths: &ProbePaths) -> KvmFlavor {
    if !paths.dev_kvm.exists() {
        return KvmFlavor::Missing;
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths.dev_kvm)
        .is_err()
    {
        return KvmFlavor::NotPermitted;
    }
    if paths.pvm_module.exists() {
        return KvmFlavor::Pvm;
    }
    match cpu_flags(&paths.cpuinfo) {
        Some(flags) if flags.iter().any(|f| f == "vmx") => KvmFlavor::HardwareVmx,
        Some(flags) if flags.iter().any(|f| f == "svm") => KvmFlavor::HardwareSvm,
        _ => KvmFlavor::SoftwareUnknown,
    }
}

/// The flags of the first CPU listed in a cpuinfo file.
fn cpu_flags(cpuinfo: &Path) -> Option<Vec<String>> {
    let text = fs::read_to_string(cpuinfo).ok()?;
    let line = text.lines().find(|l| l.starts_with("flags"))?;
    let (_, flags) = line.split_once(':')?;
    Some(flags.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probe inputs in a directory that is removed when the first element
    /// of the pair is dropped.
    fn fixture(name: &str, kvm: bool, pvm: bool, flags: &str) -> (tempfile::TempDir, ProbePaths) {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("cocoon-probe-{name}-"))
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let dev_kvm = dir.join("kvm");
        if kvm {
            fs::write(&dev_kvm, b"").unwrap();
        }
        let pvm_module = dir.join("kvm_pvm");
        if pvm {
            fs::create_dir_all(&pvm_module).unwrap();
        }
        let cpuinfo = dir.join("cpuinfo");
        fs::write(&cpuinfo, format!("processor\t: 0\nflags\t\t: {flags}\n")).unwrap();
        (
            tmp,
            ProbePaths {
                dev_kvm,
                pvm_module,
                cpuinfo,
            },
        )
    }

    #[test]
    fn detects_each_flavour() {
        assert_eq!(
            probe_with(&fixture("vmx", true, false, "fpu vmx sse").1),
            KvmFlavor::HardwareVmx
        );
        assert_eq!(
            probe_with(&fixture("svm", true, false, "fpu svm").1),
            KvmFlavor::HardwareSvm
        );
        assert_eq!(
            probe_with(&fixture("pvm", true, true, "fpu svm").1),
            KvmFlavor::Pvm
        );
        assert_eq!(
            probe_with(&fixture("sw", true, false, "fpu sse").1),
            KvmFlavor::SoftwareUnknown
        );
        assert_eq!(
            probe_with(&fixture("none", false, false, "fpu").1),
            KvmFlavor::Missing
        );
    }

    #[test]
    fn hardware_and_usable() {
        assert!(KvmFlavor::HardwareSvm.is_hardware());
        assert!(!KvmFlavor::Pvm.is_hardware());
        assert!(KvmFlavor::Pvm.is_usable());
        assert!(!KvmFlavor::Missing.is_usable());
    }
}
