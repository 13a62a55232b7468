//! Shim configuration: one TOML file, every field defaulted.
//!
//! Looked up in this order: the runtime options' `ConfigPath` (containerd's
//! `options` table), `COCOON_CONFIG`, `/etc/cocoon/config.toml`. A missing
//! default file means defaults; a file that was asked for by name must exist.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cocoon/config.toml";
pub const CONFIG_ENV: &str = "COCOON_CONFIG";
/// The first of the uids given to jailed VMMs: far above login users and
/// the usual subordinate-id ranges of user namespaces.
pub const DEFAULT_VMM_UID_FIRST: u32 = 3_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `toml`'s message names the key and the line.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: &'static str,
        reason: String,
    },
}

/// Which way a pod runs: in a micro-VM, or (tests, debugging) as a
/// `cocoon-agent` on the host without any isolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Vm,
    Local,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub backend: BackendKind,
    /// Guest kernel (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Guest initrd holding the agent as /init.
    pub initrd: PathBuf,
    pub vmm: PathBuf,
    pub virtiofsd: PathBuf,
    /// The agent binary, for the local backend.
    pub agent: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Appended to the kernel command line.
    pub kernel_params: String,
    /// Extra virtiofsd arguments.
    pub virtiofsd_args: Vec<String>,
    /// Where pod directories live.
    pub run_dir: PathBuf,
    /// How long to wait for the agent to answer after the VM starts.
    pub agent_timeout_secs: u64,
    /// Shim log level (tracing filter syntax).
    pub log_level: String,
    /// Guest serial console to `<pod>/console.log` (off: no console).
    pub debug_console: bool,
    /// Cap on the console log (`console.log` + `console.log.1`), bytes.
    pub console_limit_bytes: u64,
    /// Cap on the VMM's own log (`vmm.log` + `vmm.log.1`), bytes.
    pub vmm_log_limit_bytes: u64,
    /// Deadline of every agent call but the long polls (Wait, OOM events).
    /// A Kill or Delete whose call runs out stops the pod's VM.
    pub agent_call_timeout_secs: u64,
    /// Run each pod's VMM jailed: its own PID, mount, IPC, UTS and network
    /// namespaces, `<pod>/jail` as its root, no capabilities, a uid of its
    /// own from `vmm_uid_first..+vmm_uid_count` (also its gid).
    pub vmm_jail: bool,
    pub vmm_uid_first: u32,
    pub vmm_uid_count: u32,
    /// The VMM's seccomp filters: "enforce" (a call outside a thread's
    /// allow-list kills it with SIGSYS), "audit" (logged in its vmm.log,
    /// not killed), "off" (debugging only).
    pub vmm_seccomp: String,
    /// Start pods from a template VM (booted once per kernel, initrd, VMM,
    /// vCPUs, memory and kernel parameters, saved with its agent ready)
    /// instead of booting each. Pods with a network interface boot.
    pub template: bool,
    /// Where templates are kept (one directory per key, root only).
    pub template_dir: PathBuf,
    /// How a restored VM gets its RAM: "lazy" (a page when the guest
    /// first touches it: the pod holds only what it uses) or "eager" (the
    /// whole memory image copied before the guest runs: no faults later).
    pub template_memory: String,
    /// With lazy template memory: every restored VM maps the template
    /// kernel's text and the pages of its agent binary (the initrd's
    /// files) from the template's memory image (one copy in the
    /// host's page cache for all pods of the template, never copied)
    /// instead of copying it into its own RAM. Off: each VM copies what it
    /// touches (no physical page shared between tenants' guests; see the
    /// threat model).
    pub template_share_text: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendKind::Vm,
            kernel: "/usr/share/cocoon/vmlinux".into(),
            initrd: "/usr/share/cocoon/agent-initrd.cpio".into(),
            vmm: "cocoon-vmm".into(),
            virtiofsd: "virtiofsd".into(),
            agent: "cocoon-agent".into(),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            // virtiofsd's own sandbox (namespaces + pivot_root into the
            // export) and seccomp filter, named rather than left implicit.
            virtiofsd_args: vec![
                "--cache=auto".into(),
                "--sandbox=namespace".into(),
                "--seccomp=kill".into(),
            ],
            run_dir: "/run/cocoon".into(),
            agent_timeout_secs: 60,
            log_level: "info".into(),
            debug_console: true,
            console_limit_bytes: 1 << 20,
            vmm_log_limit_bytes: 1 << 20,
            agent_call_timeout_secs: 30,
            vmm_jail: true,
            vmm_uid_first: DEFAULT_VMM_UID_FIRST,
            vmm_uid_count: 65536,
            vmm_seccomp: "enforce".into(),
            template: true,
            template_dir: "/var/cache/cocoon/templates".into(),
            template_memory: "lazy".into(),
            template_share_text: true,
        }
    }
}

