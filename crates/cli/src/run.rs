//! `kiln run`: boot one program (a static executable, or an image from `kiln build`), stream its output, exit with
//! its exit code; with `-d`, as a detached instance (see `detach`).

use crate::core_out::UnnamedCore;
use crate::detach::{self, ThisInstance};
use crate::host_signals;
use crate::net;
use crate::size::parse_size;
use anyhow::{anyhow, bail, Context, Result};
use kiln_launch::{home, parse_env, parse_mapping, parse_mount, parse_workdir, LaunchSpec, Overrides, Prepared};
use kiln_vmm::rewrite::SiteCounts;
use kiln_vmm::syscall_names::syscall_name;
use kiln_vmm::{HostSignals, Outcome, RunStats, StdioConsole};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The library OS, built from kernel/ by crates/libos.
pub(crate) use kiln_libos::KERNEL;

pub use kiln_launch::KILN_ERROR;
const SIGPIPE: u32 = 13;
const SIGINT: u32 = 2;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Run in the background as an instance (see kiln ps, logs, stop); prints its id
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The instance's name (default: the image's name and a few letters of its id)
    #[arg(long, requires = "detach")]
    pub name: Option<String>,
    /// Start the instance again when it ends: no, on-failure[:N], always or unless-stopped, with a back-off doubling
    /// from 100 ms (kilnd restarts instances: it must run, see kiln daemon)
    #[arg(long, requires = "detach", value_name = "POLICY", value_parser = parse_restart)]
    pub restart: Option<kiln_image::restart::RestartPolicy>,
    /// Check the instance's health from the host (kilnd): http:HOST_PORT/PATH (a 2xx or 3xx answer) or
    /// tcp:HOST_PORT (a connection), to a port published with -p; kiln ps shows healthy or unhealthy
    #[arg(long, requires = "detach", value_name = "CHECK")]
    pub health_check: Option<String>,
    /// Milliseconds between health checks
    #[arg(long, requires = "health_check", value_name = "MS", default_value_t = 30_000)]
    pub health_interval: u64,
    /// Milliseconds a health check may take
    #[arg(long, requires = "health_check", value_name = "MS", default_value_t = 5_000)]
    pub health_timeout: u64,
    /// Failed health checks in a row that make the instance unhealthy
    #[arg(long, requires = "health_check", value_name = "N", default_value_t = 3)]
    pub health_retries: u32,
    /// Remove the instance's record and logs when it ends (a run without -d leaves none anyway)
    #[arg(long)]
    pub rm: bool,
    /// Guest memory (K, M or G suffix; default 64M, or the image's)
    #[arg(long, short = 'm', value_parser = parse_size)]
    pub memory: Option<u64>,
    /// vCPUs: the program's threads run on this many host threads in parallel (default 1, or the image's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(kiln_vmm::vm::MAX_VCPUS)))]
    pub cpus: Option<u32>,
    /// Set an environment variable in the program (repeatable); the program sees only these
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// The directory the program starts in (absolute; made if missing, as docker run -w does; default /, or the
    /// image's)
    #[arg(long, short = 'w', value_name = "DIR", value_parser = parse_workdir)]
    workdir: Option<String>,
    /// Put a host file into the guest's filesystem (repeatable)
    #[arg(long = "file", value_name = "HOST:GUEST", value_parser = parse_mapping)]
    pub files: Vec<(PathBuf, String)>,
    /// Put a host directory, recursively, into the guest's filesystem (repeatable)
    #[arg(long = "dir", value_name = "HOST:GUEST", value_parser = parse_mapping)]
    pub dirs: Vec<(PathBuf, String)>,
    /// Print every syscall with its arguments and result to stderr, and a summary at exit
    #[arg(long)]
    trace_syscalls: bool,
    /// Print VM exits and syscall counts to stderr at exit
    #[arg(long)]
    stats: bool,
    /// Seconds the program has to take a SIGINT, SIGTERM or SIGQUIT sent to kiln before the VM is stopped (as
    /// `docker stop` does; a program that keeps the signal blocked never takes one)
    #[arg(long, value_name = "SECS", default_value_t = kiln_launch::DEFAULT_STOP_TIMEOUT, value_parser = clap::value_parser!(u32).range(1..))]
    stop_timeout: u32,
    /// If the program crashes, write an ELF core file of it to FILE (every thread's registers and its memory, for
    /// `gdb PROGRAM FILE`)
    #[arg(long = "core", value_name = "FILE", value_parser = parse_core_file)]
    core_file: Option<PathBuf>,
    /// Attach volume NAME (`kiln volume create`) and mount it at /path (repeatable, up to 4)
    #[arg(long = "volume", short = 'v', value_name = "NAME:/path", value_parser = parse_mount)]
    volumes: Vec<(String, String)>,
    #[command(flatten)]
    pub network: net::NetArgs,
    /// Wait for gdb on this TCP address (e.g. 127.0.0.1:1234) before the program's first instruction, and serve it
    /// over the GDB remote protocol (docs/debugging.md)
    #[arg(long, value_name = "ADDR", conflicts_with = "detach")]
    pub gdb: Option<std::net::SocketAddr>,
    /// The VMM threads' syscall allow-lists: on (a forbidden call stops the VM), off (debugging only), or log (let
    /// calls through, the kernel logs the forbidden ones); default on, or $KILN_SECCOMP
    #[arg(long, value_name = "on|off|log")]
    seccomp: Option<kiln_launch::Seccomp>,
    /// Run the VMM jailed (needs root): new PID, mount, IPC and UTS namespaces (and network, unless the user-mode
    /// network needs the host's), an empty read-only root once the VM is built, an unprivileged uid, resource limits;
    /// with -d, the instance's process is jailed (kilnd, when it answers, starts and supervises that process)
    #[arg(long)]
    pub jail: bool,
    /// The uid (and gid) the jailed VMM runs as (default: 2000000000 + its host pid, one of its own)
    #[arg(long, value_name = "UID[:GID]", requires = "jail", value_parser = kiln_jail::parse_identity)]
    jail_uid: Option<kiln_jail::Identity>,
    /// An image (NAME[:TAG] or id, from kiln build) or the Linux x86-64 executable to run, then the arguments passed
    /// to the program (for an image: instead of its args); every word after IMAGE|PROGRAM is the program's, as with
    /// docker run
    // One positional for both, because clap stops matching kiln's own flags only once it is inside the trailing
    // positional: with PROGRAM a positional of its own, `kiln run nginx -e stderr` gave nginx's -e to kiln's --env.
    #[arg(value_name = "IMAGE|PROGRAM [ARGS]", required = true, num_args = 1.., trailing_var_arg = true)]
    command: Vec<String>,
    /// `command`'s first word.
    #[arg(skip)]
    pub target: String,
    /// `command`'s other words.
    #[arg(skip)]
    pub args: Vec<String>,
}

