//! `kiln run -d`: an instance is one `kiln` process running one VM, detached from the terminal, its output in the
//! instance's log. `kiln run -d` records the instance, starts that process (the same command line, with
//! `KILN_INSTANCE` naming the record) in its own session, and waits until the VM has booted (the process writes a
//! byte to an inherited pipe) or failed (the pipe closes first; its error is in the log). The record holds the
//! resolved `LaunchSpec`, and the instance process launches that, not its flags. The instance process keeps
//! its record up to date: running with its pid when booted, exited with the code and reason at the end.

use anyhow::{anyhow, bail, Context, Result};
use kiln_image::instance::{
    create_with_default_name, default_name_base, new_id, now, process_start, Instance, Instances, State,
};
use kiln_image::Store;
use kiln_launch::home;
use kiln_launch::LaunchSpec;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

// The variable that names the instance record to the process that runs it, the descriptor it tells its starter
// "booted" on: kilnd's jailed instances are such processes too (`kilnd::jailed`), with the same two.
use kilnd::jailed::{ENDING_FD, INSTANCE_ENV, READY_FD, SUPERVISOR_ENV};

/// The instance process's view of its record.
pub struct ThisInstance {
    store: Store,
    id: String,
    /// This process's pid, as the host sees it (a jailed VM runs in a child, pid 1 of its own namespace): the
    /// process `kiln stop` signals and waits for, which records the end.
    pid: u32,
    /// The pipe to the starter, until the VM has booted.
    ready: Option<std::fs::File>,
    /// kilnd supervises this process (a jailed instance of its): it records the instance's states, and hears why the
    /// program ended on this pipe.
    supervisor: Option<std::fs::File>,
}

/// The record this process runs, if it is an instance process (`kiln run -d` started it). An error, never `None`,
/// when it is one but cannot reach its store: it must not start yet another instance process. Called before this
/// process opens any file, so that the descriptor it takes as the starter's pipe is the inherited one.
pub fn instance_of_this_process(detach: bool) -> Result<Option<ThisInstance>> {
    match std::env::var(INSTANCE_ENV) {
        Ok(id) if detach => {
            let ready = take_pipe(READY_FD);
            let supervisor = match std::env::var_os(SUPERVISOR_ENV) {
                Some(_) => Some(take_pipe(ENDING_FD).ok_or_else(|| {
                    anyhow!("{SUPERVISOR_ENV} is set, but descriptor {ENDING_FD} is no pipe to tell the supervisor on")
                })?),
                None => None,
            };
            Ok(Some(ThisInstance { ready, supervisor, store: home::store()?, id, pid: std::process::id() }))
        }
        _ => Ok(None),
    }
}

/// `fd` ([`READY_FD`], [`ENDING_FD`]), if it is open and a pipe. Anything else there (nothing, when a process was started otherwise than
/// by `kiln run -d`) is left alone: writing to or closing a descriptor that some other part of this process comes to
/// own would corrupt that file or abort the process (Rust's I/O safety check).
fn take_pipe(fd: i32) -> Option<std::fs::File> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer it is given; a closed descriptor only makes it fail.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it filled the buffer.
    let mode = unsafe { stat.assume_init() }.st_mode;
    if mode & libc::S_IFMT != libc::S_IFIFO {
        return None;
    }
    // SAFETY: the descriptor is open and a pipe, inherited from the starter; nothing in this process owns it, since
    // this runs before the process opens anything (see instance_of_this_process), and from here the File does.
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}

impl ThisInstance {
    /// What the record says to launch, as `kiln run -d` resolved it.
    pub fn spec(&self) -> Result<LaunchSpec> {
        let record = Instances::new(&self.store).load(&self.id)?;
        let launch = record.launch.ok_or_else(|| anyhow!("instance {} has no launch specification", self.id))?;
        serde_json::from_value(launch).with_context(|| format!("instance {}'s launch specification", self.id))
    }

    /// The instance's folder (its record, its log, the debugger's socket).
    pub fn dir(&self) -> std::path::PathBuf {
        Instances::new(&self.store).dir(&self.id)
    }

    /// Where the instance process takes `kiln snapshot`'s requests (`crate::control`).
    pub fn control_path(&self) -> std::path::PathBuf {
        control_path(&Instances::new(&self.store), &self.id)
    }

    /// A jail's parent: closes its copy of the starter's pipe, so that the starter hears of a child that ends before
    /// its VM booted.
    pub fn forget_ready_pipe(&mut self) {
        self.ready = None;
    }

    /// Where a crash's core file goes (`kiln inspect` shows it once there is one).
    pub fn core_path(&self) -> std::path::PathBuf {
        Instances::new(&self.store).core_path(&self.id)
    }

