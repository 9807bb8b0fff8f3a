//! The shim v2 task service containerd talks to over ttrpc: one shim per pod (or per container outside
//! Kubernetes), each of its containers a [`Task`].

use crate::bundle::{Config, SANDBOX_ID_ANNOTATION};
use crate::task::{Phase, Stdio3, Task, PID_FILE};
use containerd_shim::api;
use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::TASK_EXIT_EVENT_TOPIC;
use containerd_shim::protos::ttrpc::{self, context::Context, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why Exec is refused, as containerd shows it.
pub const NO_EXEC: &str = "kiln: exec is not supported: a Kiln VM runs one program, the container's own (it \
                           has no shell and no other processes); run another program in a container of its own";

#[derive(Clone)]
pub struct Service {
    namespace: String,
    exit: Arc<ExitSignal>,
    tasks: Arc<Mutex<HashMap<String, Arc<Task>>>>,
    publisher: Option<Arc<Mutex<RemotePublisher>>>,
}

fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            tasks: Arc::default(),
            publisher: None,
        }
    }

    /// Starts the shim that will serve this container: the pod's (one per sandbox, found by CRI's annotation), or
    /// the container's own. It lives in the container's network namespace, as a pod's sandbox process does: CRI
    /// gives the pod's other containers the sandbox task's (the shim's) `/proc/PID/ns/net`.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let config = Config::read(Path::new(".")).ok();
        if let Some(netns) = config.as_ref().and_then(Config::network_namespace) {
            crate::podnet::enter(netns)
                .map_err(|e| containerd_shim::Error::FailedPreconditionError(kiln_launch::chain(&e)))?;
        }
        let grouping =
            config.and_then(|c| c.annotations.get(SANDBOX_ID_ANNOTATION).cloned()).unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// containerd's cleanup after a shim died: the VM process (whose pid the bundle keeps) killed, the rootfs
    /// unmounted. Runs in the bundle.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        if let Some(pid) = std::fs::read_to_string(PID_FILE).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) with a pid read from the bundle; a process gone already makes it fail harmlessly.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        unmount(Path::new("rootfs"));
        let mut response = DeleteResponse::new();
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = MessageField::some(containerd_shim::util::timestamp()?);
        Ok(response)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service { publisher: Some(Arc::new(Mutex::new(publisher))), ..self.clone() }
    }
}

impl Service {
    fn task(&self, id: &str) -> TtrpcResult<Arc<Task>> {
        let tasks = self.tasks.lock().expect("tasks lock");
        tasks.get(id).cloned().ok_or_else(|| error(Code::NOT_FOUND, format!("container {id} not found")))
    }

    /// Tells containerd a task ended (CRI learns of it this way).
    fn publish_exit(&self, task: &Task, status: u32) {
        let Some(publisher) = &self.publisher else { return };
        let event = TaskExit {
            container_id: task.id.clone(),
            id: task.id.clone(),
            pid: task.pid,
            exit_status: status,
            exited_at: MessageField::some(containerd_shim::util::timestamp().unwrap_or_default()),
            ..Default::default()
        };
        let publisher = publisher.lock().expect("publisher lock");
        if let Err(e) = publisher.publish(Context::default(), TASK_EXIT_EVENT_TOPIC, &self.namespace, Box::new(event)) {
            log::warn!("cannot publish the exit of {}: {e}", task.id);
        }
    }
}

/// Mounts containerd's rootfs mounts (a snapshot, usually one overlay) at `target`.
fn mount_rootfs(mounts: &[containerd_shim::protos::types::mount::Mount], target: &Path) -> Result<(), String> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| format!("{}: {e}", target.display()))?;
    for m in mounts {
        let kind = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        containerd_shim::mount::mount_rootfs(kind, source, &m.options, target).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn unmount(target: &Path) {
    if let Some(target) = target.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(target), 0);
    }
}

