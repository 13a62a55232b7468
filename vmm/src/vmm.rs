//! Building a VM from a `VmConfig` and running it to an `ExitReason`.

use std::fs::File;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::layout::{
    I8042_COMMAND_PORT, I8042_DATA_PORT, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
    VIRTIO_FIRST_GSI, VIRTIO_MMIO_BASE, VIRTIO_MMIO_MAX_SLOTS, VIRTIO_MMIO_SLOT_SIZE,
};
use crate::boot::{self, BootError};
use crate::bounded_log::{BoundedLogError, RingFile};
use crate::cmdline::MmioDeclaration;
use crate::config::{BootSource, ConfigError, SerialOutput, VmConfig};
use crate::devices::bus::{Bus, BusError, SharedDevice};
use crate::devices::i8042::I8042;
use crate::devices::serial::{spawn_stdin_feeder, SerialDevice};
use crate::devices::virtio::fs::{Fs, FsConfig, FsError};
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::{MmioTransport, VirtioDevice, VirtioInterrupt};
use crate::exit::{ExitReason, ExitState};
use crate::kvm_probe::{self, KvmFlavor};
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};
use crate::threads::{self, ThreadError};
use crate::vstate::memory::{create_guest_ram, GuestRam, MemoryError};
use crate::vstate::vcpu::{install_kick_handler, kick_signal, Vcpu, VcpuError};
use crate::vstate::vm::{KvmError, Vm};

