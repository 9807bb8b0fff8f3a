//! One VM: KVM objects, guest RAM and the vCPUs, from boot to the program's end. Each vCPU runs on its own host
//! thread; the first to see the program end (exit, crash, deadlock) decides the outcome.

use crate::arch;
use crate::arch::{exception, trap_page, HostKind};
use crate::boot::{self, BootError, BootParams, BootState, MIN_MEMORY};
use crate::core_dump::{self, CoreProgram, CoreSetup};
use crate::core_file::{CoreThread, XState};
use crate::crash_stack;
use crate::debug::attach::DebugSocket;
use crate::debug::session::{Resume, Session, StopEvent};
use crate::debug::threads::{self, ThreadState, VcpuView};
use crate::debug::{gdb, memory as guest_memory, stubs::StubReturns};
use crate::disk::{Disk, VolumeConfig};
use crate::elf::{ElfError, ElfImage};
use crate::exit_state;
use crate::fault::{self, CrashReport};
use crate::host_signals::{Forwarder, HostSignals};
use crate::hypercall::{self, Action};
use crate::kick::Kicker;
use crate::kvm_stats::FaultCounter;
use crate::link_map::{self, RootfsInRam};
use crate::loader::{self, PreparedProgram};
use crate::memory::{GuestRam, MemoryError};
use crate::netcard::{NetCard, NetConfig};
use crate::park::Parker;
use crate::preempt::{self, Preemption};
use crate::ready::{ReadyMachine, Shape};
use crate::rewrite::{RewriteReport, SiteCounts};
use crate::rewrite_cache::RewriteCache;
use crate::rootfs_image::Rootfs;
use crate::shootdown::Shootdown;
use crate::snapshot::pause::{Pause, Release};
use crate::snapshot::vcpu_state::VcpuState;
use crate::snapshot::{self, SnapshotError};
use crate::stdin::StdinRelay;
use crate::stub_return;
use crate::virtio::blk::{Blk, BlkStats};
use crate::virtio::net::NetStats;
use kiln_abi::boot::{NetInfo, VolumeInfo, MAX_VOLUMES, MOUNT_PATH_MAX};
use kiln_abi::hypercall::{FaultRecord, Hypercall, FAULT_RECORD_OFFSET, HYPERCALL_PORT, INTERRUPTED};
use kiln_abi::layout::{direct_map, HUGE_PAGE_SIZE};
use kiln_seccomp::Kind;
use kvm_bindings::{CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: it does not exist; KVM is not available here (load the kvm module, or use a host or VM with virtualization enabled)")]
    KvmMissing,
    #[error("cannot open /dev/kvm: permission denied; add yourself to the kvm group (e.g. `sudo usermod -aG kvm $USER`, then log in again)")]
    KvmDenied,
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the program: {0}")]
    Program(#[source] ElfError),
    #[error("the built-in library OS: {0}")]
    Kernel(#[source] ElfError),
    #[error("--memory {requested} is too small: Kiln needs at least {minimum} bytes")]
    MemoryTooSmall { requested: u64, minimum: u64 },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("cannot get random bytes from the host for the guest")]
    Random(#[source] std::io::Error),
    #[error("--cpus {0} is out of range: Kiln runs 1 to {MAX_VCPUS} vCPUs")]
    Cpus(u32),
    #[error("too many volumes: Kiln mounts at most {MAX_VOLUMES}")]
    TooManyVolumes,
    #[error("volume {name}: cannot use its file")]
    Volume {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a host thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot make a pipe to stop the network's receive thread")]
    Pipe(#[source] std::io::Error),
    #[error(transparent)]
    HostKind(#[from] arch::host::ProbeError),
    #[error("the host-kind probe's thread failed (a bug in Kiln: its message is above)")]
    ProbeThread,
    #[error("gdb: {0}")]
    Debug(String),
    #[error(transparent)]
    Gdb(#[from] gdb::GdbError),
    #[error(transparent)]
    Seccomp(#[from] kiln_seccomp::SeccompError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Where the program's standard output and error and the trace go. Shared by the vCPUs' threads.
pub trait Console: Send + Sync {
    /// Writes the program's bytes to its fd 1 or 2; an error is returned to the program as a failed write.
    fn write(&self, fd: u64, bytes: &[u8]) -> std::io::Result<()>;
    /// One line of `--trace-syscalls` output.
    fn trace(&self, line: &str);
    /// The program's stdin, taken once when the VM runs; none (the default): it reads end of file.
    fn take_stdin(&self) -> Option<crate::stdin::StdinSource> {
        None
    }
    /// The terminal the program's standard streams are (a pty whose other side the launcher holds), for the terminal
    /// ioctls it makes (termios, the window's size); none (the default): they fail with ENOTTY.
    fn terminal_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Most vCPUs one VM can have (the library OS's per-vCPU table).
pub const MAX_VCPUS: u32 = 64;

#[derive(Debug)]
pub struct VmConfig {
    pub memory: u64,
    /// vCPUs, each a host thread (at most [`MAX_VCPUS`]).
    pub cpus: u32,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub exe_path: String,
    /// The directory the program starts in (`kiln run -w`), absolute; empty for the root.
    pub workdir: String,
    pub trace_syscalls: bool,
    /// The root filesystem image (built by `kiln_vmm::rootfs::RootfsBuilder`, or a file of `rootfs_cache`).
    pub rootfs: Rootfs,
    /// A dynamically linked program's loader (`PT_INTERP`), rewritten (`crate::shared_object`); empty for a static
    /// program. The libraries it opens come from `rootfs`, rewritten the same way.
    pub interpreter: Vec<u8>,
    /// Whether a shared object in `rootfs` has syscall sites that stayed in place: page 0 is mapped for them.
    pub objects_need_page0: bool,
    /// Where rewritten programs are kept between runs; `None` rewrites every time.
    pub rewrite_cache: Option<PathBuf>,
    /// The program already prepared (an image's, in [`crate::rewrite_cache::encode`]'s format; the caller vouches that
    /// it was prepared from this program): used when it decodes and fits the program's layout, which is then not
    /// rewritten at all; otherwise ignored.
    pub prepared: Option<Vec<u8>>,
    /// What identifies the program's bytes without hashing them (`rootfs_cache::identity` of its host file), for the
    /// rewrite cache; the caller vouches that it was taken of these bytes. `None` hashes them.
    pub program_identity: Option<Vec<u8>>,
    /// The network card, if the VM has one.
    pub net: Option<NetConfig>,
    /// Volumes, mounted in this order (at most [`MAX_VOLUMES`]).
    pub volumes: Vec<VolumeConfig>,
    /// Where a crash writes its core file (`kiln run --core`); None for none.
    pub core_file: Option<PathBuf>,
    /// RLIMIT_NOFILE (soft, hard) the program starts with; none for the library OS's own (its most).
    pub nofile: Option<(u64, u64)>,
    /// A machine made ahead of time for this VM ([`ReadyMachine`]); used if its shape is this VM's, else dropped and
    /// one made now.
    pub ready: Option<ReadyMachine>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The program called exit/exit_group.
    Exited(i32),
    /// The program was ended by the default action of a signal that does not dump core (SIGTERM, SIGPIPE, ...).
    Killed(u32),
    /// Every thread of the program waits and nothing can wake any (natively it would hang forever): how many threads
    /// and what each waits on.
    Deadlocked { threads: u64, waits: String },
    /// The vCPU died on a fault or an unrewritten syscall, or a signal that dumps core ended the program (SIGABRT
    /// from `abort()`).
    Crashed(Box<CrashReport>),
    /// The program did not take a stop signal from the host (SIGINT, SIGTERM, SIGQUIT) within the grace period
    /// (see [`crate::host_signals`]), so the VMM ended it: the signal, and the grace it had.
    SignalUntaken { signal: u32, grace: std::time::Duration },
    /// The VMM stopped a guest that broke the hypercall contract, or the library OS reported a bug.
    Stopped(String),
    /// A snapshot was written to this file and the VM ended there (`kiln snapshot`).
    Snapshotted(PathBuf),
}

/// What a finished run reports besides its outcome.
#[derive(Debug, Default)]
pub struct RunStats {
    /// The kind of KVM the VM ran on (`arch::host`), in words.
    pub host: &'static str,
    pub vm_exits: u64,
    /// What the network card moved, if the VM had one.
    pub net: Option<NetStats>,
    /// What each volume's device did, by name.
    pub volumes: Vec<(String, BlkStats)>,
    /// (number, calls, of which -ENOSYS), only numbers that were called.
    pub syscalls: Vec<(u64, u32, u32)>,
    /// How the program's syscall sites were rewritten.
    pub syscall_sites: SiteCounts,
    /// Guest page faults KVM fixed, all vCPUs together (`kvm_stats`), where the host reports them: on shadow
    /// paging, each costs about what a VM exit does.
    pub shadow_faults: Option<u64>,
}

pub struct Vm {
    _kvm: Kvm,
    _vm: VmFd,
    vcpus: Vec<VcpuFd>,
    shared: Arc<Shared>,
    boot: BootState,
    /// A gdb connection to serve from the program's first instruction on (`kiln run --gdb`).
    gdb: Option<(std::net::TcpStream, StubReturns)>,
    /// Where debuggers hand their connections while the program runs (`kiln debug`).
    attach: Option<(DebugSocket, StubReturns)>,
    /// What the thread running the VM waits for; made with the VM so that a [`Controller`] exists before it runs.
    events: (Sender<Event>, std::sync::mpsc::Receiver<Event>),
}

/// Asks a running VM for things from another thread (`kiln snapshot` through a detached instance's control socket,
/// or kilnd's API).
#[derive(Clone)]
pub struct Controller {
    events: Sender<Event>,
}

impl Controller {
    /// Pauses the VM, writes a snapshot of it as `request` says and lets it run on or end; waits for the outcome.
    pub fn snapshot(&self, request: snapshot::Request) -> Result<snapshot::Written, SnapshotError> {
        let (reply, answer) = std::sync::mpsc::channel();
        let gone = || SnapshotError::NotQuiescent("the VM has ended".into());
        self.events.send(Event::Snapshot(request, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// What every vCPU thread needs. Guest RAM lives here, in an `Arc` that each vCPU thread holds with its vCPU, so the
/// memory outlives every vCPU that could touch it.
pub(crate) struct Shared {
    pub(crate) ram: GuestRam,
    pub(crate) parkers: Vec<Parker>,
    /// The vCPUs' host threads, and how to interrupt each one's KVM_RUN.
    pub(crate) kicks: Kicker,
    tlb: Shootdown,
    preempt: Preemption,
    /// Set once the outcome is known; vCPUs stop at their next exit.
    done: AtomicBool,
    exits: AtomicU64,
    pub(crate) pml4: u64,
    /// The library OS's thread table (`kiln_abi::threads`), guest-physical; 0 if it has none.
    pub(crate) threads_phys: u64,
    /// A debugger's session, once one is attached (`crate::debug`).
    debug: OnceLock<Arc<Session>>,
    stack_bottom: u64,
    /// `kiln_fault_entry`, 0 if the library OS has none, and where the library OS's code lies.
    fault_entry: u64,
    kernel_span: std::ops::Range<u64>,
    vdso_code: Vec<std::ops::Range<u64>>,
    /// Syscall sites rewritten in place (`call *%rax` into page 0), sorted, for crash reports.
    syscall_sites: Vec<u64>,
    /// The program's dynamic section and the root filesystem in RAM: a crash report's shared objects.
    program_dynamic: Option<u64>,
    rootfs: RootfsInRam,
    /// What a crash's core file needs from boot, if one is wanted.
    core: Option<CoreSetup>,
    /// What a core file says of the program, for a snapshot to keep.
    core_program: CoreProgram,
    /// The auxiliary vector the program started with (gdb's `qXfer:auxv:read`: where a PIE and its loader are).
    pub(crate) auxv: Vec<u8>,
    net: Option<NetCard>,
    disks: Vec<(String, Disk)>,
    /// The program's stdin, once the run has one (`crate::stdin`).
    stdin: OnceLock<StdinRelay>,
    /// Whether the user asked for `--trace-syscalls` (else the guest's trace hypercalls are refused).
    trace_syscalls: bool,
    host: HostKind,
    /// Whether KVM copies each vCPU's state into its `kvm_run` at every exit ([`exit_state`]).
    synced_state: bool,
    /// Where vCPUs hold while a snapshot is taken.
    pause: Pause,
    tsc_hz: u64,
    /// The snapshot file (and its RAM's offset) this VM was restored from: its RAM's untouched pages are there.
    restored_from: Option<(std::fs::File, u64)>,
    /// The vCPUs' CPUID, for a snapshot to keep.
    cpuid: Vec<snapshot::CpuidLeaf>,
}

pub(crate) fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(kvm_open_error)
}

/// Says which of the usual reasons kept `/dev/kvm` closed, and what to do about it.
fn kvm_open_error(e: kvm_ioctls::Error) -> VmError {
    match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmDenied,
        _ => VmError::KvmOpen(e),
    }
}

pub(crate) fn host_random<const N: usize>() -> Result<[u8; N], VmError> {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(VmError::Random(e));
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(bytes)
}

/// The KVM side of a VM, before anything is loaded into it.
pub(crate) struct Machine {
    pub(crate) kvm: Kvm,
    pub(crate) vm: VmFd,
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) ram: GuestRam,
    pub(crate) hwcap: u64,
    pub(crate) xsave: arch::Xsave,
    /// Whether the vCPUs are AMD's (SVM underneath, on hardware KVM).
    pub(crate) amd: bool,
    pub(crate) tsc_hz: u64,
    pub(crate) boot_tsc: u64,
    pub(crate) boot_realtime_ns: u64,
    pub(crate) synced_state: bool,
    /// The CPUID the vCPUs were given.
    pub(crate) cpuid: CpuId,
}

/// Whether a VM with `memory` bytes of RAM gets huge pages (`kiln_abi::layout::HUGE_PAGES_FROM`). A huge page costs
/// the host 2 MiB once any byte of it is touched: an idle HTTP server in 64 MiB holds 3.2 MiB of anonymous host memory
/// in 4 KiB pages and 35 MiB in huge pages (`docs/benchmarks.md`), so small VMs, which are there to be dense, keep
/// 4 KiB pages; a VM given 256 MiB or more is there to use it, and its first touches cost one shadow fault per 2 MiB
/// instead of 512. The library OS decides by the same rule where it maps 2 MiB pages.
pub fn huge_pages_for(memory: u64) -> crate::memory::HugePages {
    if kiln_abi::layout::huge_pages_for(memory) {
        crate::memory::HugePages::Yes
    } else {
        crate::memory::HugePages::No
    }
}

/// Makes the KVM VM, its RAM and `cpus` vCPUs, given `cpuid` (a restored VM's), else what KVM supports.
pub(crate) fn create_machine(memory: u64, cpus: u32, cpuid: Option<CpuId>) -> Result<Machine, VmError> {
    finish_machine(ReadyMachine::make(Shape { memory, cpus })?, cpuid)
}

/// The CPUID KVM supports on this host, asked once per process (the host's processor does not change under it): a
/// process that makes many VMs (kilnd) pays the ioctl's 0.8-1 ms under kvm_pvm once.
fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmError> {
    static SUPPORTED: OnceLock<CpuId> = OnceLock::new();
    if let Some(cpuid) = SUPPORTED.get() {
        return Ok(cpuid.clone());
    }
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("report CPUID"))?;
    Ok(SUPPORTED.get_or_init(|| cpuid).clone())
}

/// A machine of `ready` (made ahead of time, or just now): its vCPUs given `cpuid` (a restored VM's), else what KVM
/// supports, and the host's clock read.
pub(crate) fn finish_machine(ready: ReadyMachine, cpuid: Option<CpuId>) -> Result<Machine, VmError> {
    let ReadyMachine { mut vcpus, vm, kvm, ram, .. } = ready;
    // Asking KVM costs 0.8-1 ms under kvm_pvm (the host's CPUID instructions trap): a restore brings its own, with
    // the extended state its vCPUs had (in their saved registers).
    let (cpuid, xsave) = match cpuid {
        Some(cpuid) => (cpuid, arch::Xsave::default()),
        None => {
            let mut cpuid = supported_cpuid(&kvm)?;
            let xsave = arch::Xsave::configure(&mut cpuid);
            (cpuid, xsave)
        }
    };
    let synced_state = exit_state::supported(&kvm);
    for vcpu in &mut vcpus {
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        if synced_state {
            exit_state::sync(vcpu);
        }
    }
    let vcpu = &vcpus[0];
    let hwcap = cpuid.as_slice().iter().find(|e| e.function == 1 && e.index == 0).map_or(0, |e| u64::from(e.edx));
    let amd = arch::host::amd_cpu(&cpuid);

    let tsc_hz = u64::from(vcpu.get_tsc_khz().map_err(kvm_err("report the TSC frequency"))?) * 1000;
    let mut tsc =
        Msrs::from_entries(&[kvm_bindings::kvm_msr_entry { index: arch::MSR_IA32_TSC, ..Default::default() }])
            .expect("one MSR entry fits");
    vcpu.get_msrs(&mut tsc).map_err(kvm_err("read the guest TSC"))?;
    let boot_realtime_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let boot_tsc = tsc.as_slice()[0].data;
    Ok(Machine { kvm, vm, vcpus, ram, hwcap, xsave, amd, tsc_hz, boot_tsc, boot_realtime_ns, synced_state, cpuid })
}

/// Parses both ELF images and prepares the program (the image's preparation or the cache's when there is one), once
/// its segments are known to fit in `memory` bytes.
pub(crate) fn prepare(
    kernel_elf: &[u8],
    program_elf: &[u8],
    memory: u64,
    cache: Option<&std::path::Path>,
    given: Option<&[u8]>,
    identity: Option<&[u8]>,
) -> Result<(ElfImage, ElfImage, PreparedProgram), VmError> {
    let program = ElfImage::parse(program_elf).map_err(VmError::Program)?;
    loader::check_fits(&program, memory).map_err(BootError::from)?;
    let given = given.and_then(crate::rewrite_cache::decode).filter(|p| p.fits(&program));
    if let Some(prepared) = given {
        tracing::debug!("the program comes prepared (an image's)");
        let kernel = ElfImage::parse(kernel_elf).map_err(VmError::Kernel)?;
        return Ok((kernel, program, prepared));
    }
    let prepared = match cache {
        Some(dir) => {
            let cache = RewriteCache::new(dir);
            let (prepared, hit) = match identity {
                Some(identity) => cache.prepare_identified(identity, &program, program_elf),
                None => cache.prepare(&program, program_elf),
            }
            .map_err(BootError::from)?;
            tracing::debug!(hit, "rewrite cache at {}", dir.display());
            prepared
        }
        None => loader::prepare_program(&program, program_elf).map_err(BootError::from)?,
    };
    let kernel = ElfImage::parse(kernel_elf).map_err(VmError::Kernel)?;
    Ok((kernel, program, prepared))
}

impl Vm {
    /// Checks the program, builds the VM and everything in it; the program has not run yet.
    pub fn new(kernel_elf: &[u8], program_elf: &[u8], mut config: VmConfig) -> Result<Vm, VmError> {
        if config.memory < MIN_MEMORY {
            return Err(VmError::MemoryTooSmall { requested: config.memory, minimum: MIN_MEMORY });
        }
        if config.cpus == 0 || config.cpus > MAX_VCPUS {
            return Err(VmError::Cpus(config.cpus));
        }
        if config.volumes.len() > MAX_VOLUMES {
            return Err(VmError::TooManyVolumes);
        }
        let mut blks = Vec::new();
        for v in std::mem::take(&mut config.volumes) {
            let blk = Blk::new(v.file, &v.name).map_err(|source| VmError::Volume { name: v.name.clone(), source })?;
            blks.push((v.name, v.mount, blk));
        }
        let memory = config.memory.div_ceil(HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
        let started = std::time::Instant::now();
        // The program's own errors come first, before any KVM work: they are what the user can fix. (Preparing it on
        // a second thread while KVM builds the VM was measured slower: creating a VM sends IPIs to every host CPU.)
        let (kernel, program, prepared) = prepare(
            kernel_elf,
            program_elf,
            memory,
            config.rewrite_cache.as_deref(),
            config.prepared.as_deref(),
            config.program_identity.as_deref(),
        )?;
        if let Some(interp) = program.interpreter.as_ref().filter(|_| config.interpreter.is_empty()) {
            return Err(VmError::Program(ElfError::Dynamic(interp.clone())));
        }
        let prepared_at = started.elapsed();
        let Machine {
            kvm,
            vm,
            mut vcpus,
            mut ram,
            hwcap,
            xsave,
            amd,
            tsc_hz,
            boot_tsc,
            boot_realtime_ns,
            synced_state,
            cpuid,
        } = match config.ready.take() {
            Some(ready) if ready.shape() == Shape::of(memory, config.cpus) => finish_machine(ready, None)?,
            _ => create_machine(memory, config.cpus, None)?,
        };
        let machine_ready = started.elapsed();

        let params = BootParams {
            argv: config.argv.clone(),
            env: config.env.clone(),
            exe_path: config.exe_path.clone(),
            workdir: config.workdir.clone(),
            vcpus: config.cpus,
            trace_syscalls: config.trace_syscalls,
            pod_network: config.net.as_ref().is_some_and(|n| n.publish.is_some()),
            random_seed: host_random()?,
            at_random: host_random()?,
            hwcap,
            xsave,
            tsc_hz,
            boot_tsc,
            boot_realtime_ns,
            rootfs: std::mem::take(&mut config.rootfs),
            interpreter: std::mem::take(&mut config.interpreter),
            objects_need_page0: config.objects_need_page0,
            nofile: config.nofile,
            net: config.net.as_ref().map(|n| NetInfo {
                mac: n.mac,
                mtu: n.mtu,
                ipv4: n.ipv4.octets(),
                gateway: n.gateway.octets(),
                prefix_len: n.prefix_len,
                ipv6: n.ipv6.map_or([0; 16], |(ip, _)| ip.octets()),
                ipv6_prefix_len: n.ipv6.map_or(0, |(_, prefix)| prefix),
                gateway6: n.gateway6.map_or([0; 16], |g| g.octets()),
                ..NetInfo::default()
            }),
            volumes: blks.iter().map(|(_, mount, blk)| volume_info(mount, blk.capacity())).collect(),
            routes: config.net.as_ref().map(|n| n.routes.clone()).unwrap_or_default(),
        };
        // The host-kind probe runs on vCPU 0 while the boot layout is built: its one VM exit costs the boot nothing.
        let probe = arch::host::Probe::write(&mut ram)?;
        let (host, boot) = std::thread::scope(|scope| {
            let vcpu0 = &mut vcpus[0];
            let measuring = scope.spawn(|| probe.run(vcpu0, amd));
            let boot = boot::build(&mut ram, (&kernel, kernel_elf), (&program, program_elf, prepared), &params);
            (measuring.join(), boot)
        });
        let host = host.map_err(|_| VmError::ProbeThread)??;
        let synced_state = synced_state && host.syncs_exit_state();
        if !synced_state {
            vcpus.iter_mut().for_each(exit_state::unsync);
        }
        let boot = boot?;
        probe.finish(&ram)?;
        let built = started.elapsed();

        for (vcpu, start) in vcpus.iter().zip(&boot.vcpus) {
            let sregs = vcpu.get_sregs().map_err(kvm_err("read special registers"))?;
            let tables = (direct_map(boot.gdt_phys), direct_map(start.tss_phys));
            vcpu.set_sregs(&arch::sregs(host, sregs, boot.pml4, tables, xsave))
                .map_err(kvm_err("set special registers"))?;
            xsave.enable(vcpu).map_err(kvm_err("enable the extended state (XCR0)"))?;
            vcpu.set_msrs(&arch::msrs(trap_page::LSTAR)).map_err(kvm_err("set MSRs"))?;
            vcpu.set_regs(&arch::regs(start.rip, start.rsp, start.rdi, start.rsi)).map_err(kvm_err("set registers"))?;
        }
        tracing::debug!(host = host.name(), ?prepared_at, ?machine_ready, ?built, total = ?started.elapsed(), "VM ready");
        tracing::debug!("{}", boot.program.report.counts());
        let core_program = CoreProgram::new(&config.exe_path, &config.argv, &program, boot.program.base);
        let devices = Devices {
            core: config.core_file.take().map(|path| CoreSetup::new(path, core_program.clone(), boot.auxv.clone())),
            core_program,
            net: config.net.map(|n| NetCard::new(n.backend, n.mac, boot::net_mmio_phys(memory)).publishing(n.publish)),
            disks: blks
                .into_iter()
                .enumerate()
                .map(|(i, (name, _, blk))| (name, Disk::new(blk, boot::volume_mmio_phys(memory, i))))
                .collect(),
            trace_syscalls: config.trace_syscalls,
        };
        let kind = (host, synced_state, tsc_hz);
        Ok(Vm::assemble((kvm, vm, vcpus), ram, boot, kind, devices, (None, cpuid)))
    }

    /// The VM of `machine` (its KVM objects, its RAM laid out as `boot` says) with `devices`, on a host of `kind`
    /// (host kind, whether exits sync the vCPUs' state, TSC rate); `restored_from` for a VM made from a snapshot.
    pub(crate) fn assemble(
        (kvm, vm, vcpus): (Kvm, VmFd, Vec<VcpuFd>),
        ram: GuestRam,
        boot: BootState,
        (host, synced_state, tsc_hz): (HostKind, bool, u64),
        devices: Devices,
        (restored_from, cpuid): (Option<(std::fs::File, u64)>, CpuId),
    ) -> Vm {
        let cpus = vcpus.len();
        let mut syscall_sites = boot.program.report.in_place.clone();
        syscall_sites.sort_unstable();
        let shared = Arc::new(Shared {
            ram,
            parkers: (0..cpus).map(|_| Parker::default()).collect(),
            kicks: Kicker::new(cpus),
            tlb: Shootdown::new(cpus),
            preempt: Preemption::new(cpus),
            done: AtomicBool::new(false),
            exits: AtomicU64::new(0),
            pml4: boot.pml4,
            threads_phys: boot.threads_phys,
            debug: OnceLock::new(),
            stack_bottom: boot.stack_bottom,
            fault_entry: boot.fault_entry,
            kernel_span: boot.kernel_span.clone(),
            vdso_code: boot.vdso_code.clone(),
            syscall_sites,
            program_dynamic: boot.program.dynamic,
            rootfs: boot.rootfs,
            auxv: boot.auxv.clone(),
            core: devices.core,
            core_program: devices.core_program,
            net: devices.net,
            disks: devices.disks,
            stdin: OnceLock::new(),
            trace_syscalls: devices.trace_syscalls,
            host,
            synced_state,
            pause: Pause::new(cpus),
            tsc_hz,
            restored_from,
            cpuid: snapshot::CpuidLeaf::all_of(&cpuid),
        });
        let events = std::sync::mpsc::channel();
        Vm { _kvm: kvm, _vm: vm, vcpus, shared, boot, gdb: None, attach: None, events }
    }

    /// A handle to ask the VM for things while it runs.
    pub fn controller(&self) -> Controller {
        Controller { events: self.events.0.clone() }
    }

    /// Serves gdb on `conn` while the program runs (`kiln run --gdb`): the program stops at its first instruction
    /// (its entry, or its loader's), where gdb takes over. `conn` is an accepted connection.
    pub fn debug_with(&mut self, conn: std::net::TcpStream) -> Result<(), VmError> {
        let first = self.boot.first_instruction;
        let (ram, pml4) = (&self.shared.ram, self.shared.pml4);
        let mut byte = [0u8];
        if guest_memory::read(ram, pml4, first, &mut byte) != 1
            || guest_memory::write(ram, pml4, first, &[crate::debug::session::INT3]) != 1
        {
            return Err(VmError::Debug(format!("the program's first instruction ({first:#x}) is not mapped")));
        }
        let session = Arc::new(Session::new(self.shared.parkers.len(), Some((first, byte[0]))));
        if self.shared.debug.set(session).is_err() {
            return Err(VmError::Debug("a debugger is already attached".into()));
        }
        let stubs = StubReturns::read(ram, pml4, self.boot.program.stubs.clone(), &self.boot.program.report);
        tracing::debug!(sites = stubs.len(), "gdb: syscall stubs mapped back to the program's code");
        self.gdb = Some((conn, stubs));
        Ok(())
    }

    /// Lets debuggers attach while the program runs (`kiln debug`): they hand their connections over `socket`
    /// (`debug::attach`), and a `debugger` thread serves them, one at a time.
    pub fn accept_debuggers(&mut self, socket: DebugSocket) {
        let (ram, pml4) = (&self.shared.ram, self.shared.pml4);
        let stubs = StubReturns::read(ram, pml4, self.boot.program.stubs.clone(), &self.boot.program.report);
        self.attach = Some((socket, stubs));
    }

    /// A crash's core file goes into `file` (opened before the VM runs, e.g. an unnamed file in an instance's
    /// folder) instead of being made at the path `VmConfig::core_file` gave, which still names it in the report: the
    /// crashed vCPU's thread then only writes, within its seccomp list. False if no core file was asked for, or
    /// the VM already runs.
    pub fn core_into(&mut self, file: std::fs::File) -> bool {
        match Arc::get_mut(&mut self.shared).and_then(|shared| shared.core.as_mut()) {
            Some(setup) => {
                setup.opened = Some(Arc::new(file));
                true
            }
            None => false,
        }
    }

    pub fn rewrite_report(&self) -> &RewriteReport {
        &self.boot.program.report
    }

    /// Runs the program to its end: each vCPU on a host thread of its own; returns the first outcome. vCPUs still
    /// running then are kicked out of the guest and their threads end (a daemon runs many VMs in one process).
    /// Meanwhile every signal `host_signals` reports is forwarded to the program (as Docker forwards SIGINT and
    /// SIGTERM to a container's process). This thread blocks throughout: an idle VM costs the host no CPU.
    pub fn run(self, console: Arc<dyn Console>, host_signals: HostSignals) -> Result<(Outcome, RunStats), VmError> {
        let started = std::time::Instant::now();
        let fault_counters: Vec<_> = self.vcpus.iter().map(FaultCounter::open).collect();
        let (tx, rx) = self.events;
        // The card's receive side first, so that no frame comes before anything would take it to the guest. A queue
        // the guest broke stops the VM from there too: the guest may never make the exit that would find it.
        let weak = Arc::downgrade(&self.shared);
        let stopped = tx.clone();
        let deliver = Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                if let Some(card) = &shared.net {
                    if let Err(why) =
                        card.deliver(shared.ram.inner(), || shared.parkers.iter().for_each(Parker::unpark))
                    {
                        finish(&shared, &stopped, Ok(Outcome::Stopped(why)));
                    }
                }
            }
        });
        // The pump stops when this function returns: the pipe's write end closes.
        let mut _pump_stop = None;
        if self.shared.net.as_ref().is_some_and(|card| !card.set_waker(deliver)) {
            let (stop, stop_write) = pipe().map_err(VmError::Pipe)?;
            _pump_stop = Some(stop_write);
            let (shared, stopped) = (self.shared.clone(), tx.clone());
            std::thread::Builder::new()
                .name("net-rx".into())
                .spawn(move || {
                    if let Err(e) = kiln_seccomp::confine(Kind::NetRx) {
                        return finish(&shared, &stopped, Err(e.into()));
                    }
                    if let Some(card) = &shared.net {
                        let wake = || shared.parkers.iter().for_each(Parker::unpark);
                        if let Err(why) = card.pump(shared.ram.inner(), &stop, wake) {
                            finish(&shared, &stopped, Ok(Outcome::Stopped(why)));
                        }
                    }
                })
                .map_err(VmError::Thread)?;
        }
        // Before the first vCPU runs, so that the program's first look finds the terminal and the stdin the launcher
        // gives.
        if console.terminal_fd().is_some() {
            let word = self.boot.host_signals_phys + 8 * kiln_abi::boot::HOST_TERMINAL;
            self.shared.ram.write_obj(word, 1u64)?;
        }
        if let Some(source) = console.take_stdin() {
            let relay = StdinRelay::new(&self.shared.ram, self.boot.host_signals_phys);
            let _ = self.shared.stdin.set(relay);
            let (shared, stopped) = (self.shared.clone(), tx.clone());
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    if let Err(e) = kiln_seccomp::confine(Kind::Stdin) {
                        return finish(&shared, &stopped, Err(e.into()));
                    }
                    relay_stdin(&shared, source);
                })
                .map_err(VmError::Thread)?;
        }
        for (id, vcpu) in self.vcpus.into_iter().enumerate() {
            let (shared, console) = (self.shared.clone(), console.clone());
            let tx = tx.clone();
            let start = self.boot.vcpus[id];
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    // A panic here is a bug in Kiln, but it must still end the VM: the receive side holds an outcome
                    // sender too, so the channel would never report every vCPU gone.
                    let run = || run_vcpu(vcpu, id, start.hypercall_block_phys, &shared, &*console);
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
                        Ok(Outcome::Stopped(format!("vCPU {id}'s thread failed (a bug in Kiln: its message is above)")))
                    });
                    finish(&shared, &tx, result);
                    shared.pause.gone(id);
                    if let Some(session) = shared.debug.get() {
                        session.gone(id);
                    }
                })
                .map_err(VmError::Thread)?;
        }
        let stub = match (self.gdb, self.shared.debug.get()) {
            (Some((conn, stubs)), Some(session)) => {
                let (shared, session, tx) = (self.shared.clone(), session.clone(), tx.clone());
                let serving = std::thread::Builder::new().name("gdb".into()).spawn(move || {
                    if let Err(e) = kiln_seccomp::confine(Kind::Debugger) {
                        session.detach();
                        return finish(&shared, &tx, Err(e.into()));
                    }
                    let ended = gdb::serve(shared.clone(), session, conn, true, stubs);
                    match &ended {
                        Ok(gdb::Ended::Killed) => {
                            finish(&shared, &tx, Ok(Outcome::Stopped("gdb killed the program".into())))
                        }
                        Err(e) => finish(&shared, &tx, Err(VmError::Debug(e.to_string()))),
                        Ok(_) => {}
                    }
                });
                Some(serving.map_err(VmError::Thread)?)
            }
            _ => None,
        };
        // The debugger thread stops when this function returns: the pipe's write end closes.
        let mut _debugger_stop = None;
        if let Some((socket, stubs)) = self.attach {
            let (stop, stop_write) = pipe().map_err(VmError::Pipe)?;
            _debugger_stop = Some(stop_write);
            let (shared, tx) = (Arc::downgrade(&self.shared), tx.clone());
            std::thread::Builder::new()
                .name("debugger".into())
                .spawn(move || serve_debuggers(&socket, &stop, &shared, &tx, &stubs))
                .map_err(VmError::Thread)?;
        }
        let HostSignals { mut wait, grace } = host_signals;
        let signals_tx = tx;
        std::thread::Builder::new()
            .name("host-signals".into())
            .spawn(move || {
                if let Err(e) = kiln_seccomp::confine(Kind::HostSignals) {
                    let _ = signals_tx.send(Event::Ended(Err(e.into())));
                    return;
                }
                while signals_tx.send(Event::Signals(wait())).is_ok() {}
            })
            .map_err(VmError::Thread)?;
        // Every thread of the VM is started: where this one is the VM's own, it is confined too.
        if kiln_seccomp::confines_caller() {
            kiln_seccomp::confine(Kind::Main)?;
        }
        let mut forwarder = Forwarder::new(self.boot.host_signals_phys, grace);
        let outcome = loop {
            // Without a stop signal awaited, no deadline at all.
            let event = match forwarder.next_deadline() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(std::time::Instant::now())),
            };
            match event {
                Ok(Event::Ended(outcome)) => break outcome?,
                Ok(Event::Snapshot(request, reply)) => {
                    let keep_running = request.keep_running;
                    let path = request.path.clone();
                    let written = take_snapshot(&self.shared, &self.boot, request);
                    if written.is_ok() && !keep_running && !self.shared.done.swap(true, Ordering::SeqCst) {
                        self.shared.pause.release(Release::End);
                        stop_vcpus(&self.shared);
                        let _ = reply.send(written);
                        break Outcome::Snapshotted(path);
                    }
                    self.shared.pause.release(Release::Run);
                    let _ = reply.send(written);
                }
                Ok(Event::Signals(signals)) if signals.contains(&SIGKILL) => {
                    // Only an in-process launcher (kilnd) reports it: no process sees its own SIGKILL.
                    if !self.shared.done.swap(true, Ordering::SeqCst) {
                        stop_vcpus(&self.shared);
                        break Outcome::Killed(SIGKILL);
                    }
                }
                Ok(Event::Signals(signals)) => {
                    for sig in signals {
                        forwarder.forward(&self.shared.ram, sig, std::time::Instant::now());
                    }
                    // Idle vCPUs wake, and one of them passes the signals on; with none idle, a running one is
                    // interrupted to do it.
                    wake_for_host(&self.shared);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let Some(signal) = forwarder.overdue(&self.shared.ram, std::time::Instant::now()) else { continue };
                    // A vCPU that ended the VM meanwhile has sent its outcome: that one counts.
                    if !self.shared.done.swap(true, Ordering::SeqCst) {
                        self.shared.parkers.iter().for_each(Parker::unpark);
                        break Outcome::SignalUntaken { signal, grace: forwarder.grace() };
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break Outcome::Stopped("every vCPU stopped without an outcome".into())
                }
            }
        };
        // gdb hears how the program ended before this process does.
        if let Some(stub) = stub {
            let _ = stub.join();
        } else if let Some(session) = self.shared.debug.get() {
            session.wait_detached(DEBUGGER_HEARS_THE_END);
        }
        let stats = RunStats {
            host: self.shared.host.name(),
            vm_exits: self.shared.exits.load(Ordering::SeqCst),
            net: self.shared.net.as_ref().map(NetCard::stats),
            volumes: self.shared.disks.iter().map(|(name, d)| (name.clone(), d.stats())).collect(),
            syscalls: hypercall::read_stats(&self.shared.ram, self.boot.stats_phys),
            syscall_sites: self.boot.program.report.counts(),
            shadow_faults: fault_counters.iter().map(|c| c.as_ref().and_then(FaultCounter::read)).sum(),
        };
        tracing::debug!(took = ?started.elapsed(), exits = stats.vm_exits, faults = ?stats.shadow_faults, "VM ran");
        Ok((outcome, stats))
    }
}

/// How long the end of a VM waits for an attached debugger to be told of it.
const DEBUGGER_HEARS_THE_END: Duration = Duration::from_secs(5);

/// The `debugger` thread (`kiln debug`): serves each debugger that hands its connection over `socket`, one at a
/// time, until `stop` closes. The VM's state is only held (`shared`) while one is attached.
fn serve_debuggers(
    socket: &DebugSocket,
    stop: &OwnedFd,
    shared: &std::sync::Weak<Shared>,
    outcomes: &Sender<Event>,
    stubs: &StubReturns,
) {
    if let Err(e) = kiln_seccomp::confine(Kind::Debugger) {
        if let Some(shared) = shared.upgrade() {
            finish(&shared, outcomes, Err(e.into()));
        }
        return;
    }
    while let Some(request) = socket.next(stop.as_fd()) {
        let Some(shared) = shared.upgrade().filter(|s| !s.done.load(Ordering::SeqCst)) else {
            request.answer(Err("the program has ended".into()));
            continue;
        };
        let mut fresh = false;
        let session = shared.debug.get_or_init(|| {
            fresh = true;
            Arc::new(Session::new(shared.parkers.len(), None))
        });
        if !fresh && !session.reattach() {
            request.answer(Err("a debugger is already attached".into()));
            continue;
        }
        let conn = request.answer(Ok(()));
        tracing::debug!("gdb attached");
        match gdb::serve(shared.clone(), session.clone(), conn, false, stubs.clone()) {
            Ok(gdb::Ended::Killed) => finish(&shared, outcomes, Ok(Outcome::Stopped("gdb killed the program".into()))),
            // The program runs on: a debugger that broke the protocol only loses its session.
            Err(e) => tracing::warn!("kiln debug: {e}; the program runs on"),
            Ok(ended) => tracing::debug!(?ended, "gdb went away"),
        }
    }
}

/// The stdin relay's thread: opens the launcher's stream and hands what comes to the program until it ends. Idle
/// vCPUs wake to pass it on; with none idle, a running one is interrupted to (as for a host signal).
fn relay_stdin(shared: &Shared, source: crate::stdin::StdinSource) {
    let Some(relay) = shared.stdin.get() else { return };
    let mut stream = match source() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("cannot open the program's stdin: {e}");
            relay.end(&shared.ram);
            wake_for_host(shared);
            return;
        }
    };
    relay.pump(&shared.ram, &mut *stream, || wake_for_host(shared));
}

