//! vCPU configuration and the per-vCPU run loop.
//!
//! Stopping: the main thread sets `ExitState::stopping` and sends
//! `SIGRTMIN` to each vCPU thread. The handler sets `immediate_exit` in the
//! thread's `kvm_run`, so a thread about to enter `KVM_RUN` returns `EINTR`
//! at once instead of sleeping in the guest (the race a plain signal has).

use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::{Arc, Once};

use kvm_bindings::{kvm_run, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::pause::PauseGate;
use super::vcpu_state::{VcpuState, VcpuStateError};
use super::vm::{KvmError, SaveContext, Vm};
use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::config::EntryMode;
use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitState};

/// Errors while configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_SET_CPUID2`.
    #[error("KVM_SET_CPUID2 failed on vcpu {index}")]
    SetCpuid {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Creating the vCPU.
    #[error(transparent)]
    Create(#[from] KvmError),
    /// Setting MSRs.
    #[error("cannot set the boot MSRs")]
    Msrs(#[from] msr::MsrError),
    /// Setting registers.
    #[error("cannot set the boot registers")]
    Regs(#[from] regs::RegsError),
    /// Programming the LAPIC.
    #[error("cannot program the local APIC")]
    Lapic(#[from] interrupts::InterruptsError),
    /// Installing the kick signal handler.
    #[error("cannot install the vcpu kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mapped `kvm_run`, set by the
        // vCPU loop before it first enters KVM_RUN and cleared before the
        // VcpuFd (and its mapping) is dropped; a volatile byte store is
        // async-signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

/// Install the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // The handler only does a volatile store through a thread-local
        // pointer, which is async-signal-safe.
        result = register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// Entry address.
    pub addr: u64,
    /// CPU mode.
    pub mode: EntryMode,
}

/// One vCPU, before it runs.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    save: Arc<SaveContext>,
}

impl Vcpu {
    /// Create vCPU `index` in `vm`.
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| KvmError::CreateVcpu { index, source })?;
        Ok(Vcpu {
            index,
            fd,
            save: vm.save_context(),
        })
    }

    /// The KVM vCPU (to restore a saved state into it).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The vCPU index (also its APIC id).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU; boot registers only for
    /// the boot vCPU (`entry` is `Some`). With the in-kernel LAPIC the other
    /// vCPUs wait for INIT/SIPI from the guest, which resets their registers.
    pub fn configure(
        &self,
        supported: &CpuId,
        vcpu_count: u8,
        irqchip: bool,
        entry: Option<BootEntry>,
    ) -> Result<(), VcpuError> {
        let mut cpuid = supported.clone();
        cpuid::normalize(&mut cpuid, self.index, vcpu_count);
        if tracing::enabled!(tracing::Level::TRACE) {
            for e in cpuid.as_slice() {
                tracing::trace!(
                    vcpu = self.index,
                    "cpuid {:#x}/{:#x}: eax={:#x} ebx={:#x} ecx={:#x} edx={:#x}",
                    e.function,
                    e.index,
                    e.eax,
                    e.ebx,
                    e.ecx,
                    e.edx
                );
            }
        }
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::SetCpuid {
                index: self.index,
                source,
            })?;
        msr::setup_msrs(&self.fd)?;
        if irqchip {
            interrupts::set_lint(&self.fd)?;
        }
        if let Some(entry) = entry {
            match entry.mode {
                EntryMode::LongMode => regs::setup_long_mode(&self.fd, entry.addr)?,
                EntryMode::RealMode => regs::setup_real_mode(&self.fd, entry.addr)?,
            }
        } else {
            self.fd
                .set_fpu(&regs::boot_fpu())
                .map_err(regs::RegsError::SetFpu)?;
        }
        Ok(())
    }

    /// Run until the VM stops; report why through `exit`. While `gate`
    /// asks for a pause, the thread saves its state there and sleeps.
    pub fn run(
        mut self,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitState>,
        gate: Arc<PauseGate>,
    ) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run_ptr));
        let index = self.index;
        while !exit.stopping() {
            if gate.requested() {
                let state = self.save_parked();
                gate.park(state, &|| exit.stopping());
                continue;
            }
            if let Some(reason) = self.step(&pio, &mmio, &exit) {
                exit.request(reason);
                break;
            }
        }
        KVM_RUN.with(|c| c.set(null_mut()));
        tracing::debug!(vcpu = index, "vcpu thread stopped");
    }

    /// Finish any port or MMIO access the last exit left pending (a
    /// `KVM_RUN` with `immediate_exit` set completes it and returns at
    /// once, without running guest code), then read the vCPU's state.
    fn save_parked(&mut self) -> Result<VcpuState, VcpuStateError> {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            other => {
                tracing::debug!(vcpu = self.index, result = ?other.map(|_| ()), "completing run before save")
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        VcpuState::save(
            &self.fd,
            self.index,
            &self.save.msr_list,
            self.save.xsave_size,
        )
    }

    /// One `KVM_RUN`; `Some` when the VM must stop.
    fn step(&mut self, pio: &Bus, mmio: &Bus, exit: &ExitState) -> Option<ExitReason> {
        let vcpu = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    crate::limited!(
                        debug,
                        port = format_args!("{port:#x}"),
                        len = data.len(),
                        "unhandled port read"
                    );
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !pio.write(u64::from(port), data) {
                    crate::limited!(
                        debug,
                        port = format_args!("{port:#x}"),
                        len = data.len(),
                        "unhandled port write"
                    );
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                    crate::limited!(
                        debug,
                        addr = format_args!("{addr:#x}"),
                        len = data.len(),
                        "unhandled mmio read"
                    );
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !mmio.write(addr, data) {
                    crate::limited!(
                        debug,
                        addr = format_args!("{addr:#x}"),
                        len = data.len(),
                        "unhandled mmio write"
                    );
                }
                None
            }
            Ok(VcpuExit::Hlt) => Some(ExitReason::Halted { vcpu }),
            Ok(VcpuExit::Shutdown) => {
                tracing::warn!(vcpu, "kvm exit shutdown (triple fault)");
                exit.request_shutdown();
                None
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                tracing::info!(vcpu, kind, "kvm system event");
                if kind == kvm_bindings::KVM_SYSTEM_EVENT_CRASH {
                    exit.note_panic();
                }
                exit.request_reset();
                None
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                tracing::error!(
                    vcpu,
                    cpu,
                    reason = format_args!("{reason:#x}"),
                    "kvm fail entry"
                );
                Some(ExitReason::FailEntry { vcpu, reason })
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: KVM filled the `internal` member of the exit union
                // for KVM_EXIT_INTERNAL_ERROR, which is what we just got.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                tracing::error!(vcpu, suberror, "kvm internal error");
                Some(ExitReason::InternalError { vcpu, suberror })
            }
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
            Ok(other) => {
                let detail = format!("unexpected kvm exit {other:?}");
                tracing::error!(vcpu, %detail, "vcpu stopped");
                Some(ExitReason::VcpuError { vcpu, detail })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked (or interrupted): clear the flag and re-check stopping.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => {
                let detail = format!("KVM_RUN failed: {e}");
                tracing::error!(vcpu, %detail, "vcpu stopped");
                Some(ExitReason::VcpuError { vcpu, detail })
            }
        }
    }
}
