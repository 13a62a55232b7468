//! What to run: the VM's shape, its boot source and where the console goes.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Smallest guest that can boot our Linux kernel.
pub const MIN_KERNEL_MEMORY_MIB: u64 = 32;
/// Smallest guest for a raw payload (room for the boot structures).
pub const MIN_PAYLOAD_MEMORY_MIB: u64 = 2;
/// Most vCPUs per VM (the guest kernel's `NR_CPUS`).
pub const MAX_VCPUS: u8 = 64;
/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Default cap of a console file and its `.1` together (1 MiB).
pub const DEFAULT_CONSOLE_LIMIT: u64 = crate::bounded_log::DEFAULT_LIMIT;

/// Errors in a `VmConfig`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count outside `1..=MAX_VCPUS`.
    #[error("{0} vCPUs requested; use --vcpus between 1 and {MAX_VCPUS}")]
    VcpuCount(u32),
    /// Memory below the minimum.
    #[error("{got} MiB of guest memory is too small; use --memory {min} or more")]
    MemoryTooSmall {
        /// Requested MiB.
        got: u64,
        /// Minimum MiB.
        min: u64,
    },
    /// Memory above what the host has.
    #[error("{got} MiB of guest memory is more than this host's {host} MiB; lower --memory")]
    MemoryTooLarge {
        /// Requested MiB.
        got: u64,
        /// Host RAM in MiB.
        host: u64,
    },
    /// A console size limit of 0.
    #[error("--console-limit: must be at least 1")]
    ConsoleLimit,
    /// A vsock CID that is reserved or too large.
    #[error("vsock cid {0} is invalid; use a cid between 3 and 4294967295")]
    VsockCid(u64),
    /// A raw payload that does not fit where it was asked to go.
    #[error("raw payload of {len} bytes at {addr:#x} does not fit in guest memory or overlaps the boot structures")]
    PayloadPlacement {
        /// Load address.
        addr: u64,
        /// Length.
        len: usize,
    },
}

/// How a raw payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode: `CS` based at the load address (16-byte aligned,
    /// below 640 KiB), `IP` = 0, other segments based at 0.
    RealMode,
    /// 64-bit mode with the boot GDT and identity page tables (first 1 GiB).
    LongMode,
}

/// A hand-written guest program (for tests and experiments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPayload {
    /// Machine code.
    pub code: Vec<u8>,
    /// Guest physical load address; also the entry point.
    pub load_addr: u64,
    /// CPU mode at entry.
    pub mode: EntryMode,
}

/// A Linux kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd (cpio, possibly compressed).
    pub initrd: Option<PathBuf>,
    /// Appended to the base command line.
    pub cmdline_extra: Option<String>,
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// A Linux kernel.
    Kernel(KernelBoot),
    /// A raw payload (allowed on PVM: no kernel-mode speed needed).
    Payload(RawPayload),
}

/// An in-memory console sink that tests can read back.
#[derive(Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBuffer({} bytes)", self.contents().len())
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("console buffer lock poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the guest's serial console output goes.
#[derive(Debug, Clone, Default)]
pub enum SerialOutput {
    /// Our standard output.
    #[default]
    Stdout,
    /// A file, created or truncated with mode 0600 (not through a symlink)
    /// and capped at `VmConfig::console_limit` bytes together with its
    /// `.1` (`bounded_log::RingFile`).
    File(PathBuf),
    /// Dropped.
    None,
    /// An in-memory buffer.
    Buffer(SharedBuffer),
}

/// Everything needed to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// What to boot.
    pub boot: BootSource,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Console output.
    pub serial: SerialOutput,
    /// Most bytes a `SerialOutput::File` console keeps (the file and its
    /// `.1` together, newest bytes); at least 1.
    pub console_limit: u64,
    /// Feed our stdin into the serial port (only when it is a terminal).
    pub serial_input: bool,
    /// Create the in-kernel irqchip (LAPIC/IOAPIC/PIC) and PIT. Without it,
    /// `HLT` exits to us and ends the VM with `ExitReason::Halted`; only
    /// useful for raw payloads.
    pub irqchip: bool,
    /// Boot a Linux kernel even on PVM / software KVM (very slow).
    pub allow_slow_kvm: bool,
    /// A virtio-vsock device with a hybrid Unix-socket backend.
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices (each connects to a running virtiofsd).
    pub fs: Vec<crate::devices::virtio::fs::FsConfig>,
}

/// A vsock device: the guest's CID and the host's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// Guest CID (3 or more).
    pub cid: u64,
    /// Listening socket for host-initiated connections; guest-initiated
    /// ones go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

impl VmConfig {
    /// A kernel boot with the defaults (1 vCPU, 128 MiB, console on stdout).
    pub fn kernel(kernel: impl Into<PathBuf>) -> Self {
        Self::with_boot(BootSource::Kernel(KernelBoot {
            kernel: kernel.into(),
            initrd: None,
            cmdline_extra: None,
        }))
    }

    /// A raw payload with the defaults but 16 MiB of memory.
    pub fn payload(code: Vec<u8>, load_addr: u64, mode: EntryMode) -> Self {
        let mut cfg = Self::with_boot(BootSource::Payload(RawPayload {
            code,
            load_addr,
            mode,
        }));
        cfg.memory_mib = 16;
        cfg
    }

    fn with_boot(boot: BootSource) -> Self {
        VmConfig {
            boot,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial: SerialOutput::Stdout,
            console_limit: DEFAULT_CONSOLE_LIMIT,
            serial_input: false,
            irqchip: true,
            allow_slow_kvm: false,
            vsock: None,
            fs: Vec::new(),
        }
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Check the numbers against the limits and this host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with_host_mib(host_memory_mib())
    }