/// How long `run` waits for vCPU threads to leave `KVM_RUN` after a stop.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM here interprets guest kernel code.
    #[error("this host's /dev/kvm is {}: a Linux guest would take many minutes to boot. Run the VMM inside the nested test host (tests/testhost/run.sh, see the README), or pass --allow-slow-kvm (COCOON_ALLOW_PVM=1) to try anyway", .0.describe())]
    SlowKvm(KvmFlavor),
    /// KVM failure.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory failure.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A device range conflict.
    #[error("cannot register device")]
    Bus(#[from] BusError),
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::MuxerError),
    /// The vsock device was refused.
    #[error(transparent)]
    VsockDevice(#[from] crate::devices::virtio::vsock::VsockError),
    /// All virtio-mmio slots are used.
    #[error("no free virtio-mmio slot (at most {VIRTIO_MMIO_MAX_SLOTS} devices)")]
    NoVirtioSlot,
    /// The serial output file cannot be created.
    #[error("cannot set up the serial console file")]
    SerialOutput(#[source] BoundedLogError),
    /// Registering a QueueNotify ioeventfd failed.
    #[error("cannot register the QueueNotify ioeventfd of the virtio device at {base:#x}")]
    Ioeventfd {
        /// The device's MMIO base.
        base: u64,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A virtio-fs device cannot be set up.
    #[error("virtio-fs device '{tag}'")]
    Fs {
        /// The tag.
        tag: String,
        /// The cause.
        #[source]
        source: FsError,
    },
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The device workers could not be made.
    #[error(transparent)]
    Workers(#[from] ThreadError),
    /// Spawning a thread failed.
    #[error("cannot spawn the {what} thread")]
    Thread {
        /// Which thread.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn serial_sink(output: &SerialOutput, limit: u64) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match output {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::None => Box::new(std::io::sink()),
        SerialOutput::Buffer(buf) => Box::new(buf.clone()),
        SerialOutput::File(path) => {
            Box::new(RingFile::open(path, limit).map_err(VmmError::SerialOutput)?)
        }
    })
}

/// A VM under construction: memory and legacy devices exist; more devices
/// can be added before the guest is loaded by `build`.
pub struct VmmBuilder {
    config: VmConfig,
    vm: Vm,
    ram: GuestRam,
    exit: Arc<ExitState>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    virtio: Vec<MmioDeclaration>,
    /// The worker thread kind of each virtio device that has one.
    workers: Vec<ThreadKind>,
}

/// The worker thread kind of a virtio device type.
fn worker_kind(device_type: u32) -> Option<ThreadKind> {
    match device_type {
        1 => Some(ThreadKind::Net),
        19 => Some(ThreadKind::Vsock),
        26 => Some(ThreadKind::FsWorker),
        _ => None,
    }
}

impl VmmBuilder {
    /// Validate `config`, create the VM, its memory, the serial port and the i8042.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        config.validate()?;
        if let BootSource::Kernel(k) = &config.boot {
            // Name a missing or malformed kernel before anything else.
            boot::detect_format(&k.kernel)?;
            if let Some(initrd) = k.initrd.as_deref().filter(|p| !p.exists()) {
                return Err(BootError::InitrdMissing(initrd.to_owned()).into());
            }
        }
        if matches!(config.boot, BootSource::Kernel(_)) && !config.allow_slow_kvm {
            let flavor = kvm_probe::probe();
            if matches!(flavor, KvmFlavor::Pvm | KvmFlavor::SoftwareUnknown) {
                return Err(VmmError::SlowKvm(flavor));
            }
        }
        let vm = Vm::new(config.irqchip)?;
        let ram = create_guest_ram(config.memory_bytes())?;
        vm.register_memory(&ram)?;
        let exit = Arc::new(ExitState::new());

        let mut pio = Bus::new();
        let serial_evt = vm.irq_eventfd(SERIAL_IRQ)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            serial_evt,
            serial_sink(&config.serial, config.console_limit)?,
            exit.clone(),
        )));
        pio.insert(
            serial.clone(),
            u64::from(SERIAL_PORT_BASE),
            u64::from(SERIAL_PORT_LEN),
        )?;
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(exit.clone())));
        pio.insert(i8042.clone(), u64::from(I8042_DATA_PORT), 1)?;
        pio.insert(i8042, u64::from(I8042_COMMAND_PORT), 1)?;

        let mut builder = VmmBuilder {
            config,
            vm,
            ram,
            exit,
            pio,
            mmio: Bus::new(),
            serial,
            virtio: Vec::new(),
            workers: Vec::new(),
        };
        if let Some(v) = builder.config.vsock.clone() {
            builder.add_vsock(&v)?;
        }
        for fs in builder.config.fs.clone() {
            builder.add_fs(&fs)?;
        }
        Ok(builder)
    }

    /// Attach a virtio-vsock device with a Unix-socket backend listening
    /// on `config.uds_path` (removed again when the device is dropped).
    pub fn add_vsock(
        &mut self,
        config: &crate::config::VsockConfig,
    ) -> Result<MmioDeclaration, VmmError> {
        use crate::devices::virtio::vsock::{Vsock, VsockMuxer};
        let muxer = VsockMuxer::new(config.cid, &config.uds_path)?;
        let device = Vsock::new(config.cid, muxer)?;
        self.add_virtio_device(Box::new(device))
    }

    /// Guest memory (for devices that need it at creation).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.ram.mem
    }

    /// The memfd behind guest memory (for vhost-user backends).
    pub fn memfd(&self) -> &Arc<File> {
        &self.ram.memfd
    }

    /// The KVM VM (for ioeventfds and irqfds of future devices).
    pub fn vm_fd(&self) -> &VmFd {
        self.vm.fd()
    }

    /// Attach a virtio device on the next virtio-mmio slot; it is declared
    /// on the kernel command line. Returns the slot.
    pub fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioDeclaration, VmmError> {
        let n = self.virtio.len() as u64;
        if n >= VIRTIO_MMIO_MAX_SLOTS {
            return Err(VmmError::NoVirtioSlot);
        }
        let decl = MmioDeclaration {
            base: VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_SLOT_SIZE,
            size: VIRTIO_MMIO_SLOT_SIZE,
            irq: VIRTIO_FIRST_GSI + n as u32,
        };
        let notify = kvm_ioctls::IoEventAddress::Mmio(decl.base + regs::QUEUE_NOTIFY);
        for (queue, evt) in device.queue_events().iter().enumerate() {
            self.vm
                .fd()
                .register_ioevent(evt, &notify, queue as u32)
                .map_err(|source| VmmError::Ioeventfd {
                    base: decl.base,
                    source,
                })?;
        }
        self.workers.extend(worker_kind(device.device_type()));
        let interrupt = Arc::new(VirtioInterrupt::new(self.vm.irq_eventfd(decl.irq)?));
        let transport = MmioTransport::new(device, self.ram.mem.clone(), interrupt);
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), decl.base, decl.size)?;
        self.virtio.push(decl);
        Ok(decl)
    }

    /// Connect a virtio-fs device to its virtiofsd and attach it.
    pub fn add_fs(&mut self, config: &FsConfig) -> Result<MmioDeclaration, VmmError> {
        let fs = Fs::new(config.clone()).map_err(|source| VmmError::Fs {
            tag: config.tag.as_str().to_string(),
            source,
        })?;
        self.add_virtio_device(Box::new(fs))
    }

    /// Negotiate with the virtiofsd on an already connected `stream` (see
    /// [`crate::devices::virtio::fs::connect_socket`]) and attach it.
    pub fn add_fs_connected(
        &mut self,
        config: &FsConfig,
        stream: std::os::unix::net::UnixStream,
    ) -> Result<MmioDeclaration, VmmError> {
        let fs_err = |source| VmmError::Fs {
            tag: config.tag.as_str().to_string(),
            source,
        };
        let conn = crate::devices::virtio::fs::Connection::handshake(stream, config.total_queues())
            .map_err(fs_err)?;
        let fs = Fs::with_connection(config.clone(), conn).map_err(fs_err)?;
        self.add_virtio_device(Box::new(fs))
    }

    /// Attach any device to the MMIO bus.
    pub fn add_mmio_device(
        &mut self,
        device: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<(), VmmError> {
        Ok(self.mmio.insert(device, base, len)?)
    }

    /// Attach any device to the port I/O bus.
    pub fn add_pio_device(
        &mut self,
        device: SharedDevice,
        base: u16,
        len: u16,
    ) -> Result<(), VmmError> {
        Ok(self.pio.insert(device, u64::from(base), u64::from(len))?)
    }

    /// Load the guest and create the vCPUs.
    pub fn build(self) -> Result<Vmm, VmmError> {
        let mem = &self.ram.mem;
        let vcpu_count = self.config.vcpus;
        let (entry, cmdline) = match &self.config.boot {
            BootSource::Kernel(k) => {
                let (entry, cmdline) =
                    boot::load_linux(mem, self.ram.size, vcpu_count, k, &self.virtio)?;
                (entry, Some(cmdline))
            }
            BootSource::Payload(p) => (boot::load_payload(mem, vcpu_count, p)?, None),
        };
        let supported = self.vm.supported_cpuid()?;
        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for index in 0..vcpu_count {
            let vcpu = Vcpu::new(&self.vm, index)?;
            let boot_entry = (index == 0).then_some(entry);
            vcpu.configure(&supported, vcpu_count, self.vm.has_irqchip(), boot_entry)?;
            vcpus.push(vcpu);
        }
        Ok(Vmm {
            serial_input: self.config.serial_input,
            vm: self.vm,
            ram: self.ram,
            exit: self.exit,
            pio: Arc::new(self.pio),
            mmio: Arc::new(self.mmio),
            serial: self.serial,
            vcpus,
            cmdline,
            workers: self.workers,
        })
    }
}

