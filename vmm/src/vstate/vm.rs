//! The KVM VM: opening /dev/kvm, the in-kernel irqchip and PIT, memory
//! slots and irqfds.

use std::io;
use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestRam;
use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

/// Errors from KVM VM-level calls.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm does not exist.
    #[error("/dev/kvm does not exist; load the module (modprobe kvm_intel or modprobe kvm_amd), or run inside the nested test host (tests/testhost/run.sh)")]
    Missing,
    /// /dev/kvm exists but cannot be opened.
    #[error("/dev/kvm is not accessible; run as root or add the user to the kvm group")]
    NotPermitted,
    /// Any other failure opening /dev/kvm.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM`.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// `KVM_SET_TSS_ADDR`.
    #[error("KVM_SET_TSS_ADDR failed")]
    SetTss(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP`.
    #[error("KVM_CREATE_IRQCHIP failed")]
    IrqChip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_PIT2`.
    #[error("KVM_CREATE_PIT2 failed")]
    Pit(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SUPPORTED_CPUID`.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_SET_USER_MEMORY_REGION`.
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {slot}")]
    MemoryRegion {
        /// Memory slot.
        slot: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// More memory regions than KVM slots.
    #[error("guest memory has {regions} regions but KVM offers {slots} slots")]
    TooManyRegions {
        /// Regions.
        regions: usize,
        /// Slots.
        slots: usize,
    },
    /// Creating an EventFd.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// `KVM_IRQFD`.
    #[error("KVM_IRQFD failed for gsi {gsi}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_CREATE_VCPU`.
    #[error("KVM_CREATE_VCPU failed for vcpu {index}")]
    CreateVcpu {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// `/dev/kvm` opened before the VMM entered its jail (which has no `/dev`).
static PREOPENED: std::sync::Mutex<Option<Kvm>> = std::sync::Mutex::new(None);

fn open_kvm() -> Result<Kvm, KvmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::NotPermitted,
        _ => KvmError::Open(e),
    })
}

/// Opens `/dev/kvm` now for the next [`Vm::new`] (before a jail hides it).
pub fn preopen_kvm() -> Result<(), KvmError> {
    let kvm = open_kvm()?;
    *PREOPENED.lock().unwrap_or_else(|e| e.into_inner()) = Some(kvm);
    Ok(())
}

/// What a vCPU thread needs to save its own state.
#[derive(Debug, Default)]
pub struct SaveContext {
    /// The MSRs KVM saves (`KVM_GET_MSR_INDEX_LIST`).
    pub msr_list: Vec<u32>,
    /// `KVM_CAP_XSAVE2`'s XSAVE area size (0 without the capability).
    pub xsave_size: usize,
}

/// A KVM VM with its system handle.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    irqchip: bool,
    save: Arc<SaveContext>,
}

impl Vm {
    /// Open /dev/kvm and create a VM; with `irqchip`, also the in-kernel
    /// PIC/IOAPIC/LAPIC and the PIT (speaker port as a dummy).
    pub fn new(irqchip: bool) -> Result<Self, KvmError> {
        let preopened = PREOPENED.lock().unwrap_or_else(|e| e.into_inner()).take();
        let kvm = match preopened {
            Some(kvm) => kvm,
            None => open_kvm()?,
        };
        let fd = kvm.create_vm().map_err(KvmError::CreateVm)?;
        // The TSS needs three pages inside the MMIO hole. KVM's default
        // identity-map page (for real mode on VMX without unrestricted
        // guest) sits right below it at 0xfffbc000, also in the hole, so
        // KVM_SET_IDENTITY_MAP_ADDR is not needed.
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(KvmError::SetTss)?;
        if irqchip {
            fd.create_irq_chip().map_err(KvmError::IrqChip)?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(KvmError::Pit)?;
        }
        let msr_list = match kvm.get_msr_index_list() {
            Ok(list) => list.as_slice().to_vec(),
            Err(e) => {
                // Only snapshots need it; they fail then with a named MSR.
                tracing::warn!(error = %e, "KVM_GET_MSR_INDEX_LIST failed");
                Vec::new()
            }
        };
        let xsave_size = usize::try_from(fd.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        let save = Arc::new(SaveContext {
            msr_list,
            xsave_size,
        });
        Ok(Vm {
            kvm,
            fd,
            irqchip,
            save,
        })
    }

    /// What vCPU threads need to save their state.
    pub fn save_context(&self) -> Arc<SaveContext> {
        self.save.clone()
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Whether the in-kernel irqchip exists.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// The CPUID KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }

    /// Register every guest RAM region as a KVM memory slot.
    pub fn register_memory(&self, ram: &GuestRam) -> Result<(), KvmError> {
        let slots = self.kvm.get_nr_memslots();
        if ram.mem.num_regions() > slots {
            return Err(KvmError::TooManyRegions {
                regions: ram.mem.num_regions(),
                slots,
            });
        }
        for (slot, region) in ram.mem.iter().enumerate() {
            let slot = slot as u32;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned
            // by `ram.mem`, which the VMM keeps alive for as long as the VM
            // (the `Vmm` holds both), so KVM never sees a dangling mapping.
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(|source| KvmError::MemoryRegion { slot, source })?;
        }
        Ok(())
    }

    /// An EventFd that raises `gsi` when written (needs the irqchip);
    /// without an irqchip the EventFd is returned unregistered.
    pub fn irq_eventfd(&self, gsi: u32) -> Result<EventFd, KvmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        if self.irqchip {
            self.fd
                .register_irqfd(&evt, gsi)
                .map_err(|source| KvmError::Irqfd { gsi, source })?;
        }
        Ok(evt)
    }
}
