//! Services: a count of replicas of one version behind published ports that kilnd balances, updated by replacing
//! replicas a batch at a time and rolled back when the new ones fail. Each service has a controller thread
//! (`controller.rs`), a balancer task per published port on kilnd's event loop (`balancer.rs`), and a file in
//! `$KILN_HOME/services/` with its desired state (`spec.rs`), from which a kilnd restart brings it back.

pub mod balancer;
pub mod controller;
pub mod spec;

use crate::daemon::Daemon;
use crate::error::ApiError;
use balancer::Pool;
use controller::Shared;
use kiln_image::instance::{now, Instances};
use spec::{front_ports, Phase, ServiceRecord, ServiceRequest, ServiceStatus, ServiceUpdate};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The directory of services' files in the Kiln home.
const DIR: &str = "services";
/// How long `DELETE /services/{name}` waits for its replicas to go.
const REMOVE_WAIT: Duration = Duration::from_secs(120);

/// A service kilnd runs.
struct Running {
    shared: Arc<Shared>,
    controller: Mutex<Option<std::thread::JoinHandle<Vec<String>>>>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

pub struct Services {
    daemon: Arc<Daemon>,
    runtime: tokio::runtime::Handle,
    dir: PathBuf,
    all: Mutex<HashMap<String, Arc<Running>>>,
    /// Creates and removes one at a time (a name and its ports are checked, then taken).
    changing: Mutex<()>,
}

impl Services {
    pub fn new(daemon: Arc<Daemon>, runtime: tokio::runtime::Handle) -> Services {
        let dir = daemon.store().root().join(DIR);
        Services { daemon, runtime, dir, all: Mutex::new(HashMap::new()), changing: Mutex::new(()) }
    }

