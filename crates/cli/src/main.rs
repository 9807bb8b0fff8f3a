//! `kiln`: run static Linux x86-64 programs as unikernel VMs.

/// `println!` that drops what a closed stdout cannot take instead of panicking: `kiln ... | head` closing the pipe is
/// a normal event for a command-line tool. Kiln prints through this and [`errln!`] only.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that drops what a closed stderr cannot take instead of panicking (see [`outln!`]).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod allocator;
#[cfg(test)]
mod boot_layout_tests;
mod container_build;
mod control;
mod core_out;
mod crash_report;
mod debug;
mod detach;
mod export;
mod host_signals;
mod image_build;
mod images;
mod inspect;
mod instances;
mod kilnd_client;
mod net;
mod output;
mod registry;
mod run;
mod service;
mod size;
mod snapshot;
#[cfg(test)]
mod syscall_docs;
mod volume;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: allocator::KilnAllocator = allocator::KilnAllocator;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Run static Linux x86-64 programs as unikernel VMs",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// At most this many instances at once (services' replicas included); more are refused
    #[arg(long, value_name = "N", default_value_t = kilnd::DEFAULT_MAX_INSTANCES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_instances: u64,
    /// Stop the instances when kilnd stops (SIGTERM, then SIGKILL after 10 s), instead of keeping them for the next
    /// kilnd, which runs them on from where they were
    #[arg(long)]
    stop_instances: bool,
    /// Jail every instance (as `kiln run -d --jail` does, needs root): each runs as a jailed process of its own,
    /// supervised by kilnd, instead of on kilnd's threads; such instances are stopped, not kept, when kilnd stops
    #[arg(long)]
    jail_instances: bool,
    /// VMs made ahead of time (KVM VM, RAM, vCPUs) of the shape last asked for, which creates and restores take
    /// instead of making their own; 0 makes none
    #[arg(long, value_name = "N", default_value_t = kilnd::DEFAULT_READY_VMS as u64,
          value_parser = clap::value_parser!(u64).range(0..=kilnd::MAX_READY_VMS as u64))]
    ready_vms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Boot an image or a static Linux x86-64 program in its own VM; exits with the program's exit code.
    Run(Box<run::RunArgs>),
    /// Build an image from a Kiln.toml
    Build(image_build::BuildArgs),
    /// Write an image or program as a file other hypervisors boot (--format pvh: QEMU -kernel, Firecracker, Cloud
    /// Hypervisor; see docs/deploy.md)
    Export(Box<export::ExportArgs>),
    /// List images
    Images(images::ImagesArgs),
    /// Give an image another name
    Tag(images::TagArgs),
    /// Remove images (their blobs go when no image needs them)
    Rmi(images::RmiArgs),
    /// Show an instance or an image as JSON
    Inspect(inspect::InspectArgs),
    /// List running instances (-a: all)
    Ps(instances::PsArgs),
    /// Print an instance's output
    Logs(instances::LogsArgs),
    /// Attach gdb to a running instance: waits for gdb on a TCP address, then the instance serves it (see
    /// docs/debugging.md)
    Debug(debug::DebugArgs),
    /// Send SIGTERM to instances' programs, then kill those still running after a timeout
    Stop(instances::StopArgs),
    /// Kill instances at once
    Kill(instances::KillArgs),
    /// Remove instances' records and logs
    Rm(instances::RmArgs),
    /// Write a running instance to a file (memory, vCPUs, network card) and end it (--leave-running: not)
    Snapshot(snapshot::SnapshotArgs),
    /// Run an instance on from a snapshot file, in this process (-d: in the background)
    Restore(snapshot::RestoreArgs),
    /// Push an image to an OCI registry
    Push(registry::PushArgs),
    /// Pull an image from an OCI registry
    Pull(registry::PullArgs),
    /// Save credentials for a registry (checked first)
    Login(registry::LoginArgs),
    /// Forget the credentials for a registry
    Logout(registry::LogoutArgs),
    /// Manage volumes: files with an ext2 filesystem that `kiln run -v NAME:/path` mounts
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Run kilnd, the daemon that owns instances, in the foreground (for systemd: contrib/kilnd.service)
    Daemon(DaemonArgs),
    /// Manage services: replicas of one image behind published ports that kilnd balances, updated a batch at a time
    #[command(subcommand)]
    Service(service::ServiceCommand),
}

/// What `kiln` logs unless `KILN_LOG` says otherwise. virtio-queue logs an error for each bad thing a guest does to a
/// queue, at the guest's pace (megabytes a second into a detached instance's log file): the devices report what
/// matters themselves, once. rustls-platform-verifier logs an error for every certificate it refuses, which
/// `kiln push/pull` report themselves, with what to do.
const DEFAULT_LOG_FILTER: &str = "warn,virtio_queue=off,rustls_platform_verifier=off";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        // Its own complaint about a failed write would be an `eprintln!`, which panics on a closed stderr.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Build(args) => image_build::build(args),
        Command::Export(args) => export::export(*args),
        Command::Images(args) => images::images(args),
        Command::Tag(args) => images::tag(args),
        Command::Rmi(args) => images::rmi(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Ps(args) => instances::ps(args),
        Command::Logs(args) => instances::logs(args),
        Command::Debug(args) => debug::debug(args),
        Command::Stop(args) => instances::stop(args),
        Command::Kill(args) => instances::kill(args),
        Command::Rm(args) => instances::rm(args),
        Command::Snapshot(args) => snapshot::snapshot(args),
        Command::Restore(args) => snapshot::restore(args),
        Command::Volume(command) => volume::run(command),
        Command::Push(args) => registry::push(args),
        Command::Pull(args) => registry::pull(args),
        Command::Login(args) => registry::login(args),
        Command::Logout(args) => registry::logout(args),
        Command::Daemon(args) => kilnd::run(kilnd::Config {
            max_instances: args.max_instances as usize,
            stop_instances: args.stop_instances,
            jail_instances: args.jail_instances,
            ready_vms: args.ready_vms as usize,
        })
        .map(|()| 0)
        .map_err(anyhow::Error::from),
        Command::Service(command) => service::run(command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            errln!("kiln: {}", chain(&e));
            ExitCode::from(run::KILN_ERROR)
        }
    }
}

/// "what: why: root cause", on one line.
pub(crate) fn chain(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}
