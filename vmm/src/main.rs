//! `cocoon-vmm`: boot a Linux guest (or report why not) and exit with a
//! code that says how the guest ended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::register_signal_handler;

use anyhow::{bail, Context};
use clap::Parser;
use cocoon_vmm::bounded_log::{LineLimiter, RingFile, DEFAULT_LIMIT, DEFAULT_LINES_PER_SECOND};
use cocoon_vmm::devices::virtio::block::{Block, BlockConfig};
use cocoon_vmm::devices::virtio::fs::connect_socket;
use cocoon_vmm::devices::virtio::fs::FsConfig;
use cocoon_vmm::devices::virtio::net::{Net, NetConfig, TapSource};
use cocoon_vmm::devices::virtio::rng::Rng;
use cocoon_vmm::devices::virtio::VirtioDevice;
use cocoon_vmm::exit::{
    EXIT_GUEST_PANIC, EXIT_KVM_ERROR, EXIT_OK, EXIT_SETUP_ERROR, EXIT_SNAPSHOT_MEMORY,
    EXIT_TRIPLE_FAULT,
};
use cocoon_vmm::jail::{self, JailConfig};
use cocoon_vmm::seccomp::{self, SeccompMode};
use cocoon_vmm::{
    BootSource, ExitReason, KernelBoot, KvmFlavor, LoadedSnapshot, RestoreMemory, SerialOutput,
    VmConfig, VmmBuilder, VmmError, VsockConfig, WorkingSet,
};

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  the guest rebooted or powered off (i8042 reset, as with reboot=k)
  1  bad arguments, missing files, or the VM could not be set up
  2  the guest kernel panicked (\"Kernel panic - not syncing\" on the console)
  3  the guest triple-faulted (KVM_EXIT_SHUTDOWN)
  4  KVM failed: internal error, failed VM entry, or an unexpected exit
  6  a restored VM's memory could not be loaded: a page of the snapshot's
     memory image is corrupt or unreadable (the snapshot is unusable)

On a host whose /dev/kvm is PVM (no VT-x/AMD-V) a Linux guest is refused;
run it inside the nested test host: tests/testhost/run.sh -- cocoon-vmm ...";

/// Boot a Linux guest on KVM.
#[derive(Debug, Parser)]
#[command(name = "cocoon-vmm", version, about, after_help = EXIT_CODES_HELP)]
struct Args {
    /// Guest kernel: ELF vmlinux (from guest-kernel/build.sh) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk (cpio archive).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Extra kernel command line, appended to the built-in base.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = cocoon_vmm::config::DEFAULT_VCPUS)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = cocoon_vmm::config::DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// Where the guest console goes: stdout, file:PATH or none. A PATH is
    /// created with mode 0600 (a symlink is refused) and capped by
    /// --console-limit.
    #[arg(long, value_name = "WHERE", default_value = "stdout", value_parser = parse_serial)]
    serial: SerialOutput,
    /// Cap on --serial file:PATH: PATH and PATH.1 together keep at most
    /// BYTES, the newest (when PATH would pass BYTES/2 it becomes PATH.1
    /// and a new PATH starts).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_LIMIT, value_parser = parse_limit)]
    console_limit: u64,
    /// Boot even when /dev/kvm is PVM or otherwise software-backed (very slow).
    #[arg(long, env = "COCOON_ALLOW_PVM", value_parser = clap::builder::FalseyValueParser::new())]
    allow_slow_kvm: bool,
    /// Add a virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// Add a virtio-blk device on a regular file: path=FILE[,readonly=on][,id=SERIAL].
    /// Repeatable; the guest sees them as /dev/vda, /dev/vdb... in this order.
    #[arg(long, value_name = "SPEC", value_parser = parse_block)]
    block: Vec<BlockConfig>,
    /// Add a virtio-net device on an existing TAP of this network
    /// namespace, tap=NAME, or on a TAP queue descriptor left open for us,
    /// fd=N (single-queue, IFF_NO_PI, no IFF_VNET_HDR; e.g. made by the
    /// caller in another network namespace): [tap=NAME|fd=N][,mac=xx:xx:xx:xx:xx:xx].
    /// Repeatable (eth0, eth1... in this order).
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    net: Vec<NetConfig>,
    /// virtio-vsock with a hybrid Unix-socket backend: host connections
    /// send `CONNECT <port>` on PATH; guest connections to CID 2 port P go
    /// to PATH_P.
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// A virtio-fs device served by a virtiofsd already listening on the
    /// vhost-user socket (repeatable). virtiofsd 1.14 serves one request queue.
    #[arg(long = "fs", value_name = "tag=TAG,socket=PATH[,queues=N][,queue_size=N]", value_parser = parse_fs)]
    fs: Vec<FsConfig>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    /// At most 100 log lines a second are written; a later
    /// "cocoon-vmm: K log lines suppressed" line counts the rest.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: String,
    /// Write the log to PATH (mode 0600, a symlink is refused) instead of
    /// stderr, capped by --log-limit like the console.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Cap on --log-file: PATH and PATH.1 together keep at most BYTES, the newest.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_LIMIT, value_parser = parse_limit)]
    log_limit: u64,
    /// Seccomp filters per thread: enforce (a call outside a thread's
    /// allow-list kills the VMM with SIGSYS, naming the call on stderr),
    /// audit (such calls run and are logged once each), off (debugging
    /// only: no filter at all).
    #[arg(long, value_name = "MODE", default_value = "enforce", value_parser = parse_seccomp)]
    seccomp: SeccompMode,
    /// Run jailed in DIR (needs root): new PID, mount, IPC, UTS and network
    /// namespaces with DIR as the root, the kernel and initrd bound in
    /// read-only, no capabilities, --jail-uid/--jail-gid. The vsock
    /// socket, --serial file and --log-file must be inside DIR.
    #[arg(long, value_name = "DIR", requires_all = ["jail_uid", "jail_gid"])]
    jail: Option<PathBuf>,
    /// The unprivileged uid of the jailed VMM (not 0).
    #[arg(long, value_name = "UID", requires = "jail")]
    jail_uid: Option<u32>,
    /// The unprivileged gid of the jailed VMM (not 0).
    #[arg(long, value_name = "GID", requires = "jail")]
    jail_gid: Option<u32>,
    /// Make this a template VM: on SIGUSR1, pause the guest, save it into
    /// DIR (an existing, empty directory) and exit 0. Widens the main and
    /// vCPU threads' seccomp lists by what saving needs.
    /// With --jail, DIR must be inside the jail directory.
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    snapshot_to: Option<PathBuf>,
    /// Continue from the snapshot in DIR instead of booting. --vcpus,
    /// --memory and the devices (same kinds, same order) must be those of
    /// the VM it was taken from; the devices get the backends given here.
    /// Read before entering --jail: DIR need not be inside it.
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// With --restore: "lazy" loads each page of the memory image when the
    /// guest first touches it (a userfaultfd; the VM holds only what it
    /// uses), "eager" copies the whole image before the guest runs.
    #[arg(long, value_name = "MODE", default_value = "lazy", value_parser = ["lazy", "eager"], requires = "restore")]
    restore_memory: String,
    /// With --restore (lazy): load the data pages this working-set file
    /// names before the guest runs, each checked like any other page; a
    /// malformed file, or one naming a page the image does not hold, is
    /// ignored with a warning. Read before entering --jail.
    #[arg(long, value_name = "FILE", requires = "restore")]
    working_set: Option<PathBuf>,
    /// With --restore (lazy): record the data pages loaded from the image
    /// until SIGUSR2, then write them to FILE (created, mode 0600; it must
    /// not exist) as a working set for --working-set. With --jail, FILE
    /// must be inside the jail directory.
    #[arg(
        long,
        value_name = "FILE",
        requires = "restore",
        conflicts_with = "working_set"
    )]
    record_working_set: Option<PathBuf>,
    /// With --restore (lazy): copy the template kernel's text and the
    /// pages of its initrd's files (the snapshot's shared ranges) into this
    /// VM's RAM like any other page instead of mapping it privately from
    /// the memory image (where every VM restored from the image shares
    /// its page cache until it writes a page).
    #[arg(long, requires = "restore")]
    no_shared_text: bool,
}