/// Something from the host is in the host-signal page: idle vCPUs wake to pass it on, and with none idle a running
/// one is interrupted to.
fn wake_for_host(shared: &Shared) {
    shared.parkers.iter().for_each(Parker::unpark);
    if !shared.parkers.iter().any(Parker::is_parked) {
        shared.preempt.request(&shared.kicks, 0);
    }
}

/// Ends the VM with `result` unless something ended it first: the vCPUs stop at their next exit.
fn finish(shared: &Shared, outcomes: &Sender<Event>, result: Result<Outcome, VmError>) {
    if !shared.done.swap(true, Ordering::SeqCst) {
        if let Some(session) = shared.debug.get() {
            let event = match &result {
                Ok(Outcome::Exited(code)) => StopEvent::Exited(*code),
                Ok(Outcome::Killed(signal)) => StopEvent::Killed(*signal as u8),
                Ok(Outcome::Crashed(report)) => StopEvent::Killed(report.signal as u8),
                Ok(Outcome::SignalUntaken { signal, .. }) => StopEvent::Killed(*signal as u8),
                _ => StopEvent::Killed(9),
            };
            session.report(event, |_| {});
        }
        stop_vcpus(shared);
        let _ = outcomes.send(Event::Ended(result));
    }
}

/// Once `done` is set: idle vCPUs wake and running ones leave the guest, so that every vCPU thread ends and with
/// the last one the VM's memory goes (a launcher that runs many VMs in one process needs that; `kiln run` exits).
fn stop_vcpus(shared: &Shared) {
    shared.parkers.iter().for_each(Parker::unpark);
    (0..shared.parkers.len()).for_each(|id| shared.kicks.kick(id));
}

