//! Building a VM from a `VmConfig` and running it to an `ExitReason`.

use std::fs::File;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

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
use crate::devices::serial::{spawn_stdin_feeder, SerialDevice, SerialStateError};
use crate::devices::virtio::fs::{Fs, FsConfig, FsError};
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::{MmioTransport, VirtioDevice, VirtioInterrupt};
use crate::exit::{ExitReason, ExitState};
use crate::kvm_probe::{self, KvmFlavor};
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};
use crate::snapshot::{self, SnapshotError, VmSnapshot};
use crate::threads::{self, ThreadError};
use crate::vstate::initrd_pages;
use crate::vstate::lazy_ram::{self, LazyRamError, PageSource};
use crate::vstate::memory::{create_guest_ram, GuestRam, MemoryError};
use crate::vstate::memory_image::{self, ImageStats, MemoryImageError};
use crate::vstate::pause::{PauseError, PauseGate};
use crate::vstate::vcpu::{install_kick_handler, kick_signal, Vcpu, VcpuError};
use crate::vstate::vcpu_state::{VcpuState, VcpuStateError};
use crate::vstate::vm::{KvmError, Vm};
use crate::vstate::vm_state::{VmState, VmStateError};
use crate::vstate::working_set;

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
    /// The snapshot's VM and the configuration differ.
    #[error("the snapshot in {dir} has {what} = {saved}, the configuration asks for {asked}")]
    SnapshotMismatch {
        /// The snapshot directory.
        dir: PathBuf,
        /// What differs.
        what: &'static str,
        /// The snapshot's value.
        saved: u64,
        /// The configuration's value.
        asked: u64,
    },
    /// The snapshot has another number of virtio devices.
    #[error("the snapshot has {saved} virtio device(s); the configuration attaches another number (same devices, same order needed)")]
    SnapshotDeviceCount {
        /// Devices in the snapshot.
        saved: usize,
    },
    /// A virtio device's saved state does not fit the device.
    #[error("cannot restore the virtio device in slot {slot}")]
    DeviceRestore {
        /// The virtio-mmio slot.
        slot: u64,
        /// The cause.
        #[source]
        source: crate::devices::virtio::mmio::persist::PersistError,
    },
    /// A virtio device's state cannot be saved.
    #[error("cannot save the virtio device in slot {slot}")]
    DeviceSave {
        /// The virtio-mmio slot.
        slot: usize,
        /// The cause.
        #[source]
        source: crate::devices::virtio::mmio::persist::PersistError,
    },
    /// The snapshot's state file.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot's memory image.
    #[error(transparent)]
    MemoryImage(#[from] MemoryImageError),
    /// Lazily restored guest memory.
    #[error(transparent)]
    LazyRam(#[from] LazyRamError),
    /// A VM restored page by page cannot be snapshotted.
    #[error("a VM whose RAM is still loaded from its snapshot as it is touched cannot be snapshotted again")]
    SnapshotOfLazyVm,
    /// VM-wide KVM state.
    #[error(transparent)]
    VmState(#[from] VmStateError),
    /// A vCPU's KVM state.
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    /// Pausing the vCPUs.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// The snapshot's serial port.
    #[error(transparent)]
    SerialState(#[from] SerialStateError),
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

impl VmmError {
    /// A page of a snapshot's memory image failed its digest: the
    /// snapshot is unusable ([`crate::exit::EXIT_SNAPSHOT_MEMORY`]).
    pub fn is_corrupt_memory(&self) -> bool {
        matches!(
            self,
            VmmError::MemoryImage(MemoryImageError::PageDigest { .. })
                | VmmError::LazyRam(LazyRamError::Image(MemoryImageError::PageDigest { .. }))
        )
    }
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

/// How a restored VM's RAM is filled from the memory image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMemory {
    /// A page when the guest first touches it (a userfaultfd); without
    /// userfaultfd support, as `Eager`.
    Lazy,
    /// The whole image, before the guest runs.
    Eager,
}

/// A restore's working set (see [`working_set`]): one to load before
/// the guest runs, and whether to record one.
#[derive(Debug, Default)]
pub struct WorkingSet {
    /// The working-set file to load up front (ignored with a warning if
    /// malformed or not this image's).
    pub prefetch: Option<PathBuf>,
    /// Record the pages loaded until the signal, then write them.
    pub record: Option<lazy_ram::Recorder>,
    /// Map the snapshot's shared ranges (the kernel's text) from the
    /// image instead of copying them.
    pub share_text: bool,
}

/// A snapshot read from its directory: its state checked, its memory
/// image loaded into new guest RAM.
pub struct LoadedSnapshot {
    dir: PathBuf,
    snapshot: VmSnapshot,
    ram: GuestRam,
    /// Loads guest RAM page by page as it is touched (None: loaded whole).
    pages: Option<PageSource>,
}

impl LoadedSnapshot {
    /// Read the snapshot in `dir` for a VM of `memory_bytes` bytes of RAM
    /// (the memory image must be that size), its RAM loaded lazily.
    pub fn read(dir: &Path, memory_bytes: u64) -> Result<Self, VmmError> {
        Self::read_with(dir, memory_bytes, RestoreMemory::Lazy)
    }

    /// [`LoadedSnapshot::read`] with RAM loaded as `mode` says.
    pub fn read_with(dir: &Path, memory_bytes: u64, mode: RestoreMemory) -> Result<Self, VmmError> {
        Self::read_lazy(
            dir,
            memory_bytes,
            mode,
            WorkingSet {
                share_text: true,
                ..WorkingSet::default()
            },
        )
    }

    /// [`LoadedSnapshot::read_with`]; lazily loaded RAM also loads the
    /// working set's pages first, and records a new one if asked.
    pub fn read_lazy(
        dir: &Path,
        memory_bytes: u64,
        mode: RestoreMemory,
        working: WorkingSet,
    ) -> Result<Self, VmmError> {
        let snapshot = snapshot::read_state(dir)?;
        if snapshot.memory_bytes != memory_bytes {
            return Err(VmmError::SnapshotMismatch {
                dir: dir.to_owned(),
                what: "memory bytes",
                saved: snapshot.memory_bytes,
                asked: memory_bytes,
            });
        }
        let image = dir.join(snapshot::MEMORY_FILE);
        let eager = |image: &Path| {
            memory_image::load(image, memory_bytes, &snapshot.memory_index).map(|ram| (ram, None))
        };
        // A working set that names a page the image does not hold is not
        // this template's: ignored whole (it only makes loading earlier).
        let prefetch = match working.prefetch {
            Some(path) => match working_set::read(&path) {
                Ok(pages) => match pages.iter().find(|&&p| !snapshot.memory_index.is_data(p)) {
                    None => pages,
                    Some(p) => {
                        eprintln!(
                            "cocoon-vmm: ignoring the working set {}: offset {p:#x} is not a data page of the memory image",
                            path.display()
                        );
                        Vec::new()
                    }
                },
                Err(e) => {
                    eprintln!("cocoon-vmm: ignoring the working set: {e}");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let (ram, pages) = match mode {
            RestoreMemory::Eager => eager(&image)?,
            RestoreMemory::Lazy => {
                match lazy_ram::load(
                    &image,
                    memory_bytes,
                    snapshot.memory_index.clone(),
                    &prefetch,
                    if working.share_text {
                        &snapshot.shared
                    } else {
                        &[]
                    },
                ) {
                    Ok((ram, mut pages)) => {
                        if let Some(r) = working.record {
                            pages.record(r);
                        }
                        (ram, Some(pages))
                    }
                    Err(LazyRamError::Uffd(e)) => {
                        // Before the logger exists: stderr.
                        eprintln!(
                            "cocoon-vmm: {e}: {}; loading the whole memory image instead",
                            std::error::Error::source(&e)
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        );
                        eager(&image)?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(LoadedSnapshot {
            dir: dir.to_owned(),
            snapshot,
            ram,
            pages,
        })
    }

    /// Whether guest RAM is loaded page by page as the guest touches it
    /// (a userfaultfd), not copied whole.
    pub fn is_lazy(&self) -> bool {
        self.pages.is_some()
    }
}

/// The thread that loads lazily restored guest RAM; stopped and joined
/// when dropped.
struct PageLoader {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl PageLoader {
    /// Serve `pages` on a new thread under its own filter; a failure ends
    /// the VM through `exit`.
    fn spawn(pages: PageSource, exit: Arc<ExitState>) -> Result<Self, VmmError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Thread {
            what: "page-loader (eventfd)".into(),
            source,
        })?;
        let theirs = stop.try_clone().map_err(|source| VmmError::Thread {
            what: "page-loader (eventfd)".into(),
            source,
        })?;
        let data_pages = pages.data_pages();
        let prefetched = pages.prefetched();
        let handle = std::thread::Builder::new()
            .name("page-loader".into())
            .spawn(move || {
                let failed = |detail: String| {
                    tracing::error!("guest memory loader: {detail}");
                    exit.request(ExitReason::GuestMemory { detail });
                };
                if let Err(e) = seccomp::enter(ThreadKind::PageLoader) {
                    return failed(e.to_string());
                }
                match pages.serve(&theirs) {
                    Ok(stats) => tracing::info!(
                        copied = stats.copied,
                        zeroed = stats.zeroed,
                        of = data_pages,
                        prefetched,
                        "guest memory loader stopped: pages copied from the image on first touch"
                    ),
                    Err(e) => failed(format!(
                        "{e}{}",
                        std::error::Error::source(&e)
                            .map(|s| format!(": {s}"))
                            .unwrap_or_default()
                    )),
                }
            })
            .map_err(|source| VmmError::Thread {
                what: "page-loader".into(),
                source,
            })?;
        Ok(PageLoader {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for PageLoader {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
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
    /// Set when the VM continues from a snapshot instead of booting.
    snapshot: Option<VmSnapshot>,
    /// The virtio-mmio transports, by slot (for snapshots).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Loads restored guest RAM as it is touched.
    loader: Option<PageLoader>,
}

/// The worker thread kind of a virtio device type.
fn worker_kind(device_type: u32) -> Option<ThreadKind> {
    use virtio_bindings::virtio_ids::*;
    match device_type {
        VIRTIO_ID_NET => Some(ThreadKind::Net),
        VIRTIO_ID_BLOCK => Some(ThreadKind::Block),
        VIRTIO_ID_RNG => Some(ThreadKind::Rng),
        VIRTIO_ID_VSOCK => Some(ThreadKind::Vsock),
        VIRTIO_ID_FS => Some(ThreadKind::FsWorker),
        _ => None,
    }
}

impl VmmBuilder {
    /// Validate `config`, create the VM, its memory, the serial port and the i8042.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        Self::create(config, None)
    }

    /// Like [`VmmBuilder::new`], but the VM continues from the snapshot in
    /// `dir` instead of booting: its RAM, vCPUs, irqchip, clock and serial
    /// port are the snapshot's. `config` must have the snapshot's vCPU
    /// count, memory size and irqchip choice; its devices get new backends.
    pub fn restore(config: VmConfig, dir: &Path) -> Result<Self, VmmError> {
        let loaded = LoadedSnapshot::read(dir, config.memory_bytes())?;
        Self::restore_loaded(config, loaded)
    }

    /// [`VmmBuilder::restore`] from a snapshot read earlier (before a jail
    /// hid its directory).
    pub fn restore_loaded(config: VmConfig, loaded: LoadedSnapshot) -> Result<Self, VmmError> {
        let LoadedSnapshot {
            dir,
            snapshot,
            ram,
            pages,
        } = loaded;
        let mismatch = |what: &'static str, saved: u64, asked: u64| {
            Err(VmmError::SnapshotMismatch {
                dir: dir.clone(),
                what,
                saved,
                asked,
            })
        };
        if snapshot.vcpu_count != config.vcpus {
            return mismatch("vcpus", snapshot.vcpu_count.into(), config.vcpus.into());
        }
        if snapshot.memory_bytes != config.memory_bytes() || ram.size != snapshot.memory_bytes {
            return mismatch("memory bytes", snapshot.memory_bytes, config.memory_bytes());
        }
        if snapshot.vm.irqchip.is_some() != config.irqchip {
            return mismatch(
                "in-kernel irqchip",
                snapshot.vm.irqchip.is_some().into(),
                config.irqchip.into(),
            );
        }
        if snapshot.vcpus.len() != usize::from(snapshot.vcpu_count)
            || snapshot
                .vcpus
                .iter()
                .enumerate()
                .any(|(i, v)| usize::from(v.index) != i)
        {
            return mismatch(
                "saved vcpu states",
                snapshot.vcpus.len() as u64,
                config.vcpus.into(),
            );
        }
        Self::create(config, Some((snapshot, ram, pages)))
    }

    fn create(
        config: VmConfig,
        restore: Option<(VmSnapshot, GuestRam, Option<PageSource>)>,
    ) -> Result<Self, VmmError> {
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
        let (snapshot, ram, pages) = match restore {
            Some((snapshot, ram, pages)) => (Some(snapshot), ram, pages),
            None => (None, create_guest_ram(config.memory_bytes())?, None),
        };
        vm.register_memory(&ram)?;
        let exit = Arc::new(ExitState::new());
        // Before anything touches restored guest RAM (device restore does).
        let loader = pages
            .map(|p| PageLoader::spawn(p, exit.clone()))
            .transpose()?;

        let mut pio = Bus::new();
        let serial_evt = vm.irq_eventfd(SERIAL_IRQ)?;
        let sink = serial_sink(&config.serial, config.console_limit)?;
        let serial = match &snapshot {
            Some(s) => SerialDevice::with_state(serial_evt, sink, exit.clone(), &s.serial)?,
            None => SerialDevice::new(serial_evt, sink, exit.clone()),
        };
        let serial = Arc::new(Mutex::new(serial));
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
            snapshot,
            transports: Vec::new(),
            loader,
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
        let kind = worker_kind(device.device_type());
        let interrupt = Arc::new(VirtioInterrupt::new(self.vm.irq_eventfd(decl.irq)?));
        let mem = self.ram.mem.clone();
        let transport = match &self.snapshot {
            Some(snapshot) => {
                let state =
                    snapshot
                        .devices
                        .get(n as usize)
                        .ok_or(VmmError::SnapshotDeviceCount {
                            saved: snapshot.devices.len(),
                        })?;
                // A restored device activates now, before any filter
                // exists: its worker thread is made (and parked) first.
                match kind {
                    Some(kind) if state.activated && seccomp::mode() != SeccompMode::Off => {
                        threads::reserve(kind, 1)?;
                    }
                    _ => self.workers.extend(kind),
                }
                MmioTransport::restore(device, mem, interrupt, state)
                    .map_err(|source| VmmError::DeviceRestore { slot: n, source })?
            }
            None => {
                self.workers.extend(kind);
                MmioTransport::new(device, mem, interrupt)
            }
        };
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(transport.clone(), decl.base, decl.size)?;
        self.transports.push(transport);
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

    /// Load the guest and create the vCPUs (or, restoring, put the
    /// snapshot's state into them).
    pub fn build(self) -> Result<Vmm, VmmError> {
        let vcpu_count = self.config.vcpus;
        if let Some(snapshot) = &self.snapshot {
            if snapshot.devices.len() != self.transports.len() {
                return Err(VmmError::SnapshotDeviceCount {
                    saved: snapshot.devices.len(),
                });
            }
            let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
            for state in &snapshot.vcpus {
                let vcpu = Vcpu::new(&self.vm, state.index)?;
                state.restore(vcpu.fd())?;
                vcpus.push(vcpu);
            }
            // Last, so the guest's clock resumes from where it paused.
            snapshot.vm.restore(self.vm.fd(), self.vm.has_irqchip())?;
            return Ok(self.into_vmm(vcpus, None, Vec::new(), None));
        }
        let mem = &self.ram.mem;
        let (entry, cmdline, shareable, initrd) = match &self.config.boot {
            BootSource::Kernel(k) => {
                let (entry, cmdline) =
                    boot::load_linux(mem, self.ram.size, vcpu_count, k, &self.virtio)?;
                let text = self.ram.offsets_of(&boot::read_only_text(&k.kernel));
                (entry, Some(cmdline), text, k.initrd.clone())
            }
            BootSource::Payload(p) => (
                boot::load_payload(mem, vcpu_count, p)?,
                None,
                Vec::new(),
                None,
            ),
        };
        let supported = self.vm.supported_cpuid()?;
        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for index in 0..vcpu_count {
            let vcpu = Vcpu::new(&self.vm, index)?;
            let boot_entry = (index == 0).then_some(entry);
            vcpu.configure(&supported, vcpu_count, self.vm.has_irqchip(), boot_entry)?;
            vcpus.push(vcpu);
        }
        Ok(self.into_vmm(vcpus, cmdline, shareable, initrd))
    }

    fn into_vmm(
        self,
        vcpus: Vec<Vcpu>,
        cmdline: Option<String>,
        shareable: Vec<(u64, u64)>,
        initrd: Option<PathBuf>,
    ) -> Vmm {
        Vmm {
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
            transports: self.transports,
            restored: self.snapshot.is_some(),
            shareable,
            initrd,
            loader: self.loader,
        }
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
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Built from a snapshot.
    restored: bool,
    /// What a snapshot of this VM lets restores share (memfd offsets):
    /// the booted kernel's read-only segments.
    shareable: Vec<(u64, u64)>,
    /// The booted initrd: a snapshot also shares the pages holding its
    /// files ([`initrd_pages`]).
    initrd: Option<PathBuf>,
    /// Loads restored guest RAM as it is touched; last, so that it stops
    /// after the devices.
    loader: Option<PageLoader>,
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

    fn run_inner(self, timeout: Option<Duration>) -> Result<ExitReason, VmmError> {
        self.start()?.wait(timeout)
    }

    /// Start the vCPU threads; the VM runs until [`RunningVm::wait`]
    /// returns. The calling thread enters its seccomp filter here.
    pub fn start(self) -> Result<RunningVm, VmmError> {
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
        let gate = Arc::new(PauseGate::new());
        let vcpu_count = self.vcpus.len();
        let mut running = RunningVm {
            vmm: self,
            handles: Vec::new(),
            gate,
            vcpu_count,
        };
        for vcpu in std::mem::take(&mut running.vmm.vcpus) {
            let name = format!("vcpu-{}", vcpu.index());
            let vmm = &running.vmm;
            let (pio, mmio, exit) = (vmm.pio.clone(), vmm.mmio.clone(), vmm.exit.clone());
            let gate = running.gate.clone();
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
                    vcpu.run(pio, mmio, exit, gate)
                });
            match spawned {
                Ok(h) => running.handles.push(h),
                Err(source) => {
                    running.vmm.exit.request(ExitReason::TimedOut);
                    running.stop_vcpus();
                    return Err(VmmError::Thread { what: name, source });
                }
            }
        }
        if running.vmm.restored {
            // Now that the saved irqchip is in place and the vCPUs run.
            for t in &running.vmm.transports {
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .interrupt()
                    .reraise_pending();
            }
        }
        // SAFETY: isatty only inspects the descriptor.
        if running.vmm.serial_input && unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            let vmm = &running.vmm;
            spawn_stdin_feeder(vmm.serial.clone(), vmm.exit.clone()).map_err(|source| {
                VmmError::Thread {
                    what: "serial-stdin".into(),
                    source,
                }
            })?;
        }
        if filtered {
            if let Err(e) = seccomp::enter(ThreadKind::Main) {
                running.vmm.exit.request(ExitReason::TimedOut);
                running.stop_vcpus();
                return Err(e.into());
            }
        }
        Ok(running)
    }
}

/// A VM whose vCPU threads run.
pub struct RunningVm {
    vmm: Vmm,
    handles: Vec<JoinHandle<()>>,
    gate: Arc<PauseGate>,
    vcpu_count: usize,
}

impl RunningVm {
    /// Wait until the guest stops or `timeout` passes
    /// (`ExitReason::TimedOut`), then stop every vCPU thread.
    pub fn wait(mut self, timeout: Option<Duration>) -> Result<ExitReason, VmmError> {
        let exit = self.vmm.exit.clone();
        let reason = match exit.wait(timeout) {
            Some(reason) => reason,
            None => {
                exit.request(ExitReason::TimedOut);
                exit.wait(Some(Duration::ZERO))
                    .unwrap_or(ExitReason::TimedOut)
            }
        };
        tracing::info!(reason = %reason.describe(), "vm stopped");
        self.stop_vcpus();
        self.vmm
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        Ok(reason)
    }

    /// The exit reason, once the VM stopped; waits up to `timeout`.
    pub fn poll_exit(&self, timeout: Duration) -> Option<ExitReason> {
        self.vmm.exit.wait(Some(timeout))
    }

    /// Park every vCPU outside `KVM_RUN`; their states, by index. The VM
    /// stays paused until [`RunningVm::resume`].
    pub fn pause(&self) -> Result<Vec<VcpuState>, VmmError> {
        self.gate.request();
        let exit = &self.vmm.exit;
        let result =
            self.gate
                .wait_parked(self.vcpu_count, VCPU_STOP_TIMEOUT, &|| self.kick(), &|| {
                    exit.stopping()
                });
        if result.is_err() {
            self.gate.resume();
        }
        Ok(result?)
    }

    /// Let paused vCPUs run again.
    pub fn resume(&self) {
        self.gate.resume();
    }

    /// Pause the VM and write a snapshot of it into `dir` (an existing,
    /// empty directory), then end it: its virtio devices are quiesced
    /// (their workers stopped) for the snapshot, so the VM cannot go on.
    /// [`RunningVm::wait`] with a zero timeout collects it.
    pub fn snapshot(&self, dir: &Path) -> Result<ImageStats, VmmError> {
        if self.vmm.loader.is_some() {
            // Pages the guest has not touched are not in its RAM yet.
            return Err(VmmError::SnapshotOfLazyVm);
        }
        let vcpus = self.pause()?;
        // From here on the VM does not run again, whatever happens.
        self.vmm.exit.request(ExitReason::Snapshotted);
        let mut devices = Vec::with_capacity(self.vmm.transports.len());
        for (slot, t) in self.vmm.transports.iter().enumerate() {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            t.quiesce();
            devices.push(
                t.save()
                    .map_err(|source| VmmError::DeviceSave { slot, source })?,
            );
        }
        let vm = VmState::save(self.vmm.vm.fd(), self.vmm.vm.has_irqchip())?;
        let serial = self
            .vmm
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot();
        // The state (with the image's digest) is written last.
        let stats = memory_image::save(&self.vmm.ram, &dir.join(snapshot::MEMORY_FILE))?;
        let mut shared = self.vmm.shareable.clone();
        if let Some(initrd) = &self.vmm.initrd {
            match initrd_pages::find(initrd, &self.vmm.ram, &stats.index) {
                Ok(files) => {
                    tracing::info!(
                        pages = files.iter().map(|r| r.1).sum::<u64>() / memory_image::PAGE as u64,
                        ranges = files.len(),
                        "the snapshot shares the pages of the initrd's files"
                    );
                    shared = initrd_pages::merge(&shared, &files);
                }
                // Restores then copy those pages like any other.
                Err(e) => tracing::warn!("the initrd's pages are not shared: {e}"),
            }
        }
        let state = VmSnapshot {
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            vcpu_count: self.vcpu_count as u8,
            memory_bytes: self.vmm.ram.size,
            memory_index: stats.index.clone(),
            shared,
            vm,
            vcpus,
            serial,
            devices,
        };
        snapshot::write_state(dir, &state)?;
        Ok(stats)
    }

    fn kick(&self) {
        for h in self.handles.iter().filter(|h| !h.is_finished()) {
            // SAFETY: the pthread id belongs to a thread we spawned and
            // have not joined, so it is still valid.
            unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
        }
    }

    /// Kick every vCPU thread until it leaves `KVM_RUN`, then join it.
    fn stop_vcpus(&mut self) {
        let mut handles = std::mem::take(&mut self.handles);
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
            std::mem::forget(self.vmm.ram.clone());
            std::mem::forget(handles);
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.vmm.exit.request(ExitReason::TimedOut);
            self.stop_vcpus();
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