/// Set by SIGUSR1 when --snapshot-to is given.
static SNAPSHOT_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_snapshot(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SNAPSHOT_REQUESTED.store(true, Ordering::SeqCst);
}

/// Runs the VM; with `snapshot_to`, saves it there on SIGUSR1 and ends it.
fn run_vm(vmm: cocoon_vmm::Vmm, snapshot_to: Option<&Path>) -> anyhow::Result<ExitReason> {
    let running = vmm.start().context("the VM failed")?;
    let Some(dir) = snapshot_to else {
        return running.wait(None).context("the VM failed");
    };
    loop {
        if running.poll_exit(Duration::from_millis(50)).is_some() {
            return running.wait(Some(Duration::ZERO)).context("the VM failed");
        }
        if SNAPSHOT_REQUESTED.swap(false, Ordering::SeqCst) {
            let started = Instant::now();
            let saved = running.snapshot(dir);
            let reason = running.wait(Some(Duration::ZERO));
            let stats =
                saved.with_context(|| format!("cannot save the VM into {}", dir.display()))?;
            tracing::info!(
                dir = %dir.display(),
                allocated = stats.allocated,
                written = stats.written,
                took = ?started.elapsed(),
                "snapshot taken"
            );
            return reason.context("the VM failed");
        }
    }
}

