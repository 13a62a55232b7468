//! cocoon-vmm: a small KVM virtual machine monitor that boots the cocoon
//! guest kernel with a serial console, an i8042 (for reset) and
//! virtio-mmio devices, with guest RAM in a memfd.
//!
//! ```no_run
//! use cocoon_vmm::{Vmm, VmConfig};
//! let mut config = VmConfig::kernel("/var/cache/cocoon/kernel/vmlinux");
//! config.memory_mib = 256;
//! let reason = Vmm::new(config)?.run()?;
//! std::process::exit(reason.exit_code());
//! # Ok::<(), cocoon_vmm::VmmError>(())
//! ```

#![deny(missing_docs)]

pub mod arch;
pub mod boot;
pub mod bounded_log;
pub mod cmdline;
pub mod config;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod kvm_probe;
pub mod rate_limit;
pub mod seccomp;
pub mod snapshot;
#[cfg(debug_assertions)]
pub mod test_trigger;
pub mod threads;
pub mod vmm;
pub mod vstate;

pub use config::{
    BootSource, EntryMode, KernelBoot, RawPayload, SerialOutput, SharedBuffer, VmConfig,
    VsockConfig,
};
pub use exit::ExitReason;
pub use kvm_probe::{probe as probe_kvm, KvmFlavor};
pub use vmm::{LoadedSnapshot, RestoreMemory, RunningVm, Vmm, VmmBuilder, VmmError, WorkingSet};
