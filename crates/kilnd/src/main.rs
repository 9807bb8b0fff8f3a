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
    let mut config = kilnd::Config::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.clone().next()) {
            ("--stop-instances", _) => config.stop_instances = true,
            ("--jail-instances", _) => config.jail_instances = true,
            ("--ready-vms", Some(n)) => {
                args.next();
                match n.parse::<usize>() {
                    Ok(n) if n <= kilnd::MAX_READY_VMS => config.ready_vms = n,
                    _ => {
                        eprintln!("kilnd: --ready-vms {n:?} is not a number from 0 to {}", kilnd::MAX_READY_VMS);
                        return ExitCode::from(2);
                    }
                }
            }
            ("--max-instances", Some(n)) => {
                args.next();
                match n.parse::<usize>() {
                    Ok(n) if n > 0 => config.max_instances = n,
                    _ => {
                        eprintln!("kilnd: --max-instances {n:?} is not a positive number");
                        return ExitCode::from(2);
                    }
                }
            }
            _ => {
                eprintln!(
                    "kilnd takes only --max-instances N, --ready-vms N, --stop-instances and --jail-instances: it \
                     serves the Kiln home of $KILN_HOME \
                     (docs/api.md)"
                );
                return ExitCode::from(2);
            }
        }
    }
    match kilnd::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kilnd: {}", kiln_launch::chain(&e));
            ExitCode::from(1)
        }
    }
}
