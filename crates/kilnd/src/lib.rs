//! kilnd: one host daemon that owns Kiln instances. Each instance is a VM made by `kiln_launch::prepare` and run on
//! threads of this process (not a process of its own, as `kiln run -d` makes), recorded in the store
//! (`kiln_image::instance`) as every instance is. Clients talk to it over HTTP+JSON on the Unix socket
//! `$KILN_HOME/kilnd.sock` (mode 0600), in the shape of the Docker Engine API; `docs/api.md` lists every route.

pub mod api;
pub mod client;
mod console;
mod daemon;
mod error;
mod health;
mod held;
pub mod jailed;
mod pool;
mod runner;
mod server;
mod services;

/// A service's API bodies (`POST /services`, ...), for kilnd's clients.
pub use services::spec as service;

use daemon::Daemon;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The socket's file name in the Kiln home.
pub const SOCKET: &str = "kilnd.sock";
const LOCK: &str = "kilnd.lock";
/// Signals that stop kilnd (its instances first).
const STOP_SIGNALS: [i32; 2] = [libc::SIGTERM, libc::SIGINT];

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    NoHome(#[from] kiln_launch::home::NoHome),
    #[error("cannot use {}", .0.display())]
    Home(PathBuf, #[source] std::io::Error),
    #[error("another kilnd already runs for {} (its lock {} is held)", .0.display(), .0.join(LOCK).display())]
    AlreadyRuns(PathBuf),
    #[error("cannot listen on {}", .0.display())]
    Listen(PathBuf, #[source] std::io::Error),
    #[error("cannot start kilnd's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Start(String),
}

/// Where kilnd listens for the Kiln home `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET)
}

/// The socket of the Kiln home this process uses (`$KILN_HOME`, ...).
pub fn default_socket() -> Result<PathBuf, kiln_launch::home::NoHome> {
    kiln_launch::home::kiln_home().map(|h| socket_path(&h)).ok_or(kiln_launch::home::NoHome("kilnd's socket"))
}

/// How many instances kilnd runs at most when not told (`--max-instances`): the aim for this 24 GiB host.
pub const DEFAULT_MAX_INSTANCES: usize = 10_000;

/// How many VMs kilnd makes ahead of time when not told (`--ready-vms`; `pool.rs`).
pub const DEFAULT_READY_VMS: usize = 4;
/// Most VMs made ahead of time (each holds kernel memory: `docs/architecture.md`).
pub const MAX_READY_VMS: usize = 64;

/// What kilnd is started with.
#[derive(Clone, Debug)]
pub struct Config {
    /// At most this many instances at once, replicas included; a create beyond it is refused (409).
    pub max_instances: usize,
    /// Its stop stops its instances (`--stop-instances`), instead of keeping them for the next kilnd.
    pub stop_instances: bool,
    /// Every instance it creates is jailed (`--jail-instances`), as if its request said `"jail": true`.
    pub jail_instances: bool,
    /// VMs made ahead of time, of the shape last asked for, for creates and restores to take (0: none).
    pub ready_vms: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_instances: DEFAULT_MAX_INSTANCES,
            stop_instances: false,
            jail_instances: false,
            ready_vms: DEFAULT_READY_VMS,
        }
    }
}

/// Runs kilnd in the foreground until SIGTERM or SIGINT, then keeps its instances for the next kilnd (or stops
/// them, with [`Config::stop_instances`]) and returns.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let home = kiln_launch::home::kiln_home().ok_or(kiln_launch::home::NoHome("kilnd's socket"))?;
    std::fs::create_dir_all(&home).map_err(|e| DaemonError::Home(home.clone(), e))?;
    // Blocked before any thread starts, so that every thread inherits it and they wait for `sigwait` below.
    let stop_set = signal_set();
    // SAFETY: a valid, initialised signal set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &stop_set, std::ptr::null_mut()) };
    if config.jail_instances {
        jailed::kiln_executable().map_err(|e| DaemonError::Start(format!("--jail-instances: {e}")))?;
    }
    let _lock = lock(&home)?;
    let socket = socket_path(&home);
    let listener = listen(&socket)?;
    let first = kiln_vmm::ready::Shape::of(kiln_launch::DEFAULT_MEMORY, 1);
    let ready = pool::Pool::start(config.ready_vms, first, kiln_vmm::ready::ReadyMachine::make)
        .map_err(DaemonError::Runtime)?;
    let daemon = Arc::new(
        Daemon::new(kiln_launch::home::store()?, config.max_instances)
            .map(|daemon| daemon.jailing_all(config.jail_instances).with_ready(ready.clone()))
            .map_err(|e| DaemonError::Start(e.to_string()))?,
    );
    daemon.adopt_records().map_err(|e| DaemonError::Start(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DaemonError::Runtime)?;
    let services = Arc::new(services::Services::new(daemon.clone(), runtime.handle().clone()));
    services.restore();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kilnd-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: an initialised set and a valid place for the result.
            while unsafe { libc::sigwait(&stop_set, &mut sig) } != 0 {}
            let _ = stop_tx.send(sig);
        })
        .map_err(DaemonError::Runtime)?;
    tracing::info!("kilnd {} listens on {}", env!("CARGO_PKG_VERSION"), socket.display());
    let sig = runtime.block_on(async {
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|e| DaemonError::Listen(socket.clone(), e))?;
        let _server = tokio::spawn(server::serve(listener, daemon.clone(), services.clone()));
        Ok::<_, DaemonError>(stop_rx.await.unwrap_or(libc::SIGTERM))
    })?;
    let _ = std::fs::remove_file(&socket);
    services.shutdown();
    drop(runtime);
    if config.stop_instances {
        tracing::info!("kilnd stops (signal {sig}): stopping its instances");
    } else {
        let started = std::time::Instant::now();
        let kept = daemon.keep_all();
        tracing::info!(
            "kilnd stops (signal {sig}): {kept} instances kept for the next kilnd in {:?}",
            started.elapsed()
        );
    }
    daemon.stop_all();
    ready.stop();
    Ok(())
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// One kilnd per Kiln home: an exclusive lock, held while it runs (the kernel drops it when the process ends).
fn lock(home: &Path) -> Result<std::fs::File, DaemonError> {
    let path = home.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DaemonError::Home(path.clone(), e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DaemonError::AlreadyRuns(home.to_path_buf()));
    }
    Ok(file)
}

/// Listens on `socket` (a stale one from a kilnd that died is replaced: the lock says none runs), mode 0600 from
/// the start: the socket is made under a umask that leaves the group and others nothing.
fn listen(socket: &Path) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DaemonError::Listen(socket.to_path_buf(), e)),
    }
    // SAFETY: umask has no preconditions; it is set back right after the bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| DaemonError::Listen(socket.to_path_buf(), e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| DaemonError::Listen(socket.to_path_buf(), e))?;
    listener.set_nonblocking(true).map_err(|e| DaemonError::Listen(socket.to_path_buf(), e))?;
    Ok(listener)
}