impl Config {
    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| ConfigError::Invalid {
            path: path.to_string(),
            field,
            reason: reason.to_string(),
        };
        if self.vcpus == 0 || self.vcpus > 32 {
            return Err(bad("vcpus", "must be 1..=32"));
        }
        if self.memory_mib < 64 {
            return Err(bad("memory_mib", "must be at least 64"));
        }
        if self.agent_timeout_secs == 0 {
            return Err(bad("agent_timeout_secs", "must be at least 1"));
        }
        if self.console_limit_bytes < 4096 {
            return Err(bad("console_limit_bytes", "must be at least 4096"));
        }
        if self.vmm_log_limit_bytes < 4096 {
            return Err(bad("vmm_log_limit_bytes", "must be at least 4096"));
        }
        if self.agent_call_timeout_secs == 0 {
            return Err(bad("agent_call_timeout_secs", "must be at least 1"));
        }
        if !matches!(self.vmm_seccomp.as_str(), "enforce" | "audit" | "off") {
            return Err(bad(
                "vmm_seccomp",
                "must be \"enforce\", \"audit\" or \"off\"",
            ));
        }
        if self.vmm_uid_first == 0 || self.vmm_uid_count == 0 {
            return Err(bad(
                "vmm_uid_first",
                "the range must be non-empty and not start at 0",
            ));
        }
        if u64::from(self.vmm_uid_first) + u64::from(self.vmm_uid_count) > u64::from(u32::MAX) {
            return Err(bad("vmm_uid_count", "the range must end below 4294967295"));
        }
        if !self.run_dir.is_absolute() {
            return Err(bad("run_dir", "must be an absolute path"));
        }
        if !self.template_dir.is_absolute() {
            return Err(bad("template_dir", "must be an absolute path"));
        }
        if !matches!(self.template_memory.as_str(), "lazy" | "eager") {
            return Err(bad("template_memory", "must be \"lazy\" or \"eager\""));
        }
        Ok(())
    }

    /// Reads `path`; a missing file is an error only when `required`.
    pub fn load_file(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The configuration for a shim: `config_path` from the runtime
    /// options first, then `COCOON_CONFIG`, then the default file.
    pub fn load(config_path: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(p) = config_path.filter(|p| !p.as_os_str().is_empty()) {
            return Config::load_file(p, true);
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Config::load_file(Path::new(&p), true);
        }
        Config::load_file(Path::new(DEFAULT_CONFIG_PATH), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("", "t").unwrap(), Config::default());
    }

    #[test]
    fn fields_override() {
        let c = Config::parse(
            "backend = \"local\"\nvcpus = 2\nmemory_mib = 512\nkernel = \"/k\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.backend, BackendKind::Local);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Config::default().initrd);
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse("vcpus = \"two\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
        let e = Config::parse("vcpus = 0", "f.toml").unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
        let e = Config::parse("memroy_mib = 1", "f.toml").unwrap_err();
        assert!(e.to_string().contains("memroy_mib"), "{e}");
        let e = Config::parse("backend = \"xen\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
        let e = Config::parse("vmm_seccomp = \"lax\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("vmm_seccomp"), "{e}");
        let e = Config::parse("template_memory = \"sometimes\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("template_memory"), "{e}");
        let e = Config::parse("template_share_text = \"yes\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("template_share_text"), "{e}");
        assert!(Config::default().template_share_text);
        assert!(
            !Config::parse("template_share_text = false", "f.toml")
                .unwrap()
                .template_share_text
        );
        let e = Config::parse("vmm_uid_first = 0", "f.toml").unwrap_err();
        assert!(e.to_string().contains("vmm_uid_first"), "{e}");
        let e = Config::parse("vmm_uid_first = 4294967000\nvmm_uid_count = 1000", "f.toml")
            .unwrap_err();
        assert!(e.to_string().contains("vmm_uid_count"), "{e}");
    }

    #[test]
    fn the_vmm_is_jailed_and_filtered_by_default() {
        let c = Config::default();
        assert!(c.vmm_jail);
        assert_eq!(c.vmm_seccomp, "enforce");
        assert_eq!(c.vmm_uid_first, DEFAULT_VMM_UID_FIRST);
    }

    #[test]
    fn missing_default_file_is_defaults_but_named_file_must_exist() {
        let p = Path::new("/nonexistent/cocoon.toml");
        assert_eq!(Config::load_file(p, false).unwrap(), Config::default());
        assert!(Config::load_file(p, true).is_err());
    }
}