/// RLIMIT_NOFILE of a jailed VMM: its KVM, eventfd and socket fds, and
/// the guest's vsock connections.
const JAIL_OPEN_FILES: u64 = 4096;

fn parse_seccomp(s: &str) -> Result<SeccompMode, String> {
    s.parse().map_err(|e: seccomp::SeccompError| e.to_string())
}

fn parse_limit(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of bytes")),
    }
}

fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "none" => Ok(SerialOutput::None),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(PathBuf::from(path))),
            _ => Err(format!("{s:?} is not stdout, none or file:PATH")),
        },
    }
}

fn parse_block(s: &str) -> Result<BlockConfig, String> {
    s.parse()
        .map_err(|e: cocoon_vmm::devices::virtio::block::BlockConfigError| e.to_string())
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    s.parse()
        .map_err(|e: cocoon_vmm::devices::virtio::net::NetConfigError| e.to_string())
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid", v)) => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("vsock cid {v:?} is not a number"))?;
                if !(3..=u64::from(u32::MAX)).contains(&n) {
                    return Err(format!(
                        "vsock cid {n} is reserved or too large; use 3 or more"
                    ));
                }
                cid = Some(n);
            }
            Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
            _ => return Err(format!("{part:?} is not cid=N or uds=PATH")),
        }
    }
    match (cid, uds) {
        (Some(cid), Some(uds_path)) => Ok(VsockConfig { cid, uds_path }),
        (None, _) => Err("--vsock needs cid=N (3 or more)".into()),
        (_, None) => Err("--vsock needs uds=PATH".into()),
    }
}

fn parse_fs(s: &str) -> Result<FsConfig, String> {
    cocoon_vmm::devices::virtio::fs::parse_fs_options(s).map_err(|e| e.to_string())
}

fn init_logging(args: &Args) -> anyhow::Result<()> {
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let level = &args.log_level;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).context("invalid RUST_LOG")?,
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?,
    };
    let subscriber = match &args.log_file {
        Some(path) => {
            let file = RingFile::open(path, args.log_limit).context("cannot open --log-file")?;
            log_subscriber(filter, Box::new(file), false)
        }
        None => log_subscriber(filter, Box::new(std::io::stderr()), true),
    };
    subscriber.try_init().context("cannot install the logger")
}

/// The fmt subscriber writing to `sink` through the line-rate limiter.
fn log_subscriber(
    filter: tracing_subscriber::EnvFilter,
    sink: Box<dyn Write + Send>,
    terminal: bool,
) -> impl tracing::Subscriber + Send + Sync {
    let writer = Mutex::new(LineLimiter::new(sink, DEFAULT_LINES_PER_SECOND));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // Colours only where a terminal may show them.
    if terminal {
        builder
    } else {
        builder.with_ansi(false)
    }
    .finish()
}