/// The host signal that ends the VM at once, as it ends a process: the program never sees it.
const SIGKILL: u32 = 9;

/// What the thread running [`Vm::run`] waits for.
enum Event {
    /// A vCPU saw the program end.
    Ended(Result<Outcome, VmError>),
    /// The host sent these signals to this process.
    Signals(Vec<u32>),
    /// A [`Controller`] asks for a snapshot; the answer goes back on the sender.
    Snapshot(snapshot::Request, Sender<Result<snapshot::Written, SnapshotError>>),
}

/// What a VM has besides its KVM objects and RAM.
pub(crate) struct Devices {
    pub(crate) core: Option<CoreSetup>,
    /// What a core file says of the program (kept by snapshots, for a restored VM's core file).
    pub(crate) core_program: CoreProgram,
    pub(crate) net: Option<NetCard>,
    pub(crate) disks: Vec<(String, Disk)>,
    pub(crate) trace_syscalls: bool,
}

/// How long a snapshot waits for every vCPU to reach its quiescent point.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Brings every vCPU to its quiescent point and writes the snapshot `request` asks for; the vCPUs stay held (the
/// caller releases them). The network card is held still meanwhile, so that no frame lands in guest RAM while it is
/// written.
fn take_snapshot(
    shared: &Shared,
    boot: &BootState,
    request: snapshot::Request,
) -> Result<snapshot::Written, SnapshotError> {
    if shared.debug.get().is_some_and(|session| !session.detached()) {
        return Err(SnapshotError::Unsupported("a debugger is attached".into()));
    }
    if shared.done.load(Ordering::SeqCst) || !shared.pause.request() {
        return Err(SnapshotError::NotQuiescent("it is ending, or another snapshot is being taken".into()));
    }
    let nudge = || {
        shared.parkers.iter().for_each(Parker::unpark);
        (0..shared.parkers.len()).for_each(|id| shared.kicks.kick(id));
    };
    let Some(vcpus) = shared.pause.wait_all(PAUSE_TIMEOUT, nudge) else {
        return Err(SnapshotError::NotQuiescent(format!(
            "its vCPUs did not all stop within {} s (or the program ended)",
            PAUSE_TIMEOUT.as_secs()
        )));
    };
    let still = shared.net.as_ref().map(NetCard::hold_still);
    let volumes = shared.disks.iter().map(|(name, disk)| disk.snapshot(name)).collect::<Result<Vec<_>, _>>()?;
    let machine = snapshot::MachineState {
        memory: shared.ram.size(),
        host: shared.host,
        tsc_hz: shared.tsc_hz,
        guest_tsc: vcpus[0].tsc,
        taken_unix_ns: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        trace_syscalls: shared.trace_syscalls,
        boot: boot.clone(),
        vcpus,
        net: still.as_ref().map(|(state, _)| state.clone()),
        volumes,
        core_program: shared.core_program.clone(),
        launch: request.launch,
        cpuid: Some(shared.cpuid.clone()),
    };
    let source = shared.restored_from.as_ref().map(|(file, offset)| (file, *offset));
    let touched = snapshot::touched(&shared.ram, source);
    let written = snapshot::write(&request.path, &machine, &shared.ram, &touched);
    drop(still);
    written
}

