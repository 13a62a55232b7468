//! Saving and restoring one vCPU: everything KVM holds for it.
//!
//! Saved from the vCPU's own thread while it is parked outside `KVM_RUN`
//! (after a re-entry with `immediate_exit` completed any pending port or
//! MMIO access, so the registers are consistent). Restored into a fresh
//! vCPU before it first runs, in the order KVM needs: CPUID first (it
//! decides which MSRs and XSAVE components exist), the LAPIC before the
//! MSRs (a TSC-deadline write is dropped unless the LAPIC timer is in
//! TSC-deadline mode), the TSC before the TSC deadline (both in the MSR
//! list, in KVM's index order) and the pending events last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// KVM takes at most this many MSRs per `KVM_GET_MSRS`/`KVM_SET_MSRS`.
const MSR_CHUNK: usize = 256;

/// Errors while saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A `KVM_GET_*` ioctl failed.
    #[error("{what} failed on vcpu {index}")]
    Get {
        /// The ioctl.
        what: &'static str,
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A `KVM_SET_*` ioctl failed.
    #[error("{what} failed on vcpu {index} while restoring it")]
    Set {
        /// The ioctl.
        what: &'static str,
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Building an MSR or CPUID list failed.
    #[error("cannot build the {what} list of vcpu {index}")]
    List {
        /// Which list.
        what: &'static str,
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// KVM refused an MSR of the saved list.
    #[error("KVM refused to restore MSR {msr:#x} of vcpu {index}: the snapshot was taken on a host with other MSRs")]
    MsrRefused {
        /// vCPU index.
        index: u8,
        /// The MSR.
        msr: u32,
    },
    /// The guest's XSAVE area is bigger than `KVM_GET_XSAVE` returns.
    #[error("this host's XSAVE area is {size} bytes; snapshots support at most 4096 (no AMX)")]
    XsaveTooLarge {
        /// `KVM_CAP_XSAVE2`'s size.
        size: usize,
    },
}

/// Everything KVM holds for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU index.
    pub index: u8,
    /// The CPUID it was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR KVM could read, in KVM's index order.
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (legacy 4 KiB layout).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// The guest TSC frequency, when KVM reports one.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .field("cpuid", &self.cpuid.len())
            .finish_non_exhaustive()
    }
}

impl VcpuState {
    /// Read the state of vCPU `index` through `fd`. `msr_list` is KVM's
    /// list of MSRs to save (`KVM_GET_MSR_INDEX_LIST`); the ones KVM
    /// cannot read for this vCPU are left out. `xsave_size` is
    /// `KVM_CAP_XSAVE2`'s answer (0 when the capability is absent).
    pub fn save(
        fd: &VcpuFd,
        index: u8,
        msr_list: &[u32],
        xsave_size: usize,
    ) -> Result<Self, VcpuStateError> {
        if xsave_size > std::mem::size_of::<kvm_xsave>() {
            return Err(VcpuStateError::XsaveTooLarge { size: xsave_size });
        }
        let get = |what| {
            move |source| VcpuStateError::Get {
                what,
                index,
                source,
            }
        };
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(get("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        Ok(VcpuState {
            index,
            cpuid,
            msrs: read_msrs(fd, index, msr_list)?,
            regs: fd.get_regs().map_err(get("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(get("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(get("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(get("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(get("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(get("KVM_GET_LAPIC"))?,
            mp_state: fd.get_mp_state().map_err(get("KVM_GET_MP_STATE"))?,
            events: fd.get_vcpu_events().map_err(get("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Write this state into a fresh vCPU that has not run yet.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let index = self.index;
        let set = |what| {
            move |source| VcpuStateError::Set {
                what,
                index,
                source,
            }
        };
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|source| VcpuStateError::List {
            what: "CPUID",
            index,
            source,
        })?;
        fd.set_cpuid2(&cpuid).map_err(set("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz {
            // Same frequency as at save time; hosts that cannot scale the
            // TSC refuse a different one, which only matters across hosts.
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz).map_err(set("KVM_SET_TSC_KHZ"))?;
            }
        }
        fd.set_mp_state(self.mp_state)
            .map_err(set("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(set("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(set("KVM_SET_SREGS"))?;
        // SAFETY: `self.xsave` is a 4 KiB `kvm_xsave` as `KVM_GET_XSAVE`
        // returned it; `save` refused hosts whose XSAVE area is larger, so
        // KVM reads no more than the struct holds.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(set("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(set("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(set("KVM_SET_DEBUGREGS"))?;
        // The LAPIC before the MSRs: KVM drops a TSC-deadline write while
        // the LAPIC timer is not in TSC-deadline mode, and the guest would
        // wait for a timer interrupt that never comes.
        fd.set_lapic(&self.lapic).map_err(set("KVM_SET_LAPIC"))?;
        write_msrs(fd, index, &self.msrs)?;
        fd.set_vcpu_events(&self.events)
            .map_err(set("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// Read `list` in chunks; an MSR KVM cannot read for this vCPU (it stops
/// at it) is skipped.
fn read_msrs(fd: &VcpuFd, index: u8, list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|source| VcpuStateError::List {
            what: "MSR",
            index,
            source,
        })?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Get {
                what: "KVM_GET_MSRS",
                index,
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // Skip the MSR KVM stopped at, if it stopped early.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(out)
}

fn write_msrs(fd: &VcpuFd, index: u8, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    for chunk in entries.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|source| VcpuStateError::List {
            what: "MSR",
            index,
            source,
        })?;
        let written = fd.set_msrs(&msrs).map_err(|source| VcpuStateError::Set {
            what: "KVM_SET_MSRS",
            index,
            source,
        })?;
        if written < chunk.len() {
            return Err(VcpuStateError::MsrRefused {
                index,
                msr: chunk[written].index,
            });
        }
    }
    Ok(())
}