/// Puts the terminal on stdin in raw mode and restores it when dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enable() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and a valid pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: valid fd and a valid pointer to a termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// The jail of `args`, if it asks for one.
fn jail_config(args: &Args) -> Option<JailConfig> {
    let dir = args.jail.clone()?;
    let mut binds = vec![(args.kernel.clone(), "kernel".to_string())];
    if let Some(initrd) = &args.initrd {
        binds.push((initrd.clone(), "initrd".to_string()));
    }
    Some(JailConfig {
        dir,
        uid: args.jail_uid.unwrap_or(0),
        gid: args.jail_gid.unwrap_or(0),
        binds,
        max_open_files: JAIL_OPEN_FILES,
        monitor_closes: net_fds(args),
    })
}

/// The descriptors of `--net fd=N`.
fn net_fds(args: &Args) -> Vec<std::os::fd::RawFd> {
    args.net
        .iter()
        .filter_map(|n| match n.tap {
            TapSource::Fd(fd) => Some(fd),
            TapSource::Name(_) => None,
        })
        .collect()
}

/// The working-set recorder of --record-working-set: its file created now
/// (before any jail), and a signalfd for SIGUSR2, which `main` blocked in
/// every thread.
fn recorder(
    args: &Args,
    jail: Option<&JailConfig>,
) -> anyhow::Result<Option<cocoon_vmm::vstate::lazy_ram::Recorder>> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = &args.record_working_set else {
        return Ok(None);
    };
    if let Some(j) = jail {
        j.inside(path).context("--record-working-set")?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot create the working set {}", path.display()))?;
    let set = sigusr2_set();
    // SAFETY: a new signalfd for the set above; the result is checked.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create the SIGUSR2 signalfd");
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let signal = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(Some(cocoon_vmm::vstate::lazy_ram::Recorder {
        file,
        path: path.clone(),
        signal,
    }))
}

/// Block SIGUSR2 in this thread and every thread it makes: with
/// --record-working-set it is read from a signalfd (the page loader's),
/// and no other thread is interrupted by it.
fn block_sigusr2() {
    let set = sigusr2_set();
    // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// The signal set holding SIGUSR2 alone.
fn sigusr2_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before
    // sigaddset, both on a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        set
    }
}

/// Moves every path the VMM opens after entering `jail` to its jail path.
fn paths_into_jail(args: &mut Args, jail: &JailConfig) -> anyhow::Result<()> {
    args.kernel = PathBuf::from("/kernel");
    if args.initrd.is_some() {
        args.initrd = Some(PathBuf::from("/initrd"));
    }
    if let Some(v) = &mut args.vsock {
        v.uds_path = jail.inside(&v.uds_path).context("--vsock uds")?;
    }
    if let SerialOutput::File(p) = &mut args.serial {
        *p = jail.inside(p).context("--serial file")?;
    }
    if let Some(p) = &mut args.log_file {
        *p = jail.inside(p).context("--log-file")?;
    }
    if let Some(p) = &mut args.snapshot_to {
        *p = jail.inside(p).context("--snapshot-to")?;
    }
    Ok(())
}