/// A pipe (close-on-exec): (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One vCPU's loop: run it, answer its hypercalls, until the program ends here or elsewhere.
fn run_vcpu(
    mut vcpu: VcpuFd,
    id: usize,
    block: u64,
    shared: &Shared,
    console: &dyn Console,
) -> Result<Outcome, VmError> {
    let immediate_exit = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
    // Dropped before `vcpu` (a parameter), which owns the byte.
    let _kickable = shared.kicks.register(id, immediate_exit);
    // Set up (its timers made): from here on the thread makes only the calls its list allows.
    kiln_seccomp::confine(Kind::Vcpu(id as u32))?;
    // The fault the library OS is deciding about (whether the program has a handler for it).
    let mut pending_fault: Option<CrashReport> = None;
    // Under a debugger: the fault it was told about (delivered when it resumes the thread with the signal), and the
    // single step this vCPU makes.
    let mut debug_fault: Option<CrashReport> = None;
    let mut stepping: Option<Step> = None;
    // Whether the vCPU has left KVM_RUN once (before that, `kvm_run` holds no synced state).
    let mut entered = false;
    loop {
        if shared.done.load(Ordering::SeqCst) {
            return Ok(Outcome::Stopped("another vCPU ended the VM".into()));
        }
        if shared.pause.wanted() {
            let exited = match entered {
                true => exit_state::read(&vcpu, shared.synced_state),
                false => exit_state::read(&vcpu, false),
            }
            .map_err(state_err)?;
            let state = VcpuState::capture(&vcpu, exited).map_err(state_err)?;
            if shared.pause.hold(id, state) == Release::End {
                return Ok(Outcome::Stopped("the VM ended after its snapshot".into()));
            }
            continue;
        }
        if let Some(session) = shared.debug.get().filter(|s| s.stop_wanted()) {
            let (regs, sregs, events) = exit_state::read(&vcpu, shared.synced_state).map_err(state_err)?;
            let in_program = preempt::in_program(&regs, &sregs, &events, &shared.kernel_span, &shared.vdso_code);
            // A thread in the library OS has no x87/SSE state of the program's in the vCPU (debug::fpu).
            let (fpu, ymmh) = match in_program {
                true => {
                    let xsave = vcpu.get_xsave().map_err(kvm_err("read the x87/SSE/AVX registers"))?;
                    (Some(crate::debug::fpu::from_xsave(&xsave)), Some(crate::debug::avx::from_xsave(&xsave)))
                }
                false => (None, None),
            };
            let resume = session.hold(id, VcpuView { regs, fs_base: sregs.fs.base, in_program, fpu, ymmh });
            let faults = (&mut debug_fault, &mut pending_fault);
            if let Some(outcome) = resumed((&mut vcpu, id), shared, block, resume, faults, &mut stepping)? {
                return Ok(outcome);
            }
            continue;
        }
        let flush = || arch::flush_tlb(&vcpu, shared.host);
        shared.tlb.enter(&shared.kicks, id, flush).map_err(kvm_err("flush a vCPU's TLB"))?;
        let exit = vcpu.run();
        entered = true;
        shared.kicks.left(id);
        shared.exits.fetch_add(1, Ordering::Relaxed);
        let exit = match exit {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Cleared before the request is taken: a kick after this makes the next KVM_RUN return at once.
                vcpu.set_kvm_immediate_exit(0);
                if let Some(why) = shared.preempt.due(id) {
                    if stepping.is_some() {
                        // Not in the middle of a debugger's single step: the library OS might switch threads.
                        shared.preempt.retry(&shared.kicks, id, why);
                    } else {
                        interrupt(&mut vcpu, shared, block, id, why)?;
                    }
                } else {
                    shared.preempt.rearm(&shared.kicks, id);
                }
                continue;
            }
            Err(e) => return Err(VmError::Kvm { what: "run a vCPU", source: e }),
        };
        // Any other exit is the library OS's (a hypercall, a device access) or a fault it is about to see: either
        // way it looks at its thread's signals before it returns to the program, which settles a preemption asked
        // for meanwhile.
        shared.preempt.settle(id);
        let outcome = match exit {
            VcpuExit::IoOut(HYPERCALL_PORT, data) => {
                let nr = data.iter().rev().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
                if nr == Hypercall::Wait as u32 {
                    // Idle: no thread's slice runs here (see `Hypercall::Preempt`).
                    shared.preempt.idle(id);
                    if let Some(Err(why)) = shared.net.as_ref().map(|card| card.send_queued(shared.ram.inner())) {
                        return Ok(Outcome::Stopped(why));
                    }
                }
                let mut action = hypercall::handle(
                    &shared.ram,
                    block,
                    nr,
                    (console, shared.trace_syscalls, shared.stdin.get(), shared.net.as_ref()),
                    id,
                    &shared.parkers,
                );
                if action == Action::FlushTlb {
                    let own = || arch::flush_tlb(&vcpu, shared.host);
                    let kicks = &shared.kicks;
                    shared.tlb.flush_all(kicks, id, own, &shared.done).map_err(kvm_err("flush the vCPUs' TLBs"))?;
                    action = hypercall::answer(&shared.ram, block, 0);
                }
                if let Action::Preempt { vcpus, after, replace } = action {
                    for target in (0..shared.parkers.len()).filter(|&v| vcpus & (1 << v) != 0) {
                        match (replace, after) {
                            (Some(deadline), _) => shared.preempt.replace(&shared.kicks, target, deadline),
                            (None, Duration::ZERO) => shared.preempt.request(&shared.kicks, target),
                            (None, after) => shared.preempt.request_after(&shared.kicks, target, after),
                        }
                    }
                    action = hypercall::answer(&shared.ram, block, 0);
                }
                match action {
                    Action::Resume | Action::FlushTlb | Action::Preempt { .. } => continue,
                    Action::FaultUnhandled => match pending_fault.take() {
                        Some(report) => Outcome::Crashed(with_stack(shared, (&vcpu, id), report)),
                        None => Outcome::Stopped("the library OS reported a fault that did not happen".into()),
                    },
                    Action::Exit(code) => Outcome::Exited(code),
                    Action::Killed(signal) => Outcome::Killed(signal),
                    Action::Raised(record) => {
                        let regs = stub_return::leave(&shared.ram, shared.pml4, record.regs, &shared.kernel_span);
                        match fault::raised(&FaultRecord { regs, ..record }) {
                            Some(report) => Outcome::Crashed(with_stack(shared, (&vcpu, id), report)),
                            None => Outcome::Killed(record.signal as u32),
                        }
                    }
                    Action::Deadlocked(threads, waits) => Outcome::Deadlocked { threads, waits },
                    Action::Stop(why) => Outcome::Stopped(why),
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                if let Some(card) = shared.net.as_ref().filter(|c| c.claims(addr)) {
                    card.read(addr, data);
                    continue;
                }
                if let Some((_, disk)) = shared.disks.iter().find(|(_, d)| d.claims(addr)) {
                    disk.read(addr, data);
                    continue;
                }
                Outcome::Stopped(format!("the guest read physical address {addr:#x}, where nothing is"))
            }
            VcpuExit::MmioWrite(addr, data) => {
                if let Some(card) = shared.net.as_ref().filter(|c| c.claims(addr)) {
                    match card.write(addr, data, shared.ram.inner()) {
                        Ok(()) => continue,
                        Err(why) => return Ok(Outcome::Stopped(why)),
                    }
                }
                match shared.disks.iter().find(|(_, d)| d.claims(addr)) {
                    Some((name, disk)) => match disk.write(addr, data, shared.ram.inner()) {
                        Ok(()) => continue,
                        Err(why) => {
                            Outcome::Stopped(format!("the guest broke volume {name}'s virtio-blk queue: {why}"))
                        }
                    },
                    None => Outcome::Stopped(format!("the guest wrote physical address {addr:#x}, where nothing is")),
                }
            }
            VcpuExit::IoOut(trap_page::EXCEPTION_PORT, _) if shared.host.has_idt() => {
                match exception::rewind(&vcpu, shared.host, &shared.ram, shared.pml4) {
                    Ok(frame) => {
                        if let Some(session) = shared.debug.get() {
                            match debug_trap(&mut vcpu, shared, session, id, Some(frame.vector), &mut stepping)? {
                                Trap::Run => continue,
                                Trap::Stop(event) => {
                                    session.report(event, |v| shared.kicks.kick(v));
                                    continue;
                                }
                                Trap::Fault => {}
                            }
                        }
                        let report = match frame.vector {
                            // A trap: %rip is past the `int3`, whatever the next instruction would do.
                            3 => fault::breakpoint(&vcpu.get_regs().map_err(kvm_err("read registers"))?),
                            vector => crash(&vcpu, shared, exception::vector_name(vector)),
                        };
                        if debugger_takes(shared, id, &report) {
                            debug_fault = Some(report);
                            continue;
                        }
                        if to_fault_entry(&mut vcpu, shared, block, &report)? {
                            pending_fault = Some(report);
                            continue;
                        }
                        Outcome::Crashed(with_stack(shared, (&vcpu, id), report))
                    }
                    Err(exception::ExceptionError::Kvm(what, source)) => return Err(VmError::Kvm { what, source }),
                    Err(why) => Outcome::Stopped(why.to_string()),
                }
            }
            VcpuExit::IoOut(port, _) | VcpuExit::IoIn(port, _) => {
                Outcome::Stopped(format!("the guest used I/O port {port:#x}, which Kiln does not provide"))
            }
            VcpuExit::Shutdown if shared.host.has_idt() => Outcome::Stopped(format!(
                "vCPU {id} triple-faulted (an exception while the CPU delivered one); on {} its state is gone",
                shared.host.name()
            )),
            VcpuExit::Shutdown => {
                if let Some(session) = shared.debug.get() {
                    let (_, _, events) = exit_state::read(&vcpu, shared.synced_state).map_err(state_err)?;
                    let vector = shared.host.shutdown_vector(&events);
                    match debug_trap(&mut vcpu, shared, session, id, vector, &mut stepping)? {
                        Trap::Run => continue,
                        Trap::Stop(event) => {
                            session.report(event, |v| shared.kicks.kick(v));
                            continue;
                        }
                        Trap::Fault => {}
                    }
                }
                let report = crash(&vcpu, shared, "shutdown");
                if debugger_takes(shared, id, &report) {
                    debug_fault = Some(report);
                    continue;
                }
                if to_fault_entry(&mut vcpu, shared, block, &report)? {
                    pending_fault = Some(report);
                    continue;
                }
                Outcome::Crashed(with_stack(shared, (&vcpu, id), report))
            }
            VcpuExit::Hlt => Outcome::Crashed(with_stack(shared, (&vcpu, id), crash(&vcpu, shared, "hlt"))),
            other => Outcome::Stopped(format!("vCPU {id} stopped unexpectedly ({other:?})")),
        };
        return Ok(outcome);
    }
}