    fn all(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Result<Arc<Running>, ApiError> {
        self.all().get(name).cloned().ok_or_else(|| ApiError::NotFound(format!("no such service: {name}")))
    }

    /// At kilnd's start: every service in the Kiln home again. Its replicas the kilnd before kept run on already (its
    /// controller takes them as they are); the records of those that ended with it are removed, and the controller
    /// starts new ones in their place.
    pub fn restore(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for path in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let record = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<ServiceRecord>(&bytes).map_err(|e| e.to_string()));
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!("service file {} is damaged, left alone: {e}", path.display());
                    continue;
                }
            };
            self.remove_replica_records(&record.name);
            if let Err(e) = self.launch(record.clone()) {
                tracing::error!("cannot bring back service {}: {e}", record.name);
            } else {
                tracing::info!(
                    "service {} is back: {} replicas of generation {}",
                    record.name,
                    record.replicas,
                    record.current.generation
                );
            }
        }
    }

    /// Records of replicas of `service` that no kilnd runs.
    fn remove_replica_records(&self, service: &str) {
        let instances = Instances::new(self.daemon.store());
        for record in instances.records().unwrap_or_default() {
            if record.service.as_deref() == Some(service) && !self.daemon.runs(&record.id) {
                let _ = instances.remove(&record.id);
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// `POST /services`.
    pub fn create(&self, request: ServiceRequest) -> Result<ServiceStatus, ApiError> {
        let record = ServiceRecord::from_request(&request, now()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.daemon.check_template(
            &record
                .replica_request(&record.current.template, "check", &[])
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        )?;
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        if self.all().contains_key(&record.name) || self.path(&record.name).exists() {
            return Err(ApiError::Conflict(format!("service {} exists; update it, or remove it first", record.name)));
        }
        self.launch(record.clone())?;
        save(&self.path(&record.name), &record).map_err(ApiError::Internal)?;
        self.status(&record.name)
    }

    /// Listens on the service's ports and starts its controller.
    fn launch(&self, record: ServiceRecord) -> Result<(), ApiError> {
        let fronts = front_ports(&record.publish).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut bound = Vec::new();
        for f in &fronts {
            let address = std::net::SocketAddr::new(f.host_ip, f.host_port);
            let listener =
                std::net::TcpListener::bind(address).and_then(|l| l.set_nonblocking(true).map(|()| l)).map_err(
                    |e| ApiError::Conflict(format!("cannot publish {address} for service {}: {e}", record.name)),
                )?;
            bound.push(listener);
        }
        let pool = Arc::new(Pool::default());
        let mut listeners = Vec::new();
        {
            let _entered = self.runtime.enter();
            for (index, listener) in bound.into_iter().enumerate() {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|e| ApiError::Internal(format!("cannot serve a service port: {e}")))?;
                listeners.push(self.runtime.spawn(balancer::serve(listener, pool.clone(), index)));
            }
        }
        let path = self.path(&record.name);
        let name = record.name.clone();
        let shared = Arc::new(Shared {
            record: Mutex::new(record),
            wake: Condvar::new(),
            ending: Mutex::new(false),
            pool,
            replicas: Mutex::new(Vec::new()),
            leaving: Arc::new(AtomicUsize::new(0)),
            save: Box::new(move |record| {
                if let Err(e) = save(&path, record) {
                    tracing::error!("{e}");
                }
            }),
        });
        let (daemon, shared2) = (self.daemon.clone(), shared.clone());
        let controller = std::thread::Builder::new()
            .name(format!("service-{}", &name[..name.len().min(7)]))
            .spawn(move || controller::run(daemon, shared2))
            .map_err(|e| ApiError::Internal(format!("cannot start the service's controller: {e}")))?;
        let running = Running { shared, controller: Mutex::new(Some(controller)), listeners };
        self.all().insert(name, Arc::new(running));
        Ok(())
    }

    /// `GET /services`.
    pub fn list(&self) -> Vec<ServiceStatus> {
        let mut names: Vec<String> = self.all().keys().cloned().collect();
        names.sort();
        names.iter().filter_map(|n| self.status(n).ok()).collect()
    }

    /// `GET /services/{name}`.
    pub fn status(&self, name: &str) -> Result<ServiceStatus, ApiError> {
        let running = self.get(name)?;
        let record = running.shared.record().clone();
        let replicas = running.shared.replicas.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ready = replicas.iter().filter(|r| r.ready && r.generation == record.current.generation).count() as u32;
        Ok(ServiceStatus { record, ready, running: replicas })
    }

    /// `POST /services/{name}/update`: a new version rolls out; a count or a policy applies at once.
    pub fn update(&self, name: &str, update: ServiceUpdate) -> Result<ServiceStatus, ApiError> {
        let running = self.get(name)?;
        {
            let mut record = running.shared.record();
            let mut changed = record.clone();
            let template = changed.apply(&update).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if let Some(template) = template {
                if matches!(record.phase, Phase::Updating | Phase::RollingBack) {
                    return Err(ApiError::Conflict(format!(
                        "service {name} is {}: wait for it to end (or roll back) before a new version",
                        if record.phase == Phase::Updating { "updating" } else { "rolling back" }
                    )));
                }
                let request = changed
                    .replica_request(&template, "check", &[])
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                self.daemon.check_template(&request)?;
                changed.roll_to(template);
            }
            save(&self.path(name), &changed).map_err(ApiError::Internal)?;
            *record = changed;
        }
        running.shared.wake.notify_all();
        self.status(name)
    }

    /// `POST /services/{name}/rollback`: the previous version again.
    pub fn rollback(&self, name: &str) -> Result<ServiceStatus, ApiError> {
        let running = self.get(name)?;
        {
            let mut record = running.shared.record();
            let mut changed = record.clone();
            let back_to = changed.previous.as_ref().map(|p| p.generation);
            let Some(back_to) = back_to else {
                return Err(ApiError::Conflict(format!("service {name} has no previous version to roll back to")));
            };
            changed.roll_back(format!("rolling back to generation {back_to} (asked for)"));
            save(&self.path(name), &changed).map_err(ApiError::Internal)?;
            *record = changed;
        }
        running.shared.wake.notify_all();
        self.status(name)
    }

    /// `DELETE /services/{name}`: no new connections, every replica drained, stopped and removed, the file gone.
    pub fn remove(&self, name: &str) -> Result<(), ApiError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let running = self.get(name)?;
        for listener in &running.listeners {
            listener.abort();
        }
        let left = self.end_controller(&running);
        let stop_timeout = running.shared.record().current.template.stop_timeout;
        for id in left {
            let backend = Arc::new(balancer::Backend::new(id.clone(), Vec::new()));
            controller::retire(&self.daemon, &running.shared, id, backend, stop_timeout);
        }
        let start = Instant::now();
        while running.shared.leaving.load(SeqCst) > 0 {
            if start.elapsed() > REMOVE_WAIT {
                return Err(ApiError::Internal(format!(
                    "service {name}'s replicas did not all stop within {REMOVE_WAIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.all().remove(name);
        self.remove_replica_records(name);
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::Internal(format!("cannot remove {}: {e}", self.path(name).display()))),
        }
    }

    /// Ends the controller; the replicas it had.
    fn end_controller(&self, running: &Running) -> Vec<String> {
        running.shared.end();
        let thread = running.controller.lock().unwrap_or_else(|e| e.into_inner()).take();
        thread.and_then(|t| t.join().ok()).unwrap_or_default()
    }

    /// kilnd stops: the controllers end (nothing is replaced as kilnd stops the replicas with its other instances);
    /// the services' files stay for the next kilnd.
    pub fn shutdown(&self) {
        let all: Vec<Arc<Running>> = self.all().values().cloned().collect();
        for running in all {
            for listener in &running.listeners {
                listener.abort();
            }
            self.end_controller(&running);
        }
    }
}

fn save(path: &std::path::Path, record: &ServiceRecord) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    kiln_image::store::write_atomically(path, &bytes)
        .map_err(|e| format!("cannot save service {}: {}", record.name, kiln_launch::chain(&e)))
}