    /// The VM has booted: record the pid (unless kilnd records it), and let `kiln run -d` (or kilnd) go on.
    pub fn running(&mut self) -> Result<()> {
        if self.supervisor.is_none() {
            self.record_running()?;
        }
        if let Some(mut ready) = self.ready.take() {
            // A starter that is gone (Ctrl-C) has closed its end: nothing to tell.
            let _ = ready.write_all(b"R");
        }
        Ok(())
    }

    fn record_running(&self) -> Result<()> {
        let pid = self.pid;
        let start = process_start(pid).ok_or_else(|| anyhow!("cannot read this process's start time"))?;
        Instances::new(&self.store).update(&self.id, |i| {
            i.state = State::Running;
            (i.pid, i.pid_start, i.started_ms) = (Some(pid), Some(start), Some(now()));
        })?;
        Ok(())
    }

    /// The program has ended: record how, or remove the record for `--rm`; or tell kilnd why (it records the end,
    /// and the code is this process's exit code).
    pub fn exited(&self, code: u8, reason: &str) -> Result<()> {
        if let Some(supervisor) = &self.supervisor {
            // A kilnd that is gone has closed its end, and SIGKILLed this process with it.
            let _ = (&*supervisor).write_all(reason.as_bytes());
            return Ok(());
        }
        let instances = Instances::new(&self.store);
        let record = instances.update(&self.id, |i| {
            i.state = State::Exited;
            (i.exit_code, i.reason, i.finished_ms) = (Some(i32::from(code)), Some(reason.to_string()), Some(now()));
        })?;
        if record.auto_remove {
            instances.remove(&self.id)?;
        }
        Ok(())
    }
}

/// An instance's control socket, in its folder.
pub fn control_path(instances: &Instances<'_>, id: &str) -> std::path::PathBuf {
    instances.dir(id).join("control.sock")
}

/// How `kiln run -d` or `kiln restore -d` was asked to record the instance.
pub struct Detach<'a> {
    pub name: Option<&'a str>,
    pub rm: bool,
    /// What the user named to run (an image, a program, a snapshot file).
    pub target: &'a str,
}

/// `kiln run -d`: records the instance with `spec`, starts its process, and prints its id once the VM has booted.
pub fn start(args: &Detach<'_>, spec: &LaunchSpec) -> Result<u8> {
    let store = home::store()?;
    let instances = Instances::new(&store);
    let id = new_id();
    let ports: Vec<String> = spec.network.published().iter().map(ToString::to_string).collect();
    let launch = serde_json::to_value(spec).context("cannot record the launch specification")?;
    let create = |name: &str| {
        let record = Instance {
            image_id: spec.image_id().cloned(),
            auto_remove: args.rm,
            launch: Some(launch.clone()),
            ..Instance::created(&id, name, args.target, spec.argv.clone(), ports.clone())
        };
        instances.create(&record)
    };
    match args.name {
        Some(name) => create(name)?,
        None => create_with_default_name(&default_name_base(&spec.name), &id, create)?,
    }
    match spawn(&instances, &id) {
        Ok(()) => {
            outln!("{id}");
            Ok(0)
        }
        Err(e) => {
            let _ = instances.remove(&id);
            Err(e)
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make a pipe");
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn spawn(instances: &Instances<'_>, id: &str) -> Result<()> {
    let log_path = instances.log_path(id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot create the instance's log {}", log_path.display()))?;
    let (ready_read, ready_write) = pipe()?;
    let write_fd = ready_write.as_raw_fd();
    let exe = std::env::current_exe().context("cannot find the kiln executable to start the instance")?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(INSTANCE_ENV, id)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions (setsid, dup2, fcntl).
    unsafe {
        command.pre_exec(move || {
            // Its own session: no terminal's signals, and it outlives this process.
            libc::setsid();
            if write_fd == READY_FD {
                libc::fcntl(READY_FD, libc::F_SETFD, 0);
            } else if libc::dup2(write_fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the instance's process")?;
    drop(ready_write);
    // Recorded now, so that an instance whose process dies while this one is gone (Ctrl-C) is not "created" forever.
    let pid = child.id();
    if let Some(start) = process_start(pid) {
        // Best effort: the record may be gone already (a program that ended at once, with --rm).
        let _ = instances.update(id, |i| (i.pid, i.pid_start) = (Some(pid), Some(start)));
    }
    let mut byte = [0u8; 1];
    let booted = std::fs::File::from(ready_read).read(&mut byte).is_ok_and(|n| n == 1);
    if booted {
        // The instance process goes on alone; init reaps it.
        return Ok(());
    }
    let status = child.wait()?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let why = log.lines().rev().find_map(|l| l.strip_prefix("kiln: ")).map(str::to_string);
    match why {
        Some(why) => bail!("{why}"),
        None => bail!("the instance's process ended before the VM booted ({status}); its output: {log:?}"),
    }
}