/// The trap flag (single step).
const RFLAGS_TF: u64 = 0x100;
/// Steps taken inside the library OS (a step into a syscall) before the step is reported there anyway.
const MAX_LIBRARY_OS_STEPS: u32 = 20_000;

/// A single step a debugger asked this vCPU for.
struct Step {
    /// Where it started: on `kvm_pvm`, whose shutdowns carry no vector, a trap still there is the instruction's fault.
    from: u64,
    /// Traps taken inside the library OS so far.
    in_library_os: u32,
}

/// What an exception means under a debugger.
enum Trap {
    /// Nothing to report: run on.
    Run,
    /// Report this and stop the program.
    Stop(StopEvent),
    /// Not the debugger's: a fault of the program's.
    Fault,
}

/// Sorts out an exception that stopped vCPU `id` (`vector` where the host tells it: hardware KVM's stubs) under a
/// debugger: the end of a single step, a debugger breakpoint, the program's first instruction, or a fault.
fn debug_trap(
    vcpu: &mut VcpuFd,
    shared: &Shared,
    session: &Session,
    id: usize,
    vector: Option<u64>,
    stepping: &mut Option<Step>,
) -> Result<Trap, VmError> {
    let mut regs = exit_state::regs(vcpu, shared.synced_state).map_err(state_err)?;
    tracing::trace!(vcpu = id, rip = regs.rip, ?vector, stepping = stepping.is_some(), "exception under a debugger");
    if let Some(step) = stepping.as_mut() {
        // A fault of the stepped instruction leaves %rip on it; a trap, past it.
        let stepped = vector.is_none_or(|v| v == 1) && regs.rip != step.from;
        if stepped {
            let in_library_os =
                shared.kernel_span.contains(&regs.rip) && !shared.vdso_code.iter().any(|f| f.contains(&regs.rip));
            if in_library_os && step.in_library_os < MAX_LIBRARY_OS_STEPS {
                // Into a syscall: the library OS is not the program's to step through, so it runs on, one trap at a
                // time, until it returns to the program.
                step.in_library_os += 1;
                regs.rflags |= RFLAGS_TF;
                exit_state::set_regs(vcpu, shared.synced_state, &regs).map_err(state_err)?;
                return Ok(Trap::Run);
            }
            *stepping = None;
            regs.rflags &= !RFLAGS_TF;
            exit_state::set_regs(vcpu, shared.synced_state, &regs).map_err(state_err)?;
            return Ok(Trap::Stop(StopEvent::Step { vcpu: id }));
        }
    }
    if vector.is_none_or(|v| v == 3) {
        let addr = regs.rip.wrapping_sub(1);
        let event = if let Some(byte) = session.take_first(addr) {
            guest_memory::write(&shared.ram, shared.pml4, addr, &[byte]);
            StopEvent::Started { vcpu: id }
        } else if session.breakpoint_at(addr) {
            StopEvent::Breakpoint { vcpu: id, addr }
        } else {
            return Ok(Trap::Fault);
        };
        // Back on the instruction the `int3` stands in for, as gdb expects.
        regs.rip = addr;
        regs.rflags &= !RFLAGS_TF;
        *stepping = None;
        exit_state::set_regs(vcpu, shared.synced_state, &regs).map_err(state_err)?;
        return Ok(Trap::Stop(event));
    }
    Ok(Trap::Fault)
}