impl RunArgs {
    /// Splits the command line's IMAGE|PROGRAM [ARGS] into `target` and `args`; called once, right after parsing.
    pub fn split_command(&mut self) {
        let mut words = std::mem::take(&mut self.command).into_iter();
        self.target = words.next().unwrap_or_default();
        self.args = words.collect();
    }

    /// What the flags ask for on top of the image or program.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            args: self.args.clone(),
            memory: self.memory,
            cpus: self.cpus,
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            files: self.files.clone(),
            dirs: self.dirs.clone(),
            volumes: self.volumes.clone(),
            network: self.network.flags(),
            trace_syscalls: self.trace_syscalls,
            stats: self.stats,
            stop_timeout: Some(self.stop_timeout),
            core_file: self.core_file.clone(),
        }
    }
}

/// `--core FILE`: made absolute, in a directory that exists (said now, not after a crash).
pub(crate) fn parse_core_file(s: &str) -> Result<PathBuf, String> {
    let path = std::path::absolute(s).map_err(|e| format!("'{s}': {e}"))?;
    match path.parent() {
        Some(dir) if dir.is_dir() && path.file_name().is_some() => Ok(path),
        _ => Err(format!("'{s}' is not a file name in a directory that exists")),
    }
}

fn parse_restart(s: &str) -> Result<kiln_image::restart::RestartPolicy, String> {
    s.parse()
}

