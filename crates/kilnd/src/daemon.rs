//! kilnd's state: the store, and the instances that run on its threads. Each operation here is one route's work,
//! blocking (the server runs it off its event loop), with the route's errors.

use crate::api::{CreateRequest, Created, RestoreRequest, SnapshotRequest, SnapshotWritten};
use crate::error::ApiError;
use crate::health::Verdicts;
use crate::held::Held;
use crate::pool::Pool;
use kiln_image::instance::{
    create_with_default_name, default_name_base, new_id, now, process_start, tail_start, Instance, InstanceError,
    Instances, State, KEPT_SNAPSHOT,
};
use kiln_image::restart::RestartPolicy;
use kiln_image::Store;
use kiln_launch::chain;
use kiln_vmm::ready::{ReadyMachine, Shape};
use kiln_vmm::snapshot::SnapshotError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a SIGKILLed VM may take to end before kilnd says so.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Instances written (kept) or restored at once as kilnd stops and starts: each is mostly one thread's work (the
/// pause, the write; the VM's making), and the host has few cores.
const WORKERS: usize = 4;

pub struct Daemon {
    store: Store,
    /// This process, as records name it: pid and start time.
    process: (u32, u64),
    held: Mutex<HashMap<String, Arc<Held>>>,
    /// Instances being made (counted against the cap with those held).
    starting: Mutex<usize>,
    /// At most this many instances at once (`--max-instances`): a create beyond it is refused.
    max_instances: usize,
    verdicts: Arc<Verdicts>,
    /// Every new instance is jailed (`--jail-instances`).
    jail_all: bool,
    /// VMs made ahead of time (`--ready-vms`).
    ready: Option<Arc<Pool<ReadyMachine>>>,
}

/// What a new instance's record says besides its launch specification.
struct NewRecord<'a> {
    image: &'a str,
    name: Option<&'a str>,
    auto_remove: bool,
    restart: RestartPolicy,
    health: Option<kiln_image::health::HealthCheck>,
    service: Option<&'a str>,
    jailed: bool,
}

/// A place among the capped instances, given back when the instance is held or failed to start.
struct Slot<'a>(&'a Daemon);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut starting = self.0.starting.lock().unwrap_or_else(|e| e.into_inner());
        *starting = starting.saturating_sub(1);
    }
}

impl Daemon {
    pub fn new(store: Store, max_instances: usize) -> Result<Daemon, ApiError> {
        let pid = std::process::id();
        let start =
            process_start(pid).ok_or_else(|| ApiError::Internal("cannot read kilnd's own start time".into()))?;
        Ok(Daemon {
            store,
            process: (pid, start),
            held: Mutex::new(HashMap::new()),
            starting: Mutex::new(0),
            max_instances,
            verdicts: Arc::default(),
            jail_all: false,
            ready: None,
        })
    }

    /// With `yes`, every instance it creates is jailed (`--jail-instances`).
    pub fn jailing_all(self, yes: bool) -> Daemon {
        Daemon { jail_all: yes, ..self }
    }

    /// Starts a recorded instance's runs: on this process's threads, or jailed (`crate::jailed`).
    fn start_runs(
        self: &Arc<Self>,
        id: &str,
        spec: kiln_launch::LaunchSpec,
        jailed: bool,
    ) -> Result<Arc<Held>, ApiError> {
        match jailed {
            true => crate::jailed::start(self, id, spec, crate::jailed::kiln_executable()?),
            false => crate::runner::start(self, id, spec, None),
        }
    }

    /// Creates and restores take their VMs from `pool` when it has one of their shape.
    pub fn with_ready(self, pool: Arc<Pool<ReadyMachine>>) -> Daemon {
        Daemon { ready: Some(pool), ..self }
    }

    /// A VM of `shape` made ahead of time, if one is ready.
    pub fn ready_machine(&self, shape: Shape) -> Option<ReadyMachine> {
        let taken = self.ready.as_ref()?.take(shape);
        tracing::debug!(?shape, ready = taken.is_some(), "VM made ahead of time");
        taken
    }