/// Under a debugger, a fault the program could take stops the program first, as under ptrace: reported here, and
/// delivered (or not) when the debugger resumes the thread ([`resumed`]).
fn debugger_takes(shared: &Shared, id: usize, report: &CrashReport) -> bool {
    let Some(session) = shared.debug.get() else { return false };
    if report.fault.is_none() || session.detached() {
        return false;
    }
    session.report(StopEvent::Signal { vcpu: id, signal: report.signal as u8 }, |v| shared.kicks.kick(v));
    true
}

/// vCPU `id` resumes after a debugger's stop: with the registers it changed, a single step, and the fault it stopped
/// on delivered to the program if it said so (or retried). An outcome if that fault ends the program.
fn resumed(
    (vcpu, id): (&mut VcpuFd, usize),
    shared: &Shared,
    block: u64,
    resume: Resume,
    (debug_fault, pending_fault): (&mut Option<CrashReport>, &mut Option<CrashReport>),
    stepping: &mut Option<Step>,
) -> Result<Option<Outcome>, VmError> {
    if let Some(report) = debug_fault.take() {
        if resume.deliver {
            if to_fault_entry(vcpu, shared, block, &report)? {
                *pending_fault = Some(report);
                return Ok(None);
            }
            return Ok(Some(Outcome::Crashed(with_stack(shared, (vcpu, id), report))));
        }
    }
    if resume.fpu.is_some() || resume.ymmh.is_some() {
        let mut xsave = vcpu.get_xsave().map_err(kvm_err("read the x87/SSE/AVX registers"))?;
        if let Some(fpu) = &resume.fpu {
            crate::debug::fpu::into_xsave(fpu, &mut xsave);
        }
        if let Some(ymmh) = &resume.ymmh {
            crate::debug::avx::into_xsave(ymmh, &mut xsave);
        }
        // SAFETY: `xsave` is the whole `kvm_xsave` KVM_GET_XSAVE just wrote for this vCPU, with only its x87/SSE
        // registers (MXCSR's reserved bits kept as they were: debug::fpu::from_gdb) and AVX upper halves changed;
        // gdb changes the latter only where the vCPU had them in use, so XCR0 enables the component.
        unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm_err("set the x87/SSE/AVX registers"))?;
    }
    let mut regs = match resume.regs {
        Some(regs) => regs,
        None => exit_state::regs(vcpu, shared.synced_state).map_err(state_err)?,
    };
    let before = regs;
    if resume.step {
        regs.rflags |= RFLAGS_TF;
        *stepping = Some(Step { from: regs.rip, in_library_os: 0 });
    } else if stepping.take().is_some() {
        regs.rflags &= !RFLAGS_TF;
    }
    if regs != before || resume.regs.is_some() {
        exit_state::set_regs(vcpu, shared.synced_state, &regs).map_err(state_err)?;
    }
    Ok(None)
}