pub fn run(mut args: RunArgs) -> Result<u8> {
    args.split_command();
    let mut instance = detach::instance_of_this_process(args.detach)?;
    // With kilnd answering, a detached instance runs there (it prints no trace or statistics: those keep a process);
    // a jailed one as a jailed process kilnd supervises. kilnd gives each jailed instance a uid of its own: one with
    // --jail-uid runs in an instance process of its own, without kilnd.
    let daemon = (args.detach && instance.is_none() && !args.trace_syscalls && !args.stats && args.jail_uid.is_none())
        .then(crate::kilnd_client::answering)
        .flatten();
    if args.jail_uid.is_some() && (args.restart.is_some() || args.health_check.is_some()) {
        bail!(
            "--jail-uid with --restart or --health-check: those need kilnd, which gives each jailed instance a uid of \
             its own (2000000000 + its pid) and takes no --jail-uid"
        );
    }
    if daemon.is_none() && instance.is_none() && (args.restart.is_some() || args.health_check.is_some()) {
        bail!("--restart and --health-check need kilnd, and none answers: start it (kiln daemon)");
    }
    if let Some(daemon) = daemon {
        let image = match kiln_container::Source::is_source(&args.target) {
            true => crate::container_build::import_for_run(&home::store()?, &args.target)?.to_string(),
            false => args.target.clone(),
        };
        return crate::kilnd_client::run(&daemon, &args, &image);
    }
    let mut spec = match &instance {
        // An instance process launches what its record says, not what its flags would resolve to now.
        Some(instance) => instance.spec()?,
        // A container image runs in one step, as with `docker run`: made a Kiln image in the store, then run by id.
        None if kiln_container::Source::is_source(&args.target) => {
            let store = home::store()?;
            let id = crate::container_build::import_for_run(&store, &args.target)?;
            let _reading = store.read_lock()?;
            kiln_launch::resolve_image(&store, id, &args.target, &args.overrides())?
        }
        None => kiln_launch::resolve(home::store().ok().as_ref(), &args.target, &args.overrides())?,
    };
    if instance.is_none() {
        spec.seccomp = seccomp_flag(args.seccomp)?;
    }
    if args.detach && instance.is_none() {
        let how = detach::Detach { name: args.name.as_deref(), rm: args.rm, target: &args.target };
        return detach::start(&how, &spec);
    }
    // Opened before the jail's fork: its parent names a jailed VM's core, which the child wrote.
    let unnamed_core = unnamed_core(&mut spec, instance.as_ref(), args.jail);
    let jail = match args.jail {
        // Forked here, before the VM exists: KVM ties a VM to the process that made it.
        true => {
            // A jailed instance's record is kept by the parent, which can still reach the store once the child's root
            // is empty: the child says through this pipe why its program ended.
            let (reason_read, reason_write) = std::io::pipe().context("cannot make a pipe for the jail")?;
            // Names the child's cgroup, for the parent to remove.
            let cgroup_key = std::process::id();
            // The empty network namespace such jails share, made by the first (kiln_jail::netns); where it cannot be,
            // the jail makes one of its own.
            if !matches!(spec.network, kiln_launch::network::Network::User { .. }) {
                if let Err(e) = kiln_jail::netns::prepare_shared() {
                    tracing::debug!("--jail: no shared network namespace: {e}");
                }
            }
            match kiln_jail::enter()? {
                kiln_jail::Entered::Parent(code) => {
                    drop(reason_write);
                    let _ = kiln_jail::cgroup::remove(cgroup_key);
                    if let Some(core) = &unnamed_core {
                        if let Err(e) = core.name_if_written() {
                            errln!("kiln: no core file: {}", crate::chain(&e));
                        }
                    }
                    if let Some(instance) = &mut instance {
                        instance.forget_ready_pipe();
                        let mut reason = String::new();
                        let _ = std::io::Read::read_to_string(&mut { reason_read }, &mut reason);
                        if reason.is_empty() {
                            reason = format!("the jailed VMM process ended with status {code} without saying why");
                        }
                        instance.exited(code as u8, &reason)?;
                    }
                    return Ok(code as u8);
                }
                kiln_jail::Entered::Child => {
                    drop(reason_read);
                    // Before the VM is built, so that all of its memory is counted in the cgroup.
                    let limits = kiln_jail::cgroup::CgroupLimits::for_vm(spec.memory, spec.cpus);
                    match kiln_jail::cgroup::join(cgroup_key, &limits).context("cannot put the jail in a cgroup")? {
                        kiln_jail::cgroup::Cgroup::Joined(dir) => tracing::debug!("jail cgroup: {}", dir.display()),
                        kiln_jail::cgroup::Cgroup::Unavailable(why) => {
                            tracing::info!("--jail: no cgroup limits: {why}")
                        }
                    }
                    Some(Jailed { identity: args.jail_uid, reason: reason_write })
                }
            }
        }
        false => None,
    };
    launch(&spec, instance.as_mut(), unnamed_core, args.gdb, jail)
}

