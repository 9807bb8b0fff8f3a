//! `kilnd`: the Kiln daemon in the foreground (as `kiln daemon` runs it); see the library for what it does.

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "info,virtio_queue=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if std::env::args().len() > 1 {
        eprintln!("kilnd takes no arguments: it serves the Kiln home of $KILN_HOME (docs/api.md)");
        return ExitCode::from(2);
    }
    match kilnd::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kilnd: {}", kiln_launch::chain(&e));
            ExitCode::from(1)
        }
    }
}