/// Hands the program's fault to the library OS, which runs the program's handler for it if it has one: writes the
/// fault next to the vCPU's hypercall block (`block`) and resumes the vCPU at `kiln_fault_entry`. Returns false,
/// changing nothing, for a fault no handler may see or one in the library OS itself.
fn to_fault_entry(vcpu: &mut VcpuFd, shared: &Shared, block: u64, report: &CrashReport) -> Result<bool, VmError> {
    let regs = exit_state::regs(vcpu, shared.synced_state).map_err(state_err)?;
    let Some(fault) = &report.fault else { return Ok(false) };
    let in_library_os =
        shared.kernel_span.contains(&regs.rip) && !shared.vdso_code.iter().any(|f| f.contains(&regs.rip));
    if in_library_os {
        return Ok(false);
    }
    if !to_library_os(vcpu, shared, block, &fault::record(report.signal, fault, &regs))? {
        return Ok(false);
    }
    // Nothing of the exception may stay pending, or the vCPU would raise it again on entry (our hosts keep none;
    // hardware KVM might).
    let (_, _, mut events) = exit_state::read(vcpu, shared.synced_state).map_err(state_err)?;
    if events.exception.injected != 0 || events.exception.pending != 0 {
        events.exception = Default::default();
        vcpu.set_vcpu_events(&events).map_err(kvm_err("clear a pending exception"))?;
    }
    Ok(true)
}