/// Where a crash's core file is written (`crate::core_out`): a detached instance's in its folder (`kiln inspect` names
/// it), else `--core`'s (`spec.core_file`). Sets `spec.core_file` to the path the file is named. None for none, or
/// where the folder's file system cannot make unnamed files: `--core` then has the VMM make the file itself (see
/// [`give_core`]), which a jail cannot.
pub(crate) fn unnamed_core(
    spec: &mut LaunchSpec,
    instance: Option<&ThisInstance>,
    jailed: bool,
) -> Option<UnnamedCore> {
    if let Some(instance) = instance {
        let core = UnnamedCore::open(&instance.core_path())
            .inspect_err(|e| tracing::warn!("no core file for this instance: {e}"))
            .ok();
        spec.core_file = core.as_ref().map(|core| core.path().to_path_buf());
        return core;
    }
    let path = spec.core_file.clone()?;
    match UnnamedCore::open(&path) {
        Ok(core) => Some(core),
        Err(e) if jailed => {
            errln!(
                "kiln: --core {}: no core file from the jail: its folder cannot hold an unnamed file ({e})",
                path.display()
            );
            spec.core_file = None;
            None
        }
        Err(_) => None,
    }
}

/// Gives the VM the file its crash writes a core into; without one (see [`unnamed_core`]), a crash's core file is
/// made by the crashed vCPU's thread, whose list has no file creation: the lists are then off.
pub(crate) fn give_core(vm: &mut kiln_vmm::Vm, spec: &LaunchSpec, unnamed_core: Option<&UnnamedCore>) -> Result<()> {
    if let Some(core) = unnamed_core {
        return core.hand_to(vm);
    }
    if spec.core_file.is_some() && kiln_seccomp::mode() != kiln_seccomp::Mode::Off {
        errln!("kiln: --core: the VMM's threads run without their seccomp allow-lists, to write the core file");
        kiln_seccomp::set_mode(kiln_seccomp::Mode::Off);
    }
    Ok(())
}

/// This process is a jail's child, to be locked down once the VM is built.
pub(crate) struct Jailed {
    /// The uid and gid to take, or the default.
    identity: Option<kiln_jail::Identity>,
    /// Where to say why the program ended, for the parent to record (an instance's).
    reason: std::io::PipeWriter,
}

/// `--seccomp`, or else `$KILN_SECCOMP` (how a test suite is run under another mode), or else on.
fn seccomp_flag(flag: Option<kiln_launch::Seccomp>) -> Result<kiln_launch::Seccomp> {
    use clap::ValueEnum as _;
    match (flag, std::env::var("KILN_SECCOMP")) {
        (Some(mode), _) => Ok(mode),
        (None, Ok(value)) => kiln_launch::Seccomp::from_str(&value, true)
            .map_err(|_| anyhow!("KILN_SECCOMP={value}: expected on, off or log")),
        (None, Err(_)) => Ok(kiln_launch::Seccomp::On),
    }
}

/// Closes the jail around this process, whose VM is built: `identity` or the default one.
fn lock_down(spec: &LaunchSpec, identity: Option<kiln_jail::Identity>) -> Result<()> {
    let identity = match identity {
        Some(identity) => identity,
        None => kiln_jail::default_identity()?,
    };
    let new_network = !matches!(spec.network, kiln_launch::network::Network::User { .. });
    let limits = kiln_jail::Limits::for_vm(spec.cpus)?;
    kiln_jail::lock_down(&kiln_jail::Lockdown { identity, new_network, limits }).context("cannot close the jail")
}