    /// `validate` with the host's RAM given (for tests).
    pub fn validate_with_host_mib(&self, host_mib: Option<u64>) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(u32::from(self.vcpus)));
        }
        let min = match self.boot {
            BootSource::Kernel(_) => MIN_KERNEL_MEMORY_MIB,
            BootSource::Payload(_) => MIN_PAYLOAD_MEMORY_MIB,
        };
        if self.memory_mib < min {
            return Err(ConfigError::MemoryTooSmall {
                got: self.memory_mib,
                min,
            });
        }
        if let Some(host) = host_mib {
            if self.memory_mib > host {
                return Err(ConfigError::MemoryTooLarge {
                    got: self.memory_mib,
                    host,
                });
            }
        }
        if self.console_limit == 0 {
            return Err(ConfigError::ConsoleLimit);
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid > u64::from(u32::MAX) {
                return Err(ConfigError::VsockCid(v.cid));
            }
        }
        if let BootSource::Payload(p) = &self.boot {
            let end = p.load_addr.checked_add(p.code.len() as u64);
            let low_end = crate::arch::x86_64::layout::low_ram_end(self.memory_bytes());
            let fits = matches!(end, Some(end) if end <= low_end);
            // Keep clear of the GDT/IDT and zero page..page tables.
            let clear = p.load_addr >= crate::arch::x86_64::layout::PDE_START + 0x1000
                || end.is_some_and(|e| e <= crate::arch::x86_64::layout::BOOT_GDT_START);
            let mode_ok = match p.mode {
                EntryMode::RealMode => {
                    p.load_addr % 16 == 0
                        && end.is_some_and(|e| e <= crate::arch::x86_64::layout::EBDA_START)
                }
                EntryMode::LongMode => true,
            };
            if !fits || !clear || !mode_ok || p.code.is_empty() {
                return Err(ConfigError::PayloadPlacement {
                    addr: p.load_addr,
                    len: p.code.len(),
                });
            }
        }
        Ok(())
    }
}

/// The host's total RAM in MiB, from `/proc/meminfo`.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cfg = VmConfig::kernel("/vmlinux");
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.memory_mib, 128);
        assert!(cfg.irqchip);
        assert_eq!(cfg.console_limit, 1 << 20);
        assert!(cfg.validate_with_host_mib(Some(1024)).is_ok());
    }

    #[test]
    fn console_limit_zero_is_refused() {
        let mut cfg = VmConfig::kernel("/vmlinux");
        cfg.console_limit = 0;
        let err = cfg.validate_with_host_mib(None).unwrap_err();
        assert_eq!(err.to_string(), "--console-limit: must be at least 1");
        cfg.console_limit = 1;
        assert!(cfg.validate_with_host_mib(None).is_ok());
    }

    #[test]
    fn vcpu_limits() {
        let mut cfg = VmConfig::kernel("/vmlinux");
        cfg.vcpus = 0;
        assert_eq!(
            cfg.validate_with_host_mib(None),
            Err(ConfigError::VcpuCount(0))
        );
        cfg.vcpus = MAX_VCPUS + 1;
        assert!(cfg.validate_with_host_mib(None).is_err());
        cfg.vcpus = MAX_VCPUS;
        assert!(cfg.validate_with_host_mib(None).is_ok());
    }

    #[test]
    fn memory_limits() {
        let mut cfg = VmConfig::kernel("/vmlinux");
        cfg.memory_mib = 16;
        let err = cfg.validate_with_host_mib(None).unwrap_err();
        assert_eq!(err, ConfigError::MemoryTooSmall { got: 16, min: 32 });
        assert!(err.to_string().contains("--memory 32"));
        cfg.memory_mib = 4096;
        let err = cfg.validate_with_host_mib(Some(2048)).unwrap_err();
        assert!(matches!(err, ConfigError::MemoryTooLarge { .. }));
        assert!(err.to_string().contains("lower --memory"));
    }

    #[test]
    fn payload_placement() {
        let ok = VmConfig::payload(vec![0xf4], 0x1_0000, EntryMode::RealMode);
        assert!(ok.validate_with_host_mib(None).is_ok());
        let over_tables = VmConfig::payload(vec![0xf4], 0x9000, EntryMode::LongMode);
        assert!(matches!(
            over_tables.validate_with_host_mib(None),
            Err(ConfigError::PayloadPlacement { .. })
        ));
        let past_end = VmConfig::payload(vec![0xf4; 16], (16 << 20) - 8, EntryMode::LongMode);
        assert!(past_end.validate_with_host_mib(None).is_err());
        let unaligned = VmConfig::payload(vec![0xf4], 0x1_0008, EntryMode::RealMode);
        assert!(unaligned.validate_with_host_mib(None).is_err());
        let too_high = VmConfig::payload(vec![0xf4], 0x10_0000, EntryMode::RealMode);
        assert!(too_high.validate_with_host_mib(None).is_err());
        let empty = VmConfig::payload(vec![], 0x1_0000, EntryMode::LongMode);
        assert!(empty.validate_with_host_mib(None).is_err());
    }

    #[test]
    fn shared_buffer_collects() {
        use std::io::Write;
        let buf = SharedBuffer::new();
        let mut w = buf.clone();
        w.write_all(b"hi").unwrap();
        assert_eq!(buf.contents(), b"hi");
    }
}
