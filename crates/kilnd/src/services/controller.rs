//! A service's controller: a thread that brings the replicas to what the service's record asks for, a step every
//! [`TICK`]. A step reads each replica's state (its VM runs; its check's verdict), retires the failed ones, and then
//! starts and retires replicas within the update policy: at most `replicas + max_surge` replicas, at least
//! `replicas - max_unavailable` ready ones, so that a new replica is healthy before an old one goes. A replica of
//! the version being rolled out that fails rolls the service back. A retired replica is drained first (the balancer
//! gives it no new connection), and stopped when its connections are over. Replicas are never changed, only replaced.

use super::balancer::{Backend, Pool};
use super::spec::{Phase, ServiceRecord};
use crate::daemon::Daemon;
use kiln_image::health::Health;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often the controller looks at its replicas.
const TICK: Duration = Duration::from_millis(50);
/// At most this many replicas are started per step, so that those started first are seen ready (and take
/// connections) while a large count is still being started.
const STARTS_PER_STEP: usize = 8;
/// The longest a retired replica's connections may go on before it is stopped under them.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// What the controller shares with the API's routes.
pub struct Shared {
    pub record: Mutex<ServiceRecord>,
    /// Wakes the controller (an update) and tells it to end.
    pub wake: Condvar,
    pub ending: Mutex<bool>,
    pub pool: Arc<Pool>,
    /// The replicas as the last step saw them, for `GET /services/{name}`.
    pub replicas: Mutex<Vec<super::spec::ReplicaStatus>>,
    /// Retired replicas not yet stopped and removed.
    pub leaving: Arc<AtomicUsize>,
    /// Saves the record (the service's file).
    pub save: Box<dyn Fn(&ServiceRecord) + Send + Sync>,
}

impl Shared {
    pub fn record(&self) -> std::sync::MutexGuard<'_, ServiceRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ending(&self) -> bool {
        *self.ending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the controller at its next step.
    pub fn end(&self) {
        *self.ending.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits a tick, or less if woken.
    fn pause(&self) {
        let ending = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        if !*ending {
            let _ = self.wake.wait_timeout(ending, TICK);
        }
    }
}

struct Replica {
    id: String,
    name: String,
    generation: u64,
    backend: Arc<Backend>,
    started: Instant,
    /// It has been healthy once.
    proven: bool,
}

/// Runs the controller until [`Shared::end`]; returns the replicas it still has (the caller stops them or leaves
/// them to kilnd's shutdown). It starts with the replicas of the service that run on this kilnd already (those the
/// last kilnd kept), each given to the balancer on its recorded loopback ports.
pub fn run(daemon: Arc<Daemon>, shared: Arc<Shared>) -> Vec<String> {
    let replicas = adopt(&daemon, &shared);
    let mut control = Controller { daemon, shared, replicas, failures: 0, hold_off: Instant::now() };
    while !control.shared.ending() {
        control.step();
        control.shared.pause();
    }
    control.replicas.into_iter().map(|r| r.id).collect()
}

/// The service's replicas that run on this kilnd, from their records: a replica is named `SERVICE.GENERATION.RANDOM`
/// and publishes its loopback ports in the order of the service's ports.
fn adopt(daemon: &Daemon, shared: &Shared) -> Vec<Replica> {
    let service = shared.record().name.clone();
    let records = kiln_image::instance::Instances::new(daemon.store()).records().unwrap_or_default();
    let mut replicas = Vec::new();
    for record in records.into_iter().filter(|r| r.service.as_deref() == Some(&service) && daemon.runs(&r.id)) {
        let generation = record.name.split('.').rev().nth(1).and_then(|g| g.parse::<u64>().ok());
        let ports: Vec<u16> = record
            .ports
            .iter()
            .filter_map(|p| p.parse::<kiln_usernet::PortForward>().ok())
            .map(|f| f.host_port)
            .collect();
        let Some(generation) = generation else { continue };
        let backend = Arc::new(Backend::new(record.id.clone(), ports));
        shared.pool.add(backend.clone());
        tracing::info!("service {service}: replica {} runs on (kept by the last kilnd)", record.name);
        replicas.push(Replica {
            id: record.id,
            name: record.name,
            generation,
            backend,
            started: Instant::now(),
            proven: true,
        });
    }
    replicas
}

struct Controller {
    daemon: Arc<Daemon>,
    shared: Arc<Shared>,
    replicas: Vec<Replica>,
    /// Failures in a row, for the back-off of replacements.
    failures: u32,
    hold_off: Instant,
}

impl Controller {
    fn step(&mut self) {
        let record = self.shared.record().clone();
        let failed = self.observe(&record);
        if !failed.is_empty() {
            self.failures += 1;
            self.hold_off = Instant::now() + crate::runner::backoff(self.failures.saturating_sub(1));
        }
        let rolling_out = record.phase == Phase::Updating;
        if let Some((name, why)) = failed
            .iter()
            .find(|(_, generation, _)| *generation == record.current.generation && rolling_out)
            .map(|(n, _, w)| (n.clone(), w.clone()))
        {
            self.roll_back(&record, &name, &why);
            return;
        }
        self.converge(&record);
        self.publish_status();
    }