fn run(mut args: Args, jail: Option<JailConfig>) -> anyhow::Result<i32> {
    let started = Instant::now();
    if args.kernel.as_os_str().is_empty() {
        bail!("--kernel is empty; pass the vmlinux printed by guest-kernel/build.sh");
    }
    // What needs the host's view is opened first: the jail hides it.
    cocoon_vmm::boot::detect_format(&args.kernel).context("cannot set up the VM")?;
    if let Some(initrd) = args.initrd.as_deref().filter(|p| !p.exists()) {
        bail!("initrd {} does not exist", initrd.display());
    }
    if !args.allow_slow_kvm {
        let flavor = cocoon_vmm::probe_kvm();
        if matches!(flavor, KvmFlavor::Pvm | KvmFlavor::SoftwareUnknown) {
            return Err(VmmError::SlowKvm(flavor)).context("cannot set up the VM");
        }
    }
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut block_sizes = Vec::new();
    for spec in &args.block {
        block_sizes.push(std::fs::metadata(&spec.path).map(|m| m.len()).unwrap_or(0));
        let block = Block::new(spec).context("cannot set up a --block device")?;
        devices.push(Box::new(block));
    }
    let mut fds = net_fds(&args);
    fds.sort_unstable();
    if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "--net fd={} is given twice; each descriptor backs one device",
            w[0]
        );
    }
    for spec in &args.net {
        let net = Net::new(spec).context("cannot set up a --net device")?;
        devices.push(Box::new(net));
    }
    if args.rng {
        devices.push(Box::new(
            Rng::new().context("cannot set up the --rng device")?,
        ));
    }
    let mut fs = Vec::new();
    for cfg in std::mem::take(&mut args.fs) {
        cfg.validate().context("cannot set up a --fs device")?;
        let stream = connect_socket(&cfg.socket)
            .with_context(|| format!("virtio-fs device '{}'", cfg.tag.as_str()))?;
        fs.push((cfg, stream));
    }
    // Read before the jail hides it; many VMs restore from one snapshot.
    let load_started = Instant::now();
    let loaded = match &args.restore {
        Some(dir) => match LoadedSnapshot::read_lazy(
            dir,
            args.memory << 20,
            if args.restore_memory == "eager" {
                RestoreMemory::Eager
            } else {
                RestoreMemory::Lazy
            },
            WorkingSet {
                prefetch: args.working_set.clone(),
                record: recorder(&args, jail.as_ref())?,
                share_text: !args.no_shared_text,
            },
        ) {
            Ok(loaded) => Some(loaded),
            // A page checked before the guest runs (eager, the working
            // set, the shared text): the snapshot is unusable, as when the
            // lazy loader finds one later.
            Err(e) if e.is_corrupt_memory() => {
                eprintln!(
                    "cocoon-vmm: error: cannot restore the VM from {}: {e}",
                    dir.display()
                );
                return Ok(EXIT_SNAPSHOT_MEMORY);
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot restore the VM from {}", dir.display()))
            }
        },
        None => None,
    };
    let snapshot_load = loaded.as_ref().map(|_| load_started.elapsed());
    if let Some(jail) = &jail {
        cocoon_vmm::vstate::vm::preopen_kvm().context("cannot set up the VM")?;
        paths_into_jail(&mut args, jail)?;
        jail::enter(jail).context("cannot enter the jail")?;
    }
    init_logging(&args)?;
    if args.snapshot_to.is_some() {
        seccomp::allow_snapshots();
    }
    seccomp::set_mode(args.seccomp).context("cannot set up the seccomp filters")?;
    let config = VmConfig {
        boot: BootSource::Kernel(KernelBoot {
            kernel: args.kernel,
            initrd: args.initrd,
            cmdline_extra: args.cmdline,
        }),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        serial: args.serial,
        console_limit: args.console_limit,
        serial_input: true,
        irqchip: true,
        // Probed above, before a jail could hide /proc and /sys.
        allow_slow_kvm: true,
        vsock: args.vsock,
        fs: Vec::new(),
    };
    let mut builder = match loaded {
        Some(loaded) => VmmBuilder::restore_loaded(config, loaded)
            .context("cannot restore the VM from its snapshot")?,
        None => VmmBuilder::new(config).context("cannot set up the VM")?,
    };
    for (cfg, stream) in fs {
        builder.add_fs_connected(&cfg, stream)?;
    }
    for device in devices {
        builder.add_virtio_device(device)?;
    }
    let vmm = builder.build().context("cannot set up the VM")?;
    if jail.is_some() {
        let largest_block = block_sizes.iter().copied().max().unwrap_or(0);
        // A snapshot's memory image is a sparse file of guest RAM's size.
        let image = if args.snapshot_to.is_some() {
            args.memory << 20
        } else {
            0
        };
        // A recorded working set is bounded by its format.
        let working_set = if args.record_working_set.is_some() {
            cocoon_vmm::vstate::working_set::MAX_BYTES as u64
        } else {
            0
        };
        jail::limit_file_size(
            args.console_limit
                .max(args.log_limit)
                .max(largest_block)
                .max(image)
                .max(working_set),
        )
        .context("cannot set up the jail")?;
    }
    tracing::info!(
        cmdline = vmm.cmdline().unwrap_or_default(),
        restored = args.restore.is_some(),
        ?snapshot_load,
        setup = ?started.elapsed(),
        "starting guest"
    );
    if args.snapshot_to.is_some() {
        // The handler only stores to an atomic (async-signal-safe).
        register_signal_handler(libc::SIGUSR1, request_snapshot)
            .context("cannot install the SIGUSR1 (snapshot) handler")?;
    }
    let terminal = RawTerminal::enable();
    let reason = run_vm(vmm, args.snapshot_to.as_deref());
    drop(terminal);
    let reason = reason?;
    if !matches!(reason, ExitReason::Reset | ExitReason::Snapshotted) {
        eprintln!("cocoon-vmm: {}", reason.describe());
    }
    Ok(reason.exit_code())
}