/// Writes `record` next to the vCPU's hypercall block (`block`) and resumes the vCPU at `kiln_fault_entry` on the
/// stack it had; false, changing nothing, if the record cannot be written.
fn to_library_os(vcpu: &mut VcpuFd, shared: &Shared, block: u64, record: &FaultRecord) -> Result<bool, VmError> {
    // SAFETY: FaultRecord is repr(C) and made of u64/i64 fields only (no padding), so all its bytes are initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts((record as *const FaultRecord).cast::<u8>(), std::mem::size_of::<FaultRecord>())
    };
    let page = block & !(kiln_abi::layout::PAGE_SIZE - 1);
    if shared.fault_entry == 0 || shared.ram.write(page + FAULT_RECORD_OFFSET, bytes).is_err() {
        return Ok(false);
    }
    let entry =
        kvm_bindings::kvm_regs { rip: shared.fault_entry, rsp: record.regs.rsp, rflags: 0x2, ..Default::default() };
    exit_state::set_regs(vcpu, shared.synced_state, &entry).map_err(state_err)?;
    Ok(true)
}

fn state_err((what, source): (&'static str, kvm_ioctls::Error)) -> VmError {
    VmError::Kvm { what, source }
}

/// vCPU `id` was kicked out of KVM_RUN to be preempted (`crate::preempt`): in the program's code, it goes to the
/// library OS with its registers, to take its pending signals; anywhere else it is tried again shortly.
fn interrupt(vcpu: &mut VcpuFd, shared: &Shared, block: u64, id: usize, why: preempt::Why) -> Result<(), VmError> {
    let (regs, sregs, events) = exit_state::read(vcpu, shared.synced_state).map_err(state_err)?;
    if preempt::in_program(&regs, &sregs, &events, &shared.kernel_span, &shared.vdso_code) {
        // Spent first, so that the record can say whether the deadline was renewed.
        let renewed = shared.preempt.interrupted(&shared.kicks, id);
        let code = if renewed { kiln_abi::hypercall::RENEWED } else { 0 };
        let record = FaultRecord { signal: INTERRUPTED, code, regs: fault::registers(&regs), ..Default::default() };
        if to_library_os(vcpu, shared, block, &record)? {
            tracing::trace!(vcpu = id, rip = regs.rip, renewed, "interrupted");
            return Ok(());
        }
    }
    shared.preempt.retry(&shared.kicks, id, why);
    Ok(())
}

/// A volume's entry in the boot info (its register window is placed by the boot builder).
fn volume_info(mount: &str, capacity: u64) -> VolumeInfo {
    let mut info = VolumeInfo { capacity, ..VolumeInfo::default() };
    let n = mount.len().min(MOUNT_PATH_MAX);
    info.mount[..n].copy_from_slice(&mount.as_bytes()[..n]);
    info.mount_len = n as u32;
    info
}

fn crash(vcpu: &VcpuFd, shared: &Shared, how: &'static str) -> CrashReport {
    let regs = vcpu.get_regs().unwrap_or_default();
    let sregs = vcpu.get_sregs().unwrap_or_default();
    tracing::debug!(?regs, ?sregs, "vCPU state at the crash ({how})");
    let layout = fault::GuestLayout {
        pml4: shared.pml4,
        stack_bottom: shared.stack_bottom,
        syscall_sites: &shared.syscall_sites,
    };
    fault::diagnose(&shared.ram, &layout, how, &regs, &sregs)
}

/// The threads of a core file: `crashed` (the thread vCPU `id` ran, whose id the library OS's table gives) first,
/// then every other from the table, with the registers of its last entry into the library OS: where it waits, or
/// for one still computing on another vCPU, where it last made a syscall or was interrupted.
fn core_threads(shared: &Shared, id: usize, mut crashed: CoreThread) -> Vec<CoreThread> {
    let listed = threads::list(&shared.ram, shared.threads_phys, &[], &StubReturns::default()).unwrap_or_default();
    let mut others = Vec::new();
    for thread in listed {
        if thread.state == (ThreadState::Running { vcpu: id }) {
            crashed.tid = thread.tid;
            continue;
        }
        let regs = fault::registers(&thread.regs);
        let regs = stub_return::leave(&shared.ram, shared.pml4, regs, &shared.kernel_span);
        others.push(CoreThread { tid: thread.tid, regs, fs_base: thread.fs_base });
    }
    [vec![crashed], others].concat()
}

/// `report` with the crashed thread's stack copied, and the shared objects the program's loader mapped, for the
/// backtrace the user reads; and the core file written, if one is wanted. `vcpu` ran the crashed thread.
fn with_stack(shared: &Shared, (vcpu, id): (&VcpuFd, usize), mut report: CrashReport) -> Box<CrashReport> {
    report.stack = Some(crash_stack::capture(&shared.ram, shared.pml4, report.rip, report.rsp, report.rbp));
    report.objects = shared.program_dynamic.map_or_else(Vec::new, |d| link_map::read(&shared.ram, shared.pml4, d));
    let paths: Vec<&str> = report.objects.iter().map(|o| o.path.as_str()).collect();
    let files = shared.rootfs.files(&shared.ram, &paths);
    for (object, file) in report.objects.iter_mut().zip(files) {
        object.file = file;
    }
    if let Some(setup) = &shared.core {
        let fs_base = vcpu.get_sregs().map_or(0, |s| s.fs.base);
        let threads = core_threads(shared, id, CoreThread { tid: 1, regs: report.regs, fs_base });
        let signal = report.signal as u32;
        let xstate = xstate(vcpu);
        let written = core_dump::write(setup, &shared.ram, shared.pml4, signal, threads, xstate, &report.objects);
        report.core_file = Some(written.map(|len| (setup.path.clone(), len)).map_err(|e| e.to_string()));
    }
    Box::new(report)
}

/// The crashed thread's x87/SSE/AVX registers as its vCPU holds them (the library OS, built without SSE, leaves them
/// as the program had them), for the core file; None where KVM does not give them.
fn xstate(vcpu: &VcpuFd) -> Option<XState> {
    let xsave = vcpu.get_xsave().ok()?;
    let xcrs = vcpu.get_xcrs().ok()?;
    let xcr0 = xcrs.xcrs[..(xcrs.nr_xcrs as usize).min(xcrs.xcrs.len())].iter().find(|x| x.xcr == 0)?.value;
    Some(XState { area: xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect(), xcr0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_open_errors_say_what_to_do() {
        let err = |errno| kvm_open_error(kvm_ioctls::Error::new(errno)).to_string();
        assert!(err(libc::ENOENT).contains("does not exist"));
        assert!(err(libc::EACCES).contains("permission denied") && err(libc::EACCES).contains("kvm group"));
        assert!(err(libc::EPERM).contains("usermod"));
        assert!(matches!(kvm_open_error(kvm_ioctls::Error::new(libc::EBUSY)), VmError::KvmOpen(_)));
    }
}