    /// Reads every replica's state, tells the balancer which are ready, and retires the failed: their names,
    /// generations and why.
    fn observe(&mut self, record: &ServiceRecord) -> Vec<(String, u64, String)> {
        let monitor = Duration::from_millis(record.update.monitor_ms);
        let mut failed = Vec::new();
        let mut kept = Vec::new();
        for mut replica in std::mem::take(&mut self.replicas) {
            let runs = self.daemon.runs(&replica.id);
            let verdict = match record.health {
                Some(_) => self.daemon.verdicts().get(&replica.id),
                None => runs.then_some(Health::Healthy),
            };
            let ready = runs && verdict == Some(Health::Healthy);
            replica.proven |= ready;
            self.shared.pool.set_ready(&replica.backend, ready);
            let why = if !runs {
                Some(self.ended_why(&replica.id))
            } else if verdict == Some(Health::Unhealthy) {
                Some("its health check failed".to_string())
            } else if !replica.proven && replica.started.elapsed() > monitor {
                Some(format!("not healthy within {} ms", monitor.as_millis()))
            } else {
                None
            };
            match why {
                Some(why) => {
                    tracing::warn!("service {}: replica {} failed: {why}", record.name, replica.name);
                    failed.push((replica.name.clone(), replica.generation, why));
                    self.retire(replica, record);
                }
                None => kept.push(replica),
            }
        }
        self.replicas = kept;
        failed
    }

    fn ended_why(&self, id: &str) -> String {
        match self.daemon.find(id) {
            Ok(instance) => format!(
                "it ended ({}, exit code {})",
                instance.reason.unwrap_or_else(|| "no reason recorded".into()),
                instance.exit_code.map_or("none".into(), |c| c.to_string())
            ),
            Err(_) => "it ended".into(),
        }
    }

    /// A replica of the version being rolled out failed: back to the version before.
    fn roll_back(&mut self, record: &ServiceRecord, name: &str, why: &str) {
        let mut current = self.shared.record();
        if current.phase != Phase::Updating || current.current.generation != record.current.generation {
            return;
        }
        let failed = current.current.generation;
        let back_to = current.previous.as_ref().map_or(0, |p| p.generation);
        let message = format!("generation {failed} failed: replica {name}: {why}; rolled back to generation {back_to}");
        tracing::warn!("service {}: {message}", current.name);
        if current.roll_back(message) {
            (self.shared.save)(&current);
        }
        // The next steps replace what runs the failed version; a failure of the old one is no reason to wait.
        self.failures = 0;
        self.hold_off = Instant::now();
    }