fn main() {
    // Keep our exit codes distinct from clap's default of 2 for usage errors.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                EXIT_SETUP_ERROR
            } else {
                EXIT_OK
            });
        }
    };
    if args.seccomp == SeccompMode::Off {
        eprintln!(
            "cocoon-vmm: WARNING: --seccomp off: no system call filter; a guest that \
             exploits a VMM bug gets every system call. For debugging only."
        );
    }
    if args.record_working_set.is_some() {
        // Before any thread or the jail's monitor exists.
        block_sigusr2();
    }
    let jail = jail_config(&args);
    if let Some(j) = &jail {
        // Before any thread exists: the VMM continues as PID 1 of a new
        // PID namespace; this process stays behind as its monitor.
        if let Err(e) = jail::fork_monitored(j, args.seccomp) {
            eprintln!("cocoon-vmm: error: cannot enter the jail: {e}");
            std::process::exit(EXIT_SETUP_ERROR);
        }
    }
    let code = match run(args, jail) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cocoon-vmm: error: {e:#}");
            EXIT_SETUP_ERROR
        }
    };
    debug_assert!([
        EXIT_OK,
        EXIT_SETUP_ERROR,
        EXIT_GUEST_PANIC,
        EXIT_TRIPLE_FAULT,
        EXIT_KVM_ERROR,
        EXIT_SNAPSHOT_MEMORY
    ]
    .contains(&code));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_destinations() {
        assert!(matches!(parse_serial("stdout"), Ok(SerialOutput::Stdout)));
        assert!(matches!(parse_serial("none"), Ok(SerialOutput::None)));
        match parse_serial("file:/tmp/console.log") {
            Ok(SerialOutput::File(p)) => assert_eq!(p, PathBuf::from("/tmp/console.log")),
            other => panic!("{other:?}"),
        }
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tty").is_err());
    }

    #[test]
    fn vsock_argument() {
        let v = parse_vsock("cid=3,uds=/run/v.sock").unwrap();
        assert_eq!(v.cid, 3);
        assert_eq!(v.uds_path, PathBuf::from("/run/v.sock"));
        assert_eq!(parse_vsock("uds=/x,cid=42").unwrap().cid, 42);
        assert!(parse_vsock("cid=2,uds=/x")
            .unwrap_err()
            .contains("reserved"));
        assert!(parse_vsock("cid=x,uds=/x")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_vsock("cid=3").unwrap_err().contains("uds=PATH"));
        assert!(parse_vsock("uds=/x").unwrap_err().contains("cid=N"));
        assert!(parse_vsock("cid=3,uds=/x,port=1").is_err());
    }

    #[test]
    fn defaults_and_required_kernel() {
        let args = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k"]).unwrap();
        assert_eq!(args.vcpus, 1);
        assert_eq!(args.memory, 128);
        assert!(args.initrd.is_none());
        assert!(Args::try_parse_from(["cocoon-vmm"]).is_err());
        let args =
            Args::try_parse_from(["cocoon-vmm", "--kernel", "/k", "--cmdline", "-- init-arg"])
                .unwrap();
        assert_eq!(args.cmdline.as_deref(), Some("-- init-arg"));
    }

    #[test]
    fn allow_pvm_from_env() {
        std::env::set_var("COCOON_ALLOW_PVM", "1");
        let on = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k"]).unwrap();
        std::env::set_var("COCOON_ALLOW_PVM", "0");
        let off = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k"]).unwrap();
        std::env::remove_var("COCOON_ALLOW_PVM");
        assert!(on.allow_slow_kvm);
        assert!(!off.allow_slow_kvm);
    }

    #[test]
    fn fs_devices_parse() {
        let args = Args::try_parse_from([
            "cocoon-vmm",
            "--kernel",
            "/k",
            "--fs",
            "tag=a,socket=/a.sock",
            "--fs",
            "tag=b,socket=/b.sock,queue_size=256",
        ])
        .unwrap();
        assert_eq!(args.fs.len(), 2);
        assert_eq!(args.fs[1].queue_size, 256);
        let err = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k", "--fs", "tag=a"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("socket=<path> is missing"), "{err}");
    }

    #[test]
    fn limits_parse_and_refuse_zero() {
        let args = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k"]).unwrap();
        assert_eq!((args.console_limit, args.log_limit), (1 << 20, 1 << 20));
        assert!(args.log_file.is_none());
        let args = Args::try_parse_from([
            "cocoon-vmm",
            "--kernel",
            "/k",
            "--console-limit",
            "4096",
            "--log-file",
            "/run/vmm.log",
            "--log-limit",
            "65536",
        ])
        .unwrap();
        assert_eq!((args.console_limit, args.log_limit), (4096, 65536));
        assert_eq!(args.log_file, Some(PathBuf::from("/run/vmm.log")));
        for opt in ["--console-limit", "--log-limit"] {
            let err = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k", opt, "0"])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(opt) && err.contains("must be at least 1"),
                "{err}"
            );
            let err = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k", opt, "1M"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a number of bytes"), "{err}");
        }
    }

    #[test]
    fn log_file_is_capped_and_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        let file = RingFile::open(&path, 8192).unwrap();
        let filter = tracing_subscriber::EnvFilter::new("debug");
        let start = std::time::Instant::now();
        tracing::subscriber::with_default(log_subscriber(filter, Box::new(file), false), || {
            for i in 0..20_000 {
                tracing::warn!(i, "the guest did something odd");
            }
        });
        let seconds = start.elapsed().as_secs() + 1;
        let mut text = std::fs::read(dir.path().join("vmm.log.1")).unwrap_or_default();
        text.extend(std::fs::read(&path).unwrap());
        let text = String::from_utf8(text).unwrap();
        assert!(text.len() <= 8192, "{} bytes", text.len());
        assert!(text.contains("the guest did something odd"));
        assert!(!text.contains('\x1b'), "no colours in a file");
        let lines = text.lines().count() as u64;
        assert!(
            lines <= (DEFAULT_LINES_PER_SECOND as u64 + 1) * seconds,
            "{lines} lines"
        );
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("Exit codes:"));
        assert!(help.contains("guest kernel panicked"));
        assert!(help.contains("tests/testhost/run.sh"));
    }
}

