//! `kiln`: run static Linux x86-64 programs as unikernel VMs.

mod allocator;
#[cfg(test)]
mod boot_layout_tests;
mod host_signals;
mod net;
mod run;
mod size;
#[cfg(test)]
mod syscall_docs;

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

#[derive(Subcommand)]
enum Command {
    /// Boot a static Linux x86-64 program in its own VM; exits with the program's exit code.
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kiln: {}", chain(&e));
            ExitCode::from(run::KILN_ERROR)
        }
    }
}

/// "what: why: root cause", on one line.
fn chain(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}
