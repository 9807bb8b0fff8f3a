//! `kiln run`: boot one program, stream its output, exit with its exit code.

use crate::host_signals;
use crate::net;
use crate::size::parse_size;
use anyhow::{anyhow, Context, Result};
use kiln_vmm::boot::BootError;
use kiln_vmm::loader::LoaderError;
use kiln_vmm::rootfs::RootfsBuilder;
use kiln_vmm::syscall_names::syscall_name;
use kiln_vmm::{Console, Outcome, RunStats, Vm, VmConfig, VmError};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The library OS, built by build.rs from kernel/.
pub(crate) static KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-kernel.elf"));

/// Exit code for Kiln's own failures (as `docker run` uses 125), distinct from the program's codes.
pub const KILN_ERROR: u8 = 125;
const SIGPIPE: u32 = 13;
const SIGINT: u32 = 2;
/// Exit code for a program that deadlocked (as `timeout` reports a command it had to stop).
const DEADLOCK_EXIT: u8 = 124;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Guest memory (K, M or G suffix)
    #[arg(long, short = 'm', default_value = "64M", value_parser = parse_size)]
    memory: u64,
    /// vCPUs: the program's threads run on this many host threads in parallel
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(kiln_vmm::vm::MAX_VCPUS)))]
    cpus: u32,
    /// Set an environment variable in the program (repeatable); the program sees only these
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Put a host file into the guest's filesystem (repeatable)
    #[arg(long = "file", value_name = "HOST:GUEST", value_parser = parse_mapping)]
    files: Vec<(PathBuf, String)>,
    /// Put a host directory, recursively, into the guest's filesystem (repeatable)
    #[arg(long = "dir", value_name = "HOST:GUEST", value_parser = parse_mapping)]
    dirs: Vec<(PathBuf, String)>,
    /// Print every syscall with its arguments and result to stderr, and a summary at exit
    #[arg(long)]
    trace_syscalls: bool,
    /// Print VM exits and syscall counts to stderr at exit
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    network: net::NetArgs,
    /// The static Linux x86-64 executable to run
    path: PathBuf,
    /// Arguments passed to the program
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn parse_mapping(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => Ok((host.into(), guest.to_string())),
        _ => Err(format!("'{s}' is not HOST:GUEST with an absolute GUEST path")),
    }
}

/// The library OS's own /etc/resolv.conf names this server.
const BUILT_IN_RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