/// Boots `spec` in a VM on this process, with the program's output on its stdout and stderr and the stop signals it
/// gets forwarded, and returns the program's exit code: the one way `kiln` launches a VM.
/// `jail`: this process is a jail's child, to be locked down once the VM is built.
fn launch(
    spec: &LaunchSpec,
    instance: Option<&mut ThisInstance>,
    unnamed_core: Option<UnnamedCore>,
    gdb: Option<SocketAddr>,
    jail: Option<Jailed>,
) -> Result<u8> {
    // The process is the VM's own: the thread that runs it is confined too once the VM's threads are started.
    kiln_seccomp::set_confine_caller(true);
    let Prepared { mut vm, object_sites, notices } = kiln_launch::prepare(spec, KERNEL)?;
    for notice in notices {
        errln!("kiln: {notice}");
    }
    if let Some(addr) = gdb {
        let listener = TcpListener::bind(addr).with_context(|| format!("--gdb {addr}: cannot listen there"))?;
        errln!("kiln: waiting for gdb on {addr} (gdb PROGRAM -ex 'target remote {addr}')");
        let conn = kiln_vmm::debug::gdb::accept(&listener)?;
        vm.debug_with(conn)?;
    }
    // `kiln debug NAME` hands gdb's connections to the instance over a socket in its folder, made now: once the VM
    // runs, its threads open nothing.
    let _debug_socket = match &instance {
        Some(instance) => {
            let (socket, file) = kiln_vmm::debug::attach::DebugSocket::bind(&instance.dir())?;
            vm.accept_debuggers(socket);
            Some(file)
        }
        None => None,
    };
    give_core(&mut vm, spec, unnamed_core.as_ref())?;
    run_vm(spec, vm, object_sites, (instance, unnamed_core), jail)
}

/// Runs a VM made (booted or restored) for `spec` on this process to its end, as [`launch`] says; a detached
/// instance's process also serves its control socket meanwhile (`kiln snapshot`).
pub(crate) fn run_vm(
    spec: &LaunchSpec,
    vm: kiln_vmm::Vm,
    object_sites: Option<SiteCounts>,
    (mut instance, unnamed_core): (Option<&mut ThisInstance>, Option<UnnamedCore>),
    jail: Option<Jailed>,
) -> Result<u8> {
    let mut signals = host_signals::install().context("cannot set up the forwarding of signals")?;
    // Bound before the jail closes (its root is empty) and before `kiln run -d` returns.
    let control = match &instance {
        Some(instance) => crate::control::listen(&instance.control_path(), spec)?,
        None => None,
    };
    // Recorded before the jail closes: the store is out of the jail's root.
    if let Some(instance) = &mut instance {
        instance.running()?;
    }
    let mut reason_pipe = None;
    let jailed = jail.is_some();
    if let Some(Jailed { identity, reason }) = jail {
        lock_down(spec, identity)?;
        reason_pipe = Some(reason);
    }
    // Served once the jail has changed this process's uid (ControlListener::serve says why).
    let _control = control.map(|control| control.serve(vm.controller())).transpose()?;
    let grace = Duration::from_secs(spec.signals.grace_secs.into());
    let host_signals = HostSignals { wait: Box::new(move || signals.wait()), grace };
    let result = vm.run(Arc::new(StdioConsole), host_signals).context("running the VM failed");
    // A jail's root has no /proc to name the file through: its parent names it.
    if let (Ok((Outcome::Crashed(crash), _)), Some(core), false) = (&result, &unnamed_core, jailed) {
        if let Some(Ok(_)) = &crash.core_file {
            if let Err(e) = core.name() {
                errln!("kiln: no core file: {}", crate::chain(&e));
            }
        }
    }
    let (code, reason) = match result {
        Ok((outcome, stats)) => report(spec, outcome, &stats, object_sites),
        Err(e) => Err(e),
    }
    .unwrap_or_else(|e| {
        errln!("kiln: {}", crate::chain(&e));
        (KILN_ERROR, format!("kiln failed: {}", crate::chain(&e)))
    });
    match (reason_pipe, &instance) {
        // The parent records it (a closed pipe: the parent is gone, and the record with it).
        (Some(mut pipe), _) => drop(std::io::Write::write_all(&mut pipe, reason.as_bytes())),
        (None, Some(instance)) => instance.exited(code, &reason)?,
        (None, None) => {}
    }
    Ok(code)
}