impl containerd_shim::Task for Service {
    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(error(Code::UNIMPLEMENTED, "kiln: checkpoints are not supported"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let config = Config::read(&bundle).map_err(|e| error(Code::INVALID_ARGUMENT, kiln_launch::chain(&e)))?;
        let rootfs = config.rootfs(&bundle);
        mount_rootfs(&req.rootfs, &rootfs)
            .map_err(|e| error(Code::INTERNAL, format!("kiln: mounting the rootfs: {e}")))?;
        let stdio = Stdio3 { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
        let service = self.clone();
        let on_exit = move |task: &Arc<Task>, status| service.publish_exit(task, status);
        let mounted = !req.rootfs.is_empty();
        let task = match Task::create(&req.id, &bundle, &config, stdio, mounted, on_exit) {
            Ok(task) => task,
            Err(e) => {
                if !req.rootfs.is_empty() {
                    unmount(&rootfs);
                }
                return Err(error(Code::FAILED_PRECONDITION, format!("kiln: {}", kiln_launch::chain(&e))));
            }
        };
        let pid = task.pid;
        self.tasks.lock().expect("tasks lock").insert(req.id, task);
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        refuse_exec_id(&req.exec_id)?;
        let task = self.task(&req.id)?;
        task.start().map_err(|e| error(Code::FAILED_PRECONDITION, e))?;
        Ok(api::StartResponse { pid: task.pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        refuse_exec_id(&req.exec_id)?;
        let task = self.task(&req.id)?;
        let mut response = api::StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.display().to_string(),
            pid: task.pid,
            stdin: task.stdio.stdin.clone(),
            stdout: task.stdio.stdout.clone(),
            stderr: task.stdio.stderr.clone(),
            terminal: task.stdio.terminal,
            ..Default::default()
        };
        response.status = match task.phase() {
            Phase::Created => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Stopped { status, at } => {
                response.exit_status = status;
                response.exited_at = MessageField::some(at);
                api::Status::STOPPED
            }
        }
        .into();
        Ok(response)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        refuse_exec_id(&req.exec_id)?;
        self.task(&req.id)?.kill(req.signal).map_err(|e| error(Code::NOT_FOUND, e))?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        refuse_exec_id(&req.exec_id)?;
        let (exit_status, at) = self.task(&req.id)?.wait();
        Ok(api::WaitResponse { exit_status, exited_at: MessageField::some(at), ..Default::default() })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        refuse_exec_id(&req.exec_id)?;
        let task = self.task(&req.id)?;
        match task.phase() {
            Phase::Running => return Err(error(Code::FAILED_PRECONDITION, "kiln: the task is running: kill it first")),
            Phase::Created => {
                let _ = task.kill(libc::SIGKILL as u32);
            }
            Phase::Stopped { .. } => {}
        }
        let (exit_status, at) = task.wait();
        self.tasks.lock().expect("tasks lock").remove(&req.id);
        if task.mounted {
            unmount(&task.rootfs);
        }
        let _ = std::fs::remove_file(task.bundle.join(crate::task::SPEC_FILE));
        let _ = std::fs::remove_file(task.bundle.join(PID_FILE));
        Ok(api::DeleteResponse { pid: task.pid, exit_status, exited_at: MessageField::some(at), ..Default::default() })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let task = self.task(&req.id)?;
        let process = containerd_shim::protos::types::task::ProcessInfo { pid: task.pid, ..Default::default() };
        Ok(api::PidsResponse { processes: vec![process], ..Default::default() })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let task = self.task(&req.id)?;
        let gone = || error(Code::NOT_FOUND, format!("kiln: the task {} has no process", req.id));
        let metrics = match task.sandbox {
            true => None,
            false => crate::stats::metrics(task.pid, task.memory),
        }
        .ok_or_else(gone)?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| error(Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        Err(error(Code::UNIMPLEMENTED, NO_EXEC))
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The shim holds no writer of the stdin FIFO: the program's stdin ends when containerd's writer closes it.
        Ok(api::Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        refuse_exec_id(&req.exec_id)?;
        self.task(&req.id)?.resize(req.width, req.height).map_err(|e| error(Code::FAILED_PRECONDITION, e))?;
        Ok(api::Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.task(&req.id).map(|t| t.pid).unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.tasks.lock().expect("tasks lock").is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

/// Only the task's own process exists: a request about another (an exec's id) finds nothing.
fn refuse_exec_id(exec_id: &str) -> TtrpcResult<()> {
    match exec_id.is_empty() {
        true => Ok(()),
        false => Err(error(Code::NOT_FOUND, format!("kiln: no process {exec_id}: {NO_EXEC}"))),
    }
}
