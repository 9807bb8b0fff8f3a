//! One container's task: its VM process (`vm.rs`) or, for a pod's sandbox container, nothing; its phase (created,
//! running, stopped with a status) and the waiters on it.

use crate::bundle::{Config, PodNetwork};
use crate::terminal;
use crate::vm::{VmArgs, GO_FD, READY, READY_FD};
use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The most the VM process may say about a failed preparation (one error chain).
const MAX_READY_MESSAGE: u64 = 64 << 10;
/// The spec the shim writes into the bundle for the VM process.
pub const SPEC_FILE: &str = "kiln-spec.json";
/// The VM process's pid, in the bundle, for `delete` after the shim itself died.
pub const PID_FILE: &str = "kiln.pid";

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Created,
    Running,
    Stopped { status: u32, at: Timestamp },
}

/// containerd's paths for the task's stdio (FIFOs; empty for none).
#[derive(Clone, Debug, Default)]
pub struct Stdio3 {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: Stdio3,
    /// The VM process's pid, or the shim's for a sandbox container, which has no process of its own.
    pub pid: u32,
    pub sandbox: bool,
    /// The guest's memory (none for a sandbox): the memory limit in the task's stats.
    pub memory: u64,
    /// Where the Start goes (the VM process's [`GO_FD`]); taken by Start.
    go: Mutex<Option<File>>,
    /// The master side of the task's terminal, if it has one (`terminal.rs`).
    terminal: Option<OwnedFd>,
    /// Whether the shim mounted the rootfs (and unmounts it at Delete).
    pub mounted: bool,
    pub rootfs: PathBuf,
    /// The volumes of its writable mounts (`writable.rs`), written back when its VM process ends.
    volumes: Mutex<Vec<crate::writable::Volume>>,
    phase: Mutex<Phase>,
    changed: Condvar,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot open {0}")]
    Stdio(String, #[source] std::io::Error),
    #[error("cannot make the task's terminal")]
    Terminal(#[source] std::io::Error),
    #[error("cannot start the VM process")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    Prepare(String),
    #[error("{0}")]
    Shim(#[from] containerd_shim::Error),
    #[error(transparent)]
    Volume(#[from] crate::writable::VolumeError),
}

impl Task {
    /// A task for `config`: for a sandbox container, nothing to run; else the VM process, its VM made and waiting for
    /// Start. `on_exit` is called with the status when it ends.
    pub fn create(
        id: &str,
        bundle: &Path,
        config: &Config,
        stdio: Stdio3,
        mounted: bool,
        on_exit: impl FnOnce(&Arc<Task>, u32) + Send + 'static,
    ) -> Result<Arc<Task>, TaskError> {
        let task = |pid, sandbox, memory, go, terminal, volumes| Task {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            stdio: stdio.clone(),
            pid,
            sandbox,
            memory,
            go: Mutex::new(go),
            terminal,
            mounted,
            rootfs: config.rootfs(bundle),
            volumes: Mutex::new(volumes),
            phase: Mutex::new(Phase::Created),
            changed: Condvar::new(),
        };
        if config.is_sandbox() {
            return Ok(Arc::new(task(std::process::id(), true, 0, None, None, Vec::new())));
        }
        let spec = config.launch_spec(bundle, id)?;
        // Made (and their host directories locked) before the VM process, which attaches them.
        let volumes = crate::writable::make_all(&config.writable_mounts()?, bundle)?;
        let spec_path = bundle.join(SPEC_FILE);
        let json = serde_json::to_vec(&spec).map_err(|e| TaskError::Write(spec_path.clone(), e.into()))?;
        std::fs::write(&spec_path, json).map_err(|e| TaskError::Write(spec_path.clone(), e))?;

        // Subscribed before the process exists, so that its exit (reaped by containerd-shim's SIGCHLD handler) is
        // never missed.
        let exits = monitor_subscribe(Topic::Pid)?;
        let (go_read, go_write) = pipe().map_err(TaskError::Spawn)?;
        let (ready_read, ready_write) = pipe().map_err(TaskError::Spawn)?;
        let stdout = open_stdio(&stdio.stdout)?;
        let stdin_fifo = (!stdio.stdin.is_empty()).then(|| stdio.stdin.strip_prefix("file://").unwrap_or(&stdio.stdin));
        let exe = std::env::current_exe().map_err(TaskError::Spawn)?;
        let mut command = Command::new(exe);
        let mut vm_args = VmArgs {
            spec: spec_path.to_string_lossy().into_owned(),
            netns: config.network_namespace().map(Path::to_path_buf),
            stdin: false,
            terminal: stdio.terminal,
            take_address: config.network_namespace().is_some() && config.pod_network()? == PodNetwork::Tap,
        };
        // With a terminal (`ctr run -t`), the VM process's three streams are its slave side, and the shim relays
        // containerd's FIFOs to and from the master; without, stdout and stderr are the FIFOs and stdin a pipe.
        let (master, output) = match stdio.terminal {
            true => {
                let (master, slave) = terminal::open().map_err(TaskError::Terminal)?;
                let copy = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(TaskError::Terminal);
                command.stdin(copy(&slave)?).stdout(copy(&slave)?).stderr(Stdio::from(slave));
                if let Some(fifo) = stdin_fifo {
                    let into = master.try_clone().map(File::from).map_err(TaskError::Terminal)?;
                    terminal::relay_input(into, fifo.to_string()).map_err(TaskError::Terminal)?;
                }
                let output = stdout.map(|out| terminal::relay_output(&master, out)).transpose();
                (Some(master), output.map_err(TaskError::Terminal)?)
            }
            false => {
                // stdin through a pipe the shim fills from the FIFO: the (jailed) VM process sees no FIFO path.
                match stdin_fifo {
                    Some(fifo) => {
                        let (read, write) = pipe().map_err(TaskError::Spawn)?;
                        terminal::relay_input(File::from(write), fifo.to_string()).map_err(TaskError::Spawn)?;
                        command.stdin(Stdio::from(read));
                        vm_args.stdin = true;
                    }
                    None => {
                        command.stdin(Stdio::null());
                    }
                }
                let stderr = open_stdio(&stdio.stderr)?;
                command.stdout(stdout.map_or_else(Stdio::null, Stdio::from));
                command.stderr(stderr.map_or_else(Stdio::null, Stdio::from));
                (None, None)
            }
        };
        command.arg("vm").args(vm_args.to_args()).current_dir(bundle);
        let (go_fd, ready_fd) = (go_read.as_raw_fd(), ready_write.as_raw_fd());
        // SAFETY: only dup2(2), async-signal-safe, runs between fork and exec; it puts the two pipe ends where the
        // VM process looks for them (dup2 clears close-on-exec on the copies).
        unsafe {
            command.pre_exec(move || {
                for (from, to) in [(go_fd, GO_FD), (ready_fd, READY_FD)] {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(TaskError::Spawn)?;
        // The terminal's slave side goes with the command: the output relay ends when the VM process's copies close.
        drop(command);
        drop((go_read, ready_write));
        let pid = child.id();
        let _ = std::fs::write(bundle.join(PID_FILE), pid.to_string());
        let task = Arc::new(task(pid, false, spec.memory, Some(File::from(go_write)), master, volumes));
        let watched = task.clone();
        // The pod's network, once the VM process took it (a VM process that failed gave it back itself, and one
        // refused because another container has it must not take it from that one).
        let netns = config.network_namespace().map(Path::to_path_buf).filter(|_| vm_args.take_address);
        let took_network = Arc::new(AtomicBool::new(false));
        let took = took_network.clone();
        std::thread::spawn(move || {
            let status = wait_pid(pid as i32, exits) as u32;
            // The program's last output reaches containerd before its exit does.
            if let Some(output) = output {
                let _ = output.recv_timeout(terminal::OUTPUT_GRACE);
            }
            // Before the exit is told: a pod's next container may take the network at once.
            if let (Some(netns), true) = (netns, took.load(Ordering::SeqCst)) {
                crate::podnet::tear_down(&netns);
            }
            // Before the exit is told too: the pod's next container finds what this one wrote.
            watched.write_back();
            watched.stopped(status);
            on_exit(&watched, status);
        });

        let mut said = String::new();
        let _ = File::from(ready_read).take(MAX_READY_MESSAGE).read_to_string(&mut said);
        if said != READY {
            let said = match said.trim() {
                "" => "the VM process ended before its VM was ready".to_string(),
                message => message.to_string(),
            };
            task.go.lock().expect("go lock").take();
            return Err(TaskError::Prepare(said));
        }
        took_network.store(true, Ordering::SeqCst);
        Ok(task)
    }

    /// Writes each writable mount's volume back into its host directory, which is then free for another container;
    /// the volume's file goes. A volume that cannot be written back is reported in the shim's log (containerd's).
    fn write_back(&self) {
        let volumes = std::mem::take(&mut *self.volumes.lock().expect("volumes lock"));
        for volume in volumes {
            if let Err(e) = volume.write_back() {
                log::error!("kiln: container {}: {}", self.id, kiln_launch::chain(&e));
            }
        }
    }

    /// The task's Start: the VM process runs the program.
    pub fn start(&self) -> Result<(), String> {
        let mut phase = self.phase.lock().expect("phase lock");
        match *phase {
            Phase::Created => {}
            Phase::Running => return Err("the task is running already".into()),
            Phase::Stopped { .. } => return Err("the task has stopped".into()),
        }
        if !self.sandbox {
            let mut go = self.go.lock().expect("go lock").take().ok_or("the task cannot be started")?;
            go.write_all(b"g").map_err(|e| format!("the VM process did not take the start: {e}"))?;
        }
        *phase = Phase::Running;
        Ok(())
    }

    /// Sends `signal` to the program (the VM process forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it; others,
    /// SIGKILL first, end the VM). A task not started yet has no program to take one: its VM process is killed.
    pub fn kill(&self, signal: u32) -> Result<(), String> {
        let phase = self.phase();
        if matches!(phase, Phase::Stopped { .. }) {
            return Err("process already finished".into());
        }
        if self.sandbox {
            // A sandbox's pause process exits cleanly on SIGINT and SIGTERM.
            let status = match signal as i32 {
                libc::SIGINT | libc::SIGTERM => 0,
                other => 128 + other as u32,
            };
            self.stopped(status);
            return Ok(());
        }
        let signal = match phase {
            Phase::Created => libc::SIGKILL,
            _ => signal as i32,
        };
        // SAFETY: kill(2) on the VM process this shim started and has not reaped (its phase is not Stopped).
        match unsafe { libc::kill(self.pid as i32, signal) } {
            0 => Ok(()),
            _ => Err(format!("cannot signal the VM process {}: {}", self.pid, std::io::Error::last_os_error())),
        }
    }

    /// Sets the window size of the task's terminal (containerd's ResizePty).
    pub fn resize(&self, width: u32, height: u32) -> Result<(), String> {
        let master = self.terminal.as_ref().ok_or("the task has no terminal")?;
        terminal::resize(master, width, height).map_err(|e| format!("cannot resize the task's terminal: {e}"))
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().expect("phase lock").clone()
    }

    /// Waits for the task to stop: its status and when.
    pub fn wait(&self) -> (u32, Timestamp) {
        let mut phase = self.phase.lock().expect("phase lock");
        loop {
            if let Phase::Stopped { status, at } = &*phase {
                return (*status, at.clone());
            }
            phase = self.changed.wait(phase).expect("phase lock");
        }
    }

    fn stopped(&self, status: u32) {
        let mut phase = self.phase.lock().expect("phase lock");
        if !matches!(*phase, Phase::Stopped { .. }) {
            let at = containerd_shim::util::timestamp().unwrap_or_default();
            *phase = Phase::Stopped { status, at };
        }
        self.changed.notify_all();
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One of containerd's stdio FIFOs, for writing; opened read-write so that the open does not wait for a reader
/// (`ctr run -d` has none until `ctr task attach`).
fn open_stdio(path: &str) -> Result<Option<File>, TaskError> {
    if path.is_empty() {
        return Ok(None);
    }
    let path = path.strip_prefix("file://").unwrap_or(path);
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| TaskError::Stdio(path.into(), e))?;
    Ok(Some(file))
}