/// The guest's filesystem image from --file and --dir, and the resolver configuration the network needs.
fn rootfs(args: &RunArgs) -> Result<Vec<u8>> {
    let resolv_conf = net::resolv_conf(&args.network).filter(|r| r != BUILT_IN_RESOLV_CONF);
    if args.files.is_empty() && args.dirs.is_empty() && resolv_conf.is_none() {
        return Ok(Vec::new());
    }
    let mut builder = RootfsBuilder::default();
    if let Some(resolv_conf) = resolv_conf {
        // First, so that a --file or --dir of the user's own replaces it.
        builder.add_file("/etc/resolv.conf", 0o644, resolv_conf.as_bytes())?;
    }
    for (host, guest) in &args.dirs {
        builder.add_host_dir(host, guest).with_context(|| format!("--dir {}:{guest}", host.display()))?;
    }
    for (host, guest) in &args.files {
        builder.add_host_file(host, guest).with_context(|| format!("--file {}:{guest}", host.display()))?;
    }
    Ok(builder.finish())
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() && !s.contains('\0') => Ok(s.to_string()),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

struct Terminal;

impl Console for Terminal {
    fn write(&self, fd: u64, bytes: &[u8]) -> std::io::Result<()> {
        if fd == 1 {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        } else {
            std::io::stderr().lock().write_all(bytes)
        }
    }

    fn trace(&self, line: &str) {
        eprintln!("[kiln] {line}");
    }
}

pub fn run(args: RunArgs) -> Result<u8> {
    let shown = args.path.display().to_string();
    let program = std::fs::read(&args.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{shown}: no such file"),
        std::io::ErrorKind::PermissionDenied => anyhow!("{shown}: permission denied"),
        _ if args.path.is_dir() => anyhow!("{shown}: is a directory, not a program"),
        _ => anyhow!(e).context(format!("cannot read {shown}")),
    })?;
    let name = args.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    let mut argv = vec![shown.clone()];
    argv.extend(args.args.iter().cloned());
    let config = VmConfig {
        memory: args.memory,
        cpus: args.cpus,
        argv,
        env: args.env.clone(),
        exe_path: format!("/{name}"),
        trace_syscalls: args.trace_syscalls,
        rewrite_cache: rewrite_cache_dir(),
        rootfs: rootfs(&args)?,
        net: net::card(&args.network)?,
    };

    let vm = Vm::new(KERNEL, &program, config).map_err(|e| explain(e, &shown, args.memory))?;
    let report = vm.rewrite_report();
    tracing::debug!(
        sites = report.rewritten.len(),
        relocated = report.relocated.len(),
        "rewrote syscall instructions in {shown}"
    );
    for site in &report.unsafe_sites {
        tracing::warn!("{shown}: the syscall at {site:#x} may clobber its function's red zone (rewritten in place)");
    }
    if args.trace_syscalls {
        eprintln!(
            "[kiln] rewrote {} syscall sites ({} moved out of a red zone)",
            report.rewritten.len() + report.relocated.len(),
            report.relocated.len()
        );
    }

    host_signals::install();
    let (outcome, stats) = vm.run(Arc::new(Terminal), &host_signals::take).context("running the VM failed")?;
    for &(nr, _, enosys) in stats.syscalls.iter().filter(|s| s.2 > 0) {
        tracing::info!("unsupported syscall {} ({nr}) returned -ENOSYS {enosys} times", syscall_name(nr));
    }
    if args.trace_syscalls {
        print_summary(&stats);
    }
    if args.stats {
        let calls: u64 = stats.syscalls.iter().map(|s| u64::from(s.1)).sum();
        eprintln!("[kiln] {} VM exits, {calls} syscalls", stats.vm_exits);
        if let Some(n) = &stats.net {
            eprintln!(
                "[kiln] network: {} frames out ({} bytes), {} in ({} bytes), {} notifications, {} dropped out, {} dropped in",
                n.tx_frames, n.tx_bytes, n.rx_frames, n.rx_bytes, n.notifications, n.tx_dropped, n.rx_dropped
            );
        }
    }
    match outcome {
        Outcome::Exited(code) => Ok(code as u8),
        Outcome::Killed(signal) => {
            // As shells do, say nothing when a program dies of a closed pipe (`kiln run ... | head`) or of Ctrl-C.
            if signal != SIGPIPE && signal != SIGINT {
                eprintln!("kiln: program killed by {}", kiln_vmm::signal::signal_name(signal));
            }
            Ok((128 + signal.min(127)) as u8)
        }
        Outcome::Deadlocked { threads, waits } => {
            let who =
                if threads == 1 { "its only thread waits".to_string() } else { format!("all {threads} threads wait") };
            let waits = if waits.is_empty() { String::new() } else { format!(" ({waits})") };
            eprintln!("kiln: program deadlocked: {who} with no deadline, and nothing can wake them{waits}");
            Ok(DEADLOCK_EXIT)
        }
        Outcome::Crashed(crash) => {
            eprintln!("kiln: program crashed: {crash}");
            Ok(crash.signal.exit_code() as u8)
        }
        Outcome::Stopped(why) => Err(anyhow!("stopped the VM: {why}")),
    }
}

/// `$KILN_HOME/cache/rewrite`, else the XDG cache (`~/.cache/kiln/rewrite`); none if there is no home to use.
fn rewrite_cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = var("KILN_HOME") {
        return Some(home.join("cache/rewrite"));
    }
    let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("kiln/rewrite"))
}

fn print_summary(stats: &RunStats) {
    let calls: u64 = stats.syscalls.iter().map(|s| u64::from(s.1)).sum();
    let enosys: u64 = stats.syscalls.iter().map(|s| u64::from(s.2)).sum();
    eprintln!("[kiln] summary: {calls} syscalls, {enosys} unsupported (-ENOSYS), {} VM exits", stats.vm_exits);
    eprintln!("[kiln] {:>8} {:>8}  syscall", "calls", "ENOSYS");
    for &(nr, count, unsupported) in &stats.syscalls {
        eprintln!("[kiln] {count:>8} {unsupported:>8}  {} ({nr})", syscall_name(nr));
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// Puts the error in the user's terms: the subject first, then what to do.
fn explain(e: VmError, shown: &str, memory: u64) -> anyhow::Error {
    match e {
        VmError::Program(e) => anyhow!("{shown}: {e}"),
        VmError::MemoryTooSmall { minimum, .. } => {
            anyhow!("--memory {} is too small: Kiln needs at least {}", mebibytes(memory), mebibytes(minimum))
        }
        VmError::Boot(BootError::Memory(_) | BootError::Loader(LoaderError::Memory(_))) => anyhow!(
            "{shown} does not fit in {} of guest memory; give it more with --memory (e.g. --memory 256M)",
            mebibytes(memory)
        ),
        other => anyhow!(other),
    }
}