/// The exit code and, in words, why the program ended; prints the trace summary and statistics asked for.
pub(crate) fn report(
    spec: &LaunchSpec,
    outcome: Outcome,
    stats: &RunStats,
    object_sites: Option<SiteCounts>,
) -> Result<(u8, String)> {
    for &(nr, _, enosys) in stats.syscalls.iter().filter(|s| s.2 > 0) {
        tracing::info!("unsupported syscall {} ({nr}) returned -ENOSYS {enosys} times", syscall_name(nr));
    }
    if let Some(note) = refused_processes(&stats.syscalls) {
        errln!("kiln: {note}");
    }
    if spec.trace_syscalls {
        print_summary(stats);
    }
    if spec.stats {
        let calls: u64 = stats.syscalls.iter().map(|s| u64::from(s.1)).sum();
        errln!("[kiln] {} VM exits, {calls} syscalls", stats.vm_exits);
        errln!("[kiln] host: {}", stats.host);
        if let Some(faults) = stats.shadow_faults {
            errln!("[kiln] {faults} guest page faults fixed by KVM (shadow paging: one per first touch of a page)");
        }
        errln!("[kiln] {}", stats.syscall_sites);
        if let Some(sites) = object_sites {
            errln!("[kiln] shared objects' {sites}");
        }
        if let Some(n) = &stats.net {
            errln!(
                "[kiln] network: {} frames out ({} bytes), {} in ({} bytes), {} notifications, {} dropped out, {} dropped in",
                n.tx_frames, n.tx_bytes, n.rx_frames, n.rx_bytes, n.notifications, n.tx_dropped, n.rx_dropped
            );
        }
        for (name, v) in &stats.volumes {
            errln!(
                "[kiln] volume {name}: {} reads ({} bytes), {} writes ({} bytes), {} flushes, {} notifications, {} errors",
                v.reads, v.bytes_read, v.writes, v.bytes_written, v.flushes, v.notifications, v.errors
            );
        }
    }
    let kiln_launch::Ending { code, reason } = kiln_launch::ending(&outcome);
    match outcome {
        Outcome::Exited(_) => {}
        // As shells do, say nothing when a program dies of a closed pipe (`kiln run ... | head`) or of Ctrl-C.
        Outcome::Killed(signal) if signal == SIGPIPE || signal == SIGINT => {}
        Outcome::Killed(_) | Outcome::Deadlocked { .. } => errln!("kiln: program {reason}"),
        Outcome::Crashed(crash) => crate::crash_report::print(spec, &crash, KERNEL),
        Outcome::SignalUntaken { .. } => {
            errln!(
                "kiln: the program {reason} (it kept it blocked, or the thread it went to never ran): stopped the VM"
            )
        }
        Outcome::Stopped(why) => return Err(anyhow!("stopped the VM: {why}")),
        Outcome::Snapshotted(_) => errln!("kiln: {reason}"),
    }
    Ok((code, reason))
}

/// The syscalls that would start another process or replace the program; Kiln answers them -ENOSYS (a clone only
/// when it would make a process, not a thread).
const PROCESS_SYSCALLS: [u64; 5] = [56, 57, 58, 59, 322];

/// What to tell the user when the program tried to start processes, which it then reported in its own words
/// ("Function not implemented"), if at all.
fn refused_processes(syscalls: &[(u64, u32, u32)]) -> Option<String> {
    let tried: Vec<String> = syscalls
        .iter()
        .filter(|&&(nr, _, enosys)| enosys > 0 && PROCESS_SYSCALLS.contains(&nr))
        .map(|&(nr, _, enosys)| format!("{} x{enosys}", syscall_name(nr)))
        .collect();
    (!tried.is_empty()).then(|| {
        format!(
            "the program tried to start another process ({}), which Kiln refuses with ENOSYS: a VM runs one \
             program; run each other program in a VM of its own",
            tried.join(", ")
        )
    })
}

fn print_summary(stats: &RunStats) {
    let calls: u64 = stats.syscalls.iter().map(|s| u64::from(s.1)).sum();
    let enosys: u64 = stats.syscalls.iter().map(|s| u64::from(s.2)).sum();
    errln!("[kiln] summary: {calls} syscalls, {enosys} unsupported (-ENOSYS), {} VM exits", stats.vm_exits);
    errln!("[kiln] {:>8} {:>8}  syscall", "calls", "ENOSYS");
    for &(nr, count, unsupported) in &stats.syscalls {
        errln!("[kiln] {count:>8} {unsupported:>8}  {} ({nr})", syscall_name(nr));
    }
}
