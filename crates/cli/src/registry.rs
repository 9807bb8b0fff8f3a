//! `kiln push`, `kiln pull`, `kiln login`, `kiln logout`: images to and from OCI registries (crates/registry).

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_image::size::human;
use kiln_launch::home;
use kiln_registry::credentials::{self, Credential, Sources};
use kiln_registry::{Options, Progress, RemoteName};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

/// How to reach the registry.
#[derive(clap::Args)]
pub struct TransportArgs {
    /// A PEM file of CA certificates to trust besides the system's
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Allow plain HTTP and unverified certificates (without it, only localhost and 127.0.0.1 may use HTTP)
    #[arg(long)]
    insecure: bool,
}

impl TransportArgs {
    fn options(&self) -> Options {
        Options {
            ca_cert: self.ca_cert.clone(),
            insecure: self.insecure,
            credentials: Sources::from_env(home::kiln_home().as_deref()),
        }
    }
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The local image: NAME[:TAG] or id
    image: String,
    /// Where: REGISTRY/REPOSITORY[:TAG]
    #[arg(value_name = "REGISTRY/REPO[:TAG]")]
    target: String,
    /// Print only the manifest's digest
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// What: REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]; stored as REPOSITORY:TAG
    #[arg(value_name = "REGISTRY/REPO[:TAG|@DIGEST]")]
    source: String,
    /// Print only the image id
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The registry: HOST[:PORT]
    registry: String,
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from stdin (one line) instead of asking on the terminal
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT]
    registry: String,
}

/// A byte bar on stderr for transfers of a megabyte or more, unless `-q` (indicatif draws nothing off a terminal).
struct Bar {
    bar: ProgressBar,
    quiet: bool,
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        if total >= 1 << 20 && !self.quiet {
            self.bar.set_length(total);
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}

fn bar(quiet: bool, what: String) -> Arc<Bar> {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    Arc::new(Bar { bar, quiet })
}

pub fn push(args: PushArgs) -> Result<u8> {
    let store = home::store()?;
    let target = RemoteName::parse(&args.target)?;
    let progress = bar(args.quiet, format!("pushing {target}"));
    let pushed = kiln_registry::push(&store, &args.image, &target, &args.transport.options(), progress.clone());
    progress.bar.finish_and_clear();
    let pushed = pushed?;
    if args.quiet {
        outln!("{}", pushed.manifest_digest);
    } else {
        outln!(
            "pushed {target} {} (image {}): uploaded {} blobs ({}), {} already there",
            pushed.manifest_digest,
            pushed.id.short(),
            pushed.uploaded,
            human(pushed.uploaded_bytes),
            pushed.present
        );
    }
    Ok(0)
}

pub fn pull(args: PullArgs) -> Result<u8> {
    let store = home::store()?;
    let source = RemoteName::parse(&args.source)?;
    let progress = bar(args.quiet, format!("pulling {source}"));
    let pulled = kiln_registry::pull(&store, &source, &args.transport.options(), progress.clone());
    progress.bar.finish_and_clear();
    let pulled = pulled?;
    if args.quiet {
        outln!("{}", pulled.id);
    } else {
        outln!(
            "pulled {} {}: fetched {} blobs ({}), {} already here",
            pulled.tag,
            pulled.id.short(),
            pulled.fetched,
            human(pulled.fetched_bytes),
            pulled.present
        );
    }
    Ok(0)
}

fn auth_file() -> Result<PathBuf> {
    home::kiln_home()
        .map(|h| h.join("auth.json"))
        .ok_or_else(|| anyhow!("no place for credentials: set KILN_HOME (or HOME)"))
}

pub fn login(args: LoginArgs) -> Result<u8> {
    let username = match args.username {
        Some(u) => u,
        None if std::io::stdin().is_terminal() && !args.password_stdin => {
            errln!("Username: ");
            read_line()?
        }
        None => bail!("give the user name with -u"),
    };
    let password = if args.password_stdin {
        read_line()?
    } else if std::io::stdin().is_terminal() {
        read_password()?
    } else {
        bail!("stdin is not a terminal: give the password with --password-stdin")
    };
    let credential = Credential { username, password };
    kiln_registry::credentials::check(&args.registry, &credential, &args.transport.options())?;
    let file = auth_file()?;
    credentials::save(&file, &args.registry, &credential)?;
    outln!("logged in to {} (credentials in {}, readable only by you)", args.registry, file.display());
    Ok(0)
}

pub fn logout(args: LogoutArgs) -> Result<u8> {
    if credentials::forget(&auth_file()?, &args.registry)? {
        outln!("logged out of {}", args.registry);
    } else {
        outln!("not logged in to {}", args.registry);
    }
    Ok(0)
}

fn read_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Asks for the password on the terminal with echo off.
fn read_password() -> Result<String> {
    errln!("Password: ");
    // SAFETY: termios is plain data, filled by tcgetattr on stdin, which is a terminal here.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointer is to a live termios.
    let have_terminal = unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if have_terminal {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: sets stdin's attributes from a termios tcgetattr filled.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let line = read_line();
    if have_terminal {
        // SAFETY: restores what tcgetattr read.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    line
}