#[cfg(test)]
mod device_arg_tests {
    use super::*;

    #[test]
    fn block_and_rng_arguments() {
        let args = Args::try_parse_from([
            "cocoon-vmm",
            "--kernel",
            "/k",
            "--rng",
            "--block",
            "path=/a.img,readonly=on",
            "--block",
            "path=/b.img,id=data",
        ])
        .unwrap();
        assert!(args.rng);
        assert_eq!(args.block.len(), 2);
        assert!(args.block[0].read_only);
        assert_eq!(args.block[1].serial.as_deref(), Some("data"));
        let err = Args::try_parse_from([
            "cocoon-vmm",
            "--kernel",
            "/k",
            "--block",
            "path=/a,readonly=bogus",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("readonly=\"bogus\" is not on or off"), "{err}");
        let args = Args::try_parse_from([
            "cocoon-vmm",
            "--kernel",
            "/k",
            "--net",
            "tap=tap0,mac=02:00:00:00:00:01",
        ])
        .unwrap();
        assert_eq!(args.net[0].tap, TapSource::Name("tap0".into()));
        let args = Args::try_parse_from([
            "cocoon-vmm",
            "--kernel",
            "/k",
            "--net",
            "fd=3,mac=02:42:0a:63:00:02",
            "--net",
            "fd=4",
        ])
        .unwrap();
        assert_eq!(net_fds(&args), vec![3, 4]);
        let err = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k", "--net", "fd=2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("0-2 are stdio"), "{err}");
        let err = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k", "--net", "tap=t,fd=3"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        let err = Args::try_parse_from(["cocoon-vmm", "--kernel", "/k", "--net", "tap=t,mac=1:2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a unicast MAC"), "{err}");
    }
}