    /// Starts and retires replicas towards the record, within the update policy.
    fn converge(&mut self, record: &ServiceRecord) {
        let want = record.replicas as usize;
        let generation = record.current.generation;
        let policy = record.update;
        // Retire what is not needed: old replicas that do not serve, and current ones above the count.
        let unready_old: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].generation != generation && !self.replicas[i].backend.ready())
            .collect();
        self.retire_indices(unready_old, record);
        let current = self.replicas.iter().filter(|r| r.generation == generation).count();
        if current > want {
            // The newest not-ready ones first, then the newest.
            let mut surplus: Vec<usize> =
                (0..self.replicas.len()).filter(|&i| self.replicas[i].generation == generation).collect();
            surplus.sort_by_key(|&i| (self.replicas[i].backend.ready(), std::cmp::Reverse(self.replicas[i].started)));
            surplus.truncate(current - want);
            self.retire_indices(surplus, record);
        }
        // Old replicas go while enough ready ones stay.
        let ready = self.replicas.iter().filter(|r| r.backend.ready()).count();
        let min_ready = want.saturating_sub(policy.max_unavailable as usize);
        let current = self.replicas.iter().filter(|r| r.generation == generation).count();
        let old: Vec<usize> = (0..self.replicas.len()).filter(|&i| self.replicas[i].generation != generation).collect();
        let may_go = ready.saturating_sub(min_ready).min(old.len());
        self.retire_indices(old.into_iter().take(may_go).collect(), record);
        // New ones come while the total stays within the surge.
        let total = self.replicas.len();
        let room = (want + policy.max_surge as usize).saturating_sub(total);
        let mut to_start = want.saturating_sub(current).min(room).min(STARTS_PER_STEP);
        if record.phase == Phase::Steady || record.phase == Phase::RolledBack {
            // Outside an update, a replacement waits out the back-off of failures in a row.
            if Instant::now() < self.hold_off {
                to_start = 0;
            }
        }
        for _ in 0..to_start {
            if self.shared.ending() || !self.start(record) {
                break;
            }
        }
        let all_in = self.replicas.len() == want
            && self.replicas.iter().all(|r| r.generation == generation && r.backend.ready());
        if all_in {
            self.failures = 0;
            self.settled(record);
        }
    }

    /// Every replica runs the current version and is ready: an update or rollback is over.
    fn settled(&self, seen: &ServiceRecord) {
        let mut record = self.shared.record();
        if record.current.generation != seen.current.generation {
            return;
        }
        let (phase, message) = match record.phase {
            Phase::Updating => (Phase::Steady, format!("updated to generation {}", record.current.generation)),
            Phase::RollingBack => match record.message.as_deref() {
                Some(m) if m.starts_with("generation ") => (Phase::RolledBack, m.to_string()),
                _ => (Phase::Steady, format!("rolled back to generation {}", record.current.generation)),
            },
            Phase::Steady | Phase::RolledBack => return,
        };
        record.phase = phase;
        record.message = Some(message);
        (self.shared.save)(&record);
    }

    /// Starts one replica of the current version; false if it could not be (said in the log and the record).
    fn start(&mut self, record: &ServiceRecord) -> bool {
        let ports = match free_ports(record.publish.len()) {
            Ok(ports) => ports,
            Err(e) => {
                tracing::error!("service {}: no free loopback port for a replica: {e}", record.name);
                return false;
            }
        };
        let generation = record.current.generation;
        let name = format!("{}.{generation}.{}", record.name, &kiln_image::instance::new_id()[..6]);
        let created = record
            .replica_request(&record.current.template, &name, &ports)
            .map_err(|e| crate::error::ApiError::BadRequest(e.to_string()))
            .and_then(|request| self.daemon.create_instance(request, Some(&record.name)));
        match created {
            Ok(created) => {
                let backend = Arc::new(Backend::new(created.id.clone(), ports));
                self.shared.pool.add(backend.clone());
                self.replicas.push(Replica {
                    id: created.id,
                    name: created.name,
                    generation,
                    backend,
                    started: Instant::now(),
                    proven: false,
                });
                true
            }
            Err(e) => {
                let why = format!("cannot start a replica of generation {generation}: {e}");
                tracing::warn!("service {}: {why}", record.name);
                self.failures += 1;
                self.hold_off = Instant::now() + crate::runner::backoff(self.failures.saturating_sub(1));
                let mut current = self.shared.record();
                if current.phase == Phase::Updating && current.current.generation == generation {
                    let back_to = current.previous.as_ref().map_or(0, |p| p.generation);
                    let message = format!("generation {generation} failed: {why}; rolled back to generation {back_to}");
                    if current.roll_back(message) {
                        (self.shared.save)(&current);
                    }
                } else if current.message.as_deref() != Some(&why) {
                    current.message = Some(why);
                    (self.shared.save)(&current);
                }
                false
            }
        }
    }

    fn retire_indices(&mut self, mut indices: Vec<usize>, record: &ServiceRecord) {
        indices.sort_unstable();
        for i in indices.into_iter().rev() {
            let replica = self.replicas.remove(i);
            self.retire(replica, record);
        }
    }

    /// Drains the replica, then (on a thread of its own, so that the step goes on) stops and removes it.
    fn retire(&self, replica: Replica, record: &ServiceRecord) {
        retire(&self.daemon, &self.shared, replica.id, replica.backend, record.current.template.stop_timeout);
    }

    fn publish_status(&self) {
        let status = self
            .replicas
            .iter()
            .map(|r| super::spec::ReplicaStatus {
                id: r.id.clone(),
                name: r.name.clone(),
                generation: r.generation,
                ready: r.backend.ready(),
                draining: r.backend.draining(),
            })
            .collect();
        *self.shared.replicas.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

/// Drains `backend`, waits for its connections to end (at most [`DRAIN_LIMIT`]), then stops and removes the
/// instance, on a thread of its own; `shared.leaving` counts it until it is gone.
pub fn retire(
    daemon: &Arc<Daemon>,
    shared: &Arc<Shared>,
    id: String,
    backend: Arc<Backend>,
    stop_timeout: Option<u32>,
) {
    shared.pool.drain(&backend);
    let leaving = shared.leaving.clone();
    leaving.fetch_add(1, SeqCst);
    let (daemon, shared) = (daemon.clone(), shared.clone());
    let work = move || {
        let start = Instant::now();
        while backend.active() > 0 && start.elapsed() < DRAIN_LIMIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        shared.pool.remove(&id);
        let time = Duration::from_secs(u64::from(stop_timeout.unwrap_or(kiln_launch::DEFAULT_STOP_TIMEOUT)));
        if daemon.runs(&id) {
            if let Err(e) = daemon.stop(&id, time) {
                tracing::warn!("cannot stop replica {id}: {e}");
            }
        }
        if let Err(e) = daemon.remove(&id, true) {
            tracing::warn!("cannot remove replica {id}: {e}");
        }
        shared.leaving.fetch_sub(1, SeqCst);
    };
    if let Err(e) = std::thread::Builder::new().name("retire".into()).spawn(work) {
        tracing::error!("cannot start a thread to retire a replica: {e}");
        leaving.fetch_sub(1, SeqCst);
    }
}

/// `n` loopback ports free now (bound and let go: the replica's network binds them right after).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect()
}