    pub fn verdicts(&self) -> &Arc<Verdicts> {
        &self.verdicts
    }

    /// Whether the instance runs on this kilnd now (held, and not asked to stop).
    pub fn runs(&self, id: &str) -> bool {
        self.held(id).is_some_and(|h| !h.stopped())
    }

    /// A place for one more instance, or the refusal that names the cap.
    fn reserve(&self) -> Result<Slot<'_>, ApiError> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).len();
        let mut starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if held + *starting >= self.max_instances {
            return Err(ApiError::Conflict(format!(
                "kilnd runs {} instances, its cap (kiln daemon --max-instances {}): stop some, or start kilnd with a \
                 higher cap",
                held + *starting,
                self.max_instances
            )));
        }
        *starting += 1;
        Ok(Slot(self))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn process(&self) -> (u32, u64) {
        self.process
    }

    fn instances(&self) -> Instances<'_> {
        Instances::new(&self.store)
    }

    fn held(&self, id: &str) -> Option<Arc<Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// At kilnd's start: the instances an earlier kilnd kept as it stopped (`keep_all`) run on from their snapshots,
    /// a few at a time. Of those that died with it (a crash, `--stop-instances`, or one that could not be kept), those
    /// whose policy is `always`, and `unless-stopped` ones the user did not stop, start again (as Docker's daemon
    /// restarts its containers); the others are recorded as ended.
    pub fn adopt_records(self: &Arc<Self>) -> Result<(), ApiError> {
        let instances = self.instances();
        let (kept, gone): (Vec<Instance>, Vec<Instance>) = instances
            .records()?
            .into_iter()
            .filter(|r| r.kilnd && r.pid != Some(self.process.0))
            .partition(|r| r.kept && r.state == State::Running);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..WORKERS.min(kept.len()) {
                scope.spawn(|| {
                    while let Some(record) = kept.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        if let Err(why) = self.run_kept(record) {
                            failed.lock().unwrap_or_else(|e| e.into_inner()).push((record.clone(), why));
                        }
                    }
                });
            }
        });
        let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut fallen = Vec::new();
        for (record, why) in failed {
            let why = format!("kept by the last kilnd, but {why}");
            tracing::warn!("instance {}: {why}", record.name);
            note(&instances.log_path(&record.id), &format!("kiln: {why}"));
            let _ = std::fs::remove_file(instances.dir(&record.id).join(KEPT_SNAPSHOT));
            let _ = instances.update(&record.id, |i| i.kept = false);
            fallen.push((Instance { kept: false, ..record }, Some(why)));
        }
        for (record, why) in gone.into_iter().map(|r| (r, None)).chain(fallen) {
            let wanted = match record.restart {
                RestartPolicy::Always => true,
                RestartPolicy::UnlessStopped => !record.stopped,
                RestartPolicy::No | RestartPolicy::OnFailure { .. } => false,
            };
            if wanted {
                self.restart_recorded(&record);
            } else if record.state != State::Exited {
                let why = why.unwrap_or_else(|| "the kilnd that ran it ended".into());
                self.ended(&record.id, record.exit_code.unwrap_or(-1), why);
            }
        }
        Ok(())
    }

    /// Runs a kept instance on from its snapshot; why it could not be.
    fn run_kept(self: &Arc<Self>, record: &Instance) -> Result<(), String> {
        let path = self.instances().dir(&record.id).join(KEPT_SNAPSHOT);
        let snapshot = kiln_vmm::snapshot::Opened::open(&path).map_err(|e| format!("its snapshot: {}", chain(&e)))?;
        let spec = serde_json::from_value::<kiln_launch::LaunchSpec>(snapshot.launch().clone())
            .map_err(|e| format!("its snapshot's launch specification: {e}"))?;
        let held = crate::runner::start(self, &record.id, spec, Some(snapshot)).map_err(|e| e.to_string())?;
        self.hold(&record.id, held);
        Ok(())
    }

    /// Starts a recorded instance again, from its recorded launch specification.
    fn restart_recorded(self: &Arc<Self>, record: &Instance) {
        let spec = record.launch.clone().and_then(|v| serde_json::from_value::<kiln_launch::LaunchSpec>(v).ok());
        let Some(spec) = spec else {
            self.ended(&record.id, -1, "cannot restart it: its record has no launch specification".into());
            return;
        };
        let (pid, pid_start) = self.process;
        let updated = self.instances().update(&record.id, |i| {
            i.restarts += 1;
            (i.state, i.pid, i.pid_start, i.stopped) = (State::Created, Some(pid), Some(pid_start), false);
        });
        if updated.is_err() {
            return;
        }
        match self.start_runs(&record.id, spec, record.jailed) {
            Ok(held) => self.hold(&record.id, held),
            Err(e) => self.ended(&record.id, -1, format!("cannot restart it with kilnd: {e}")),
        }
    }

    /// Keeps `held` for the instance, unless it has ended already (a program that ended at once).
    fn hold(&self, id: &str, held: Arc<Held>) {
        let mut all = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if self.instances().load(id).is_ok_and(|i| i.state != State::Exited) {
            all.insert(id.to_string(), held);
        }
    }

    /// The launch specification a create request asks for (its image resolved now: a tag moved later changes
    /// nothing).
    fn resolve(&self, request: &CreateRequest) -> Result<kiln_launch::LaunchSpec, ApiError> {
        let overrides = request.overrides().map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let _reading = self.store.read_lock().map_err(|e| ApiError::Internal(chain(&e)))?;
        kiln_launch::resolve(Some(&self.store), &request.image, &overrides).map_err(|e| ApiError::BadRequest(chain(&e)))
    }

    /// Whether a service's template would start (its fields and image), without starting it.
    pub fn check_template(&self, request: &CreateRequest) -> Result<(), ApiError> {
        self.resolve(request).map(drop)
    }

    /// `POST /instances`.
    pub fn create(self: &Arc<Self>, request: CreateRequest) -> Result<Created, ApiError> {
        self.create_instance(request, None)
    }

    /// Creates and starts an instance, a replica of `service` if one is named.
    pub fn create_instance(
        self: &Arc<Self>,
        request: CreateRequest,
        service: Option<&str>,
    ) -> Result<Created, ApiError> {
        let restart = request.restart_policy().map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let jailed = request.jail || self.jail_all;
        if jailed {
            crate::jailed::kiln_executable()?;
        }
        let spec = self.resolve(&request)?;
        if let Some(check) = &request.health {
            crate::health::published_for(check, &spec).map_err(|why| ApiError::BadRequest(format!("health: {why}")))?;
        }
        let _slot = self.reserve()?;
        let fields = NewRecord {
            image: &request.image,
            name: request.name.as_deref(),
            auto_remove: request.auto_remove,
            restart,
            health: request.health.clone(),
            service,
            jailed,
        };
        let (id, name) = self.record_new(&spec, &fields)?;
        // Held before it starts, so that a stop that comes as soon as it runs finds it.
        match self.start_runs(&id, spec, jailed) {
            Ok(held) => {
                self.hold(&id, held);
                Ok(Created { id, name })
            }
            Err(e) => {
                let _ = self.instances().remove(&id);
                Err(e)
            }
        }
    }

    /// Records a new instance of `spec`: its id and name.
    fn record_new(&self, spec: &kiln_launch::LaunchSpec, fields: &NewRecord<'_>) -> Result<(String, String), ApiError> {
        let instances = self.instances();
        let id = new_id();
        let ports: Vec<String> = spec.network.published().iter().map(ToString::to_string).collect();
        let launch = serde_json::to_value(spec).map_err(|e| ApiError::Internal(e.to_string()))?;
        let (pid, pid_start) = self.process;
        let create = |name: &str| {
            let record = Instance {
                image_id: spec.image_id().cloned(),
                auto_remove: fields.auto_remove,
                restart: fields.restart,
                health_check: fields.health.clone(),
                service: fields.service.map(str::to_string),
                launch: Some(launch.clone()),
                jailed: fields.jailed,
                kilnd: true,
                // kilnd's: a record whose kilnd is gone is seen as ended.
                pid: Some(pid),
                pid_start: Some(pid_start),
                ..Instance::created(&id, name, fields.image, spec.argv.clone(), ports.clone())
            };
            instances.create(&record)
        };
        match fields.name {
            Some(name) => create(name)?,
            None => create_with_default_name(&default_name_base(&spec.name), &id, create)?,
        }
        let name = instances.load(&id)?.name;
        Ok((id, name))
    }

    /// `POST /instances/{id}/snapshot`: the instance paused and written to the request's file; it runs on, or ends
    /// there for good (recorded `snapshotted to FILE`, stopped: no restart).
    pub fn snapshot(&self, what: &str, request: &SnapshotRequest) -> Result<SnapshotWritten, ApiError> {
        if !request.path.is_absolute() {
            return Err(ApiError::BadRequest(format!(
                "path: {} is not absolute (kilnd's working directory is not the client's)",
                request.path.display()
            )));
        }
        let (instance, held) = self.running(what)?;
        if instance.jailed {
            return Err(ApiError::Conflict(format!(
                "instance {} is jailed: it runs in a process of its own, which kilnd does not snapshot",
                instance.name
            )));
        }
        let not_running = || ApiError::Conflict(format!("instance {} is not running", instance.name));
        let held = held.ok_or_else(not_running)?;
        let written = match held.snapshot(&request.path, request.leave_running).ok_or_else(not_running)? {
            Ok(written) => written,
            Err(e @ (SnapshotError::Unsupported(_) | SnapshotError::NotQuiescent(_))) => {
                return Err(ApiError::Conflict(format!("instance {}: {}", instance.name, chain(&e))))
            }
            Err(e) => return Err(ApiError::Internal(format!("instance {}: {}", instance.name, chain(&e)))),
        };
        if !request.leave_running {
            self.mark_stopped(&instance.id)?;
            wait_killed(&held, &instance)?;
        }
        Ok(SnapshotWritten { memory_bytes: written.memory_bytes, file_len: written.file_len })
    }

    /// `POST /instances/restore`: a new instance, running on from a snapshot file.
    pub fn restore(self: &Arc<Self>, request: &RestoreRequest) -> Result<Created, ApiError> {
        let path = &request.path;
        if !path.is_absolute() {
            return Err(ApiError::BadRequest(format!(
                "path: {} is not absolute (kilnd's working directory is not the client's)",
                path.display()
            )));
        }
        let snapshot = kiln_vmm::snapshot::Opened::open(path).map_err(|e| ApiError::BadRequest(chain(&e)))?;
        let spec = serde_json::from_value::<kiln_launch::LaunchSpec>(snapshot.launch().clone()).map_err(|_| {
            ApiError::BadRequest(format!(
                "{}: the snapshot does not say how to launch its instance (not written by kiln snapshot)",
                path.display()
            ))
        })?;
        let _slot = self.reserve()?;
        let image = path.display().to_string();
        let fields = NewRecord {
            image: &image,
            name: request.name.as_deref(),
            auto_remove: request.auto_remove,
            restart: RestartPolicy::No,
            health: None,
            service: None,
            jailed: false,
        };
        let (id, name) = self.record_new(&spec, &fields)?;
        match crate::runner::start(self, &id, spec, Some(snapshot)) {
            Ok(held) => {
                self.hold(&id, held);
                Ok(Created { id, name })
            }
            Err(e) => {
                let _ = self.instances().remove(&id);
                Err(e)
            }
        }
    }

    /// Called by the instance's thread when a run has returned: records it restarting if its policy says so (and
    /// returns true), else ended.
    pub fn after_run(&self, id: &str, code: i32, reason: &str, stopped: bool) -> bool {
        let mut restart = false;
        let recorded = self.instances().update(id, |i| {
            restart = i.restart.restarts(code, i.restarts, stopped || i.stopped);
            if restart {
                i.state = State::Restarting;
                i.restarts += 1;
                (i.exit_code, i.reason, i.finished_ms) = (Some(code), Some(reason.to_string()), Some(now()));
            }
        });
        match recorded {
            Ok(_) if restart => true,
            _ => {
                self.ended(id, code, reason.to_string());
                false
            }
        }
    }

    /// Records that the instance ended for good.
    pub fn ended(&self, id: &str, code: i32, reason: String) {
        let instances = self.instances();
        let recorded = instances.update(id, |i| {
            i.state = State::Exited;
            (i.exit_code, i.reason, i.finished_ms) = (Some(code), Some(reason), Some(now()));
        });
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        match recorded {
            Ok(record) if record.auto_remove => {
                let _ = instances.remove(id);
            }
            Ok(_) | Err(InstanceError::NoSuch(_)) => {}
            Err(e) => tracing::error!("instance {id}: cannot record its end: {}", chain(&e)),
        }
    }

    /// `GET /instances`: running ones, or all.
    pub fn list(&self, all: bool) -> Result<Vec<Instance>, ApiError> {
        Ok(self.instances().list()?.into_iter().filter(|i| all || i.state != State::Exited).collect())
    }

    /// `GET /instances/{id}`: by name, id or a unique prefix of the id.
    pub fn find(&self, what: &str) -> Result<Instance, ApiError> {
        Ok(self.instances().find(what)?)
    }

    /// `GET /instances/{id}/logs`: the whole log, or its last `tail` lines, from byte `since` on.
    pub fn logs(&self, what: &str, tail: Option<usize>, since: usize) -> Result<Vec<u8>, ApiError> {
        let instance = self.find(what)?;
        let path = self.instances().log_path(&instance.id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ApiError::Internal(format!("cannot read {}: {e}", path.display()))),
        };
        let bytes = bytes.get(since..).unwrap_or_default();
        let start = tail.map_or(0, |n| tail_start(bytes, n));
        Ok(bytes[start..].to_vec())
    }

    /// The instance, if this kilnd runs it; a conflict if it runs in a process of its own (`kiln run -d`).
    fn running(&self, what: &str) -> Result<(Instance, Option<Arc<Held>>), ApiError> {
        let instance = self.find(what)?;
        if let Some(held) = self.held(&instance.id) {
            return Ok((instance, Some(held)));
        }
        if !instance.kilnd && instance.state != State::Exited && instance.vmm_alive() {
            return Err(ApiError::Conflict(format!(
                "instance {} runs in a process of its own (pid {}), not in kilnd; stop it with kiln stop {}",
                instance.name,
                instance.pid.unwrap_or(0),
                instance.name
            )));
        }
        Ok((instance, None))
    }

    /// `POST /instances/{id}/stop`: SIGTERM to the program, SIGKILL after `time` if it still runs.
    pub fn stop(&self, what: &str, time: Duration) -> Result<(), ApiError> {
        let (instance, held) = self.running(what)?;
        let Some(held) = held else { return Ok(()) };
        self.mark_stopped(&instance.id)?;
        held.stop();
        if !held.wait_ended(time) {
            held.kill(format!("killed by kiln stop: still running {} s after SIGTERM", time.as_secs()));
            wait_killed(&held, &instance)?;
        }
        Ok(())
    }

    /// `POST /instances/{id}/kill`.
    pub fn kill(&self, what: &str) -> Result<(), ApiError> {
        let (instance, held) = self.running(what)?;
        let Some(held) = held else {
            return Err(ApiError::Conflict(format!("instance {} is not running", instance.name)));
        };
        self.mark_stopped(&instance.id)?;
        held.kill("killed by kiln kill (SIGKILL)".into());
        wait_killed(&held, &instance)
    }

    /// `DELETE /instances/{id}`: a running one only with `force` (killed first).
    pub fn remove(&self, what: &str, force: bool) -> Result<(), ApiError> {
        let instances = self.instances();
        let (instance, held) = match self.running(what) {
            Ok(found) => found,
            // A damaged record goes by its exact id.
            Err(ApiError::Internal(_)) if instances.dir(what).join("record.json").exists() => {
                return Ok(instances.remove(what)?);
            }
            Err(e) => return Err(e),
        };
        if let Some(held) = held {
            if !force {
                return Err(ApiError::Conflict(format!(
                    "instance {} is running; stop it first, or remove it with force=true",
                    instance.name
                )));
            }
            held.kill("killed by kiln rm --force".into());
            wait_killed(&held, &instance)?;
        }
        match instances.remove(&instance.id) {
            Ok(()) => Ok(()),
            // Its own auto_remove removed it meanwhile.
            Err(_) if !instances.dir(&instance.id).exists() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The user stopped it: `unless-stopped` leaves it stopped when kilnd starts again.
    fn mark_stopped(&self, id: &str) -> Result<(), ApiError> {
        self.instances().update(id, |i| i.stopped = true)?;
        Ok(())
    }

    /// Keeps every instance this kilnd runs for the next kilnd (its shutdown, unless `--stop-instances`): each is
    /// paused at its quiescent point and written to `kept.snap` in its folder, and its VM ends there; its record stays
    /// running, marked `kept`. Those that cannot be kept (a debugger attached, waiting to restart) are left
    /// for [`Daemon::stop_all`]. How many were kept.
    pub fn keep_all(&self) -> usize {
        let held: Vec<(String, Arc<Held>)> =
            self.held.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let kept = std::sync::atomic::AtomicUsize::new(0);
        let instances = self.instances();
        std::thread::scope(|scope| {
            for _ in 0..WORKERS.min(held.len()) {
                scope.spawn(|| {
                    while let Some((id, held)) = held.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        let started = std::time::Instant::now();
                        match held.keep(&instances.dir(id).join(KEPT_SNAPSHOT)) {
                            Ok(written) if held.wait_ended(KILL_WAIT) => {
                                kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let took = started.elapsed();
                                tracing::debug!(id, ?took, bytes = written.memory_bytes, "kept");
                            }
                            Ok(_) => tracing::error!("instance {id}: written, but its VM did not end"),
                            Err(why) => tracing::warn!("instance {id} cannot be kept, so it is stopped: {why}"),
                        }
                    }
                });
            }
        });
        let kept = kept.into_inner();
        self.held.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| instances.load(id).is_ok_and(|i| !i.kept));
        kept
    }

    /// Stops every instance this kilnd runs (its shutdown), each with its own stop timeout, all at once.
    pub fn stop_all(&self) {
        let held: Vec<(String, Arc<Held>)> =
            self.held.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (_, held) in &held {
            held.stop();
        }
        for (id, held) in held {
            if !held.wait_ended(Duration::from_secs(u64::from(kiln_launch::DEFAULT_STOP_TIMEOUT))) {
                held.kill("killed as kilnd stopped: still running after SIGTERM".into());
                if !held.wait_ended(KILL_WAIT) {
                    tracing::error!("instance {id} did not end on SIGKILL");
                }
            }
        }
    }
}

/// A line of kilnd's in the instance's log.
fn note(log: &std::path::Path, line: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(file, "{line}");
    }
}

fn wait_killed(held: &Held, instance: &Instance) -> Result<(), ApiError> {
    match held.wait_ended(KILL_WAIT) {
        true => Ok(()),
        false => Err(ApiError::Internal(format!("instance {} did not end within 10 s of SIGKILL", instance.name))),
    }
}