/// A VM ready to run.
pub struct Vmm {
    vm: Vm,
    ram: GuestRam,
    exit: Arc<ExitState>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<SerialDevice>>,
    vcpus: Vec<Vcpu>,
    cmdline: Option<String>,
    serial_input: bool,
    workers: Vec<ThreadKind>,
}

impl Vmm {
    /// Build a VM with the standard devices only.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        VmmBuilder::new(config)?.build()
    }

    /// The kernel command line (kernel boots only).
    pub fn cmdline(&self) -> Option<&str> {
        self.cmdline.as_deref()
    }

    /// Guest memory.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.ram.mem
    }

    /// The memfd behind guest memory.
    pub fn memfd(&self) -> &Arc<File> {
        &self.ram.memfd
    }

    /// Run until the guest stops.
    pub fn run(self) -> Result<ExitReason, VmmError> {
        self.run_inner(None)
    }

    /// Run until the guest stops or `timeout` passes (`ExitReason::TimedOut`).
    pub fn run_for(self, timeout: Duration) -> Result<ExitReason, VmmError> {
        self.run_inner(Some(timeout))
    }

    fn run_inner(mut self, timeout: Option<Duration>) -> Result<ExitReason, VmmError> {
        install_kick_handler()?;
        let filtered = seccomp::mode() != SeccompMode::Off;
        if filtered {
            // Every thread exists before any filter does (see `threads`).
            for kind in &self.workers {
                threads::reserve(*kind, 1)?;
            }
            // Each vCPU installs its filter before the guest runs.
            #[cfg(debug_assertions)]
            crate::test_trigger::arm();
        }
        let mut handles = Vec::new();
        for vcpu in std::mem::take(&mut self.vcpus) {
            let name = format!("vcpu-{}", vcpu.index());
            let (pio, mmio, exit) = (self.pio.clone(), self.mmio.clone(), self.exit.clone());
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    // Before the guest runs a single instruction.
                    if let Err(e) = seccomp::enter(ThreadKind::Vcpu) {
                        exit.request(ExitReason::VcpuError {
                            vcpu: vcpu.index(),
                            detail: format!(
                                "{e}: {}",
                                std::error::Error::source(&e)
                                    .map(ToString::to_string)
                                    .unwrap_or_default()
                            ),
                        });
                        return;
                    }
                    vcpu.run(pio, mmio, exit)
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(source) => {
                    self.exit.request(ExitReason::TimedOut);
                    self.stop_vcpus(handles);
                    return Err(VmmError::Thread { what: name, source });
                }
            }
        }
        // SAFETY: isatty only inspects the descriptor.
        if self.serial_input && unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            spawn_stdin_feeder(self.serial.clone(), self.exit.clone()).map_err(|source| {
                VmmError::Thread {
                    what: "serial-stdin".into(),
                    source,
                }
            })?;
        }
        if filtered {
            if let Err(e) = seccomp::enter(ThreadKind::Main) {
                self.exit.request(ExitReason::TimedOut);
                self.stop_vcpus(handles);
                return Err(e.into());
            }
        }
        let reason = match self.exit.wait(timeout) {
            Some(reason) => reason,
            None => {
                self.exit.request(ExitReason::TimedOut);
                self.exit
                    .wait(Some(Duration::ZERO))
                    .unwrap_or(ExitReason::TimedOut)
            }
        };
        tracing::info!(reason = %reason.describe(), "vm stopped");
        self.stop_vcpus(handles);
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        Ok(reason)
    }

    /// Kick every vCPU thread until it leaves `KVM_RUN`, then join it.
    fn stop_vcpus(&mut self, mut handles: Vec<JoinHandle<()>>) {
        let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
        while !handles.is_empty() && Instant::now() < deadline {
            for h in handles.iter().filter(|h| !h.is_finished()) {
                // SAFETY: the pthread id belongs to a thread we spawned and
                // have not joined, so it is still valid.
                unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
            }
            std::thread::sleep(Duration::from_millis(1));
            let (done, running): (Vec<_>, Vec<_>) =
                handles.into_iter().partition(|h| h.is_finished());
            for h in done {
                if h.join().is_err() {
                    tracing::error!("a vcpu thread panicked");
                }
            }
            handles = running;
        }
        if !handles.is_empty() {
            // A thread still inside KVM_RUN may touch guest memory: never unmap it.
            tracing::error!(
                count = handles.len(),
                "vcpu threads did not stop; leaking guest memory"
            );
            std::mem::forget(self.ram.clone());
            std::mem::forget(handles);
        }
    }
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("memory", &self.ram.size)
            .field("irqchip", &self.vm.has_irqchip())
            .field("cmdline", &self.cmdline)
            .finish()
    }
}
