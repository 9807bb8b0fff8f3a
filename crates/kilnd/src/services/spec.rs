//! A service's bodies: what a client sends (`POST /services`, `POST /services/{name}/update`), what kilnd keeps of
//! a service (its desired state, persisted in `$KILN_HOME/services/NAME.json` so that a kilnd restart brings it
//! back), and what it answers. Replicas are instances made from the service's [`Template`] through
//! [`CreateRequest`], so a template's fields are checked by the same parsers as `kiln run`'s flags.

use crate::api::{CreateRequest, FieldError, Size};
use kiln_image::health::{HealthCheck, Probe};
use kiln_usernet::{PortForward, Proto};
use serde::{Deserialize, Serialize};

/// Most replicas one service may ask for (kilnd's instance cap limits all instances together).
pub const MAX_REPLICAS: u32 = 10_000;
/// How long a new replica has to become healthy before the update counts it failed, when the request does not say.
pub const DEFAULT_MONITOR_MS: u64 = 30_000;

/// What every replica of one version runs: an image (or an absolute program path) and the run flags a service
/// may set. Immutable: an update makes a new version, whose replicas replace the old version's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Template {
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
}

/// How an update replaces replicas (as `docker service update --update-parallelism/--update-failure-action`):
/// at most `max_surge` replicas above the count, at most `max_unavailable` below it, and a new replica that is not
/// healthy within `monitor_ms` (or ends, or turns unhealthy) fails the update, which then rolls back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub monitor_ms: u64,
}

impl Default for UpdatePolicy {
    fn default() -> UpdatePolicy {
        UpdatePolicy { max_surge: 1, max_unavailable: 0, monitor_ms: DEFAULT_MONITOR_MS }
    }
}

/// `POST /services`: create a service and start its replicas. `name` and `image` are required; unknown fields are
/// refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceRequest {
    pub name: String,
    pub image: String,
    /// How many replicas (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `[HOST_IP:]HOST_PORT:PORT[/tcp]`: kilnd listens on the host port and balances connections across the healthy
    /// replicas' PORT.
    pub publish: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// Each replica's check, naming a published host port (`http:8080/healthz`): kilnd probes each replica's own
    /// port behind it. Without one, a replica counts as healthy once its VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_ms: Option<u64>,
}

/// `POST /services/{name}/update`: a new version (any of `image`, `args`, `env`, `memory`, `cpus`, `stop_timeout`
/// given), a new replica count, or a new update policy; what is not given stays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_ms: Option<u64>,
}

/// One version of a service: its template and the generation number its replicas carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub generation: u64,
    pub template: Template,
}

/// Where a service is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// All replicas run the current version (or are being started or replaced to get there).
    Steady,
    /// Replacing the previous version's replicas with the current's.
    Updating,
    /// Replacing replicas with the current version, which is the one before an update that failed or that the user
    /// rolled back.
    RollingBack,
    /// An update failed and was rolled back: the current version is the one before it.
    RolledBack,
}

/// A service's desired state, as kilnd persists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub replicas: u32,
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    pub update: UpdatePolicy,
    pub current: Version,
    /// What `rollback` goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Version>,
    pub next_generation: u64,
    pub phase: Phase,
    /// The last thing that happened to it, in words (`generation 2 failed: ...; rolled back to generation 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_ms: u64,
}

/// A replica as `GET /services/{name}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: String,
    pub name: String,
    pub generation: u64,
    /// Healthy and taking connections.
    pub ready: bool,
    /// Taking no new connections, to be stopped once those it has end.
    pub draining: bool,
}

/// `GET /services` (each) and `GET /services/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    pub record: ServiceRecord,
    /// Replicas of the current version taking connections.
    pub ready: u32,
    pub running: Vec<ReplicaStatus>,
}

fn bad(field: &str, why: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), why: why.into() }
}

/// The published ports, checked: TCP only (kilnd balances connections, not datagrams), no host port twice.
pub fn front_ports(publish: &[String]) -> Result<Vec<PortForward>, FieldError> {
    let mut forwards: Vec<PortForward> = Vec::new();
    for (i, text) in publish.iter().enumerate() {
        let field = format!("publish[{i}]");
        let f = kiln_launch::network::parse_publish(text).map_err(|why| bad(&field, why))?;
        if f.proto != Proto::Tcp {
            return Err(bad(&field, format!("'{text}' is UDP: a service balances TCP connections only")));
        }
        if forwards.iter().any(|o| o.host_port == f.host_port) {
            return Err(bad(&field, format!("host port {} is published twice", f.host_port)));
        }
        forwards.push(f);
    }
    Ok(forwards)
}

/// Which published port (by index) the check probes.
fn checked_front(health: &HealthCheck, fronts: &[PortForward]) -> Result<(Probe, usize), FieldError> {
    let probe = health.probe().map_err(|why| bad("health", why))?;
    let port = match &probe {
        Probe::Http { port, .. } | Probe::Tcp { port } => *port,
    };
    match fronts.iter().position(|f| f.host_port == port) {
        Some(i) => Ok((probe, i)),
        None => Err(bad("health", format!("host port {port} is not one the service publishes"))),
    }
}

impl ServiceRecord {
    /// The record a create request asks for, every field checked but the template's image (which kilnd resolves).
    pub fn from_request(request: &ServiceRequest, now_ms: u64) -> Result<ServiceRecord, FieldError> {
        if !kiln_image::instance::valid_name(&request.name) || request.name.len() > 64 {
            return Err(bad(
                "name",
                format!("{:?} is not a service name (letters, digits, '.', '_', '-'; at most 64)", request.name),
            ));
        }
        let replicas = request.replicas.unwrap_or(1);
        if replicas > MAX_REPLICAS {
            return Err(bad("replicas", format!("{replicas} is more than {MAX_REPLICAS}")));
        }
        let fronts = front_ports(&request.publish)?;
        if let Some(health) = &request.health {
            checked_front(health, &fronts)?;
        }
        let defaults = UpdatePolicy::default();
        let update = UpdatePolicy {
            max_surge: request.max_surge.unwrap_or(defaults.max_surge),
            max_unavailable: request.max_unavailable.unwrap_or(defaults.max_unavailable),
            monitor_ms: request.monitor_ms.unwrap_or(defaults.monitor_ms),
        };
        check_policy(&update)?;
        let template = Template {
            image: request.image.clone(),
            args: request.args.clone(),
            env: request.env.clone(),
            memory: request.memory.clone(),
            cpus: request.cpus,
            stop_timeout: request.stop_timeout,
        };
        let record = ServiceRecord {
            name: request.name.clone(),
            replicas,
            publish: request.publish.clone(),
            health: request.health.clone(),
            update,
            current: Version { generation: 1, template },
            previous: None,
            next_generation: 2,
            phase: Phase::Steady,
            message: None,
            created_ms: now_ms,
        };
        record.replica_request(&record.current.template, "check", &vec![1; fronts.len()])?.overrides()?;
        Ok(record)
    }

    /// The create request of one replica of `template` named `name`, whose published ports are `ports` on the
    /// loopback (one per service port, in order): the service's check goes to the replica's own port.
    pub fn replica_request(&self, template: &Template, name: &str, ports: &[u16]) -> Result<CreateRequest, FieldError> {
        let fronts = front_ports(&self.publish)?;
        let publish = fronts.iter().zip(ports).map(|(f, p)| format!("127.0.0.1:{p}:{}/tcp", f.guest_port)).collect();
        let health = match &self.health {
            None => None,
            Some(check) => {
                let (probe, i) = checked_front(check, &fronts)?;
                let port = ports.get(i).copied().unwrap_or(0);
                let text = match probe {
                    Probe::Http { path, .. } => format!("http:{port}{path}"),
                    Probe::Tcp { .. } => format!("tcp:{port}"),
                };
                Some(HealthCheck { check: text, ..check.clone() })
            }
        };
        Ok(CreateRequest {
            image: template.image.clone(),
            name: Some(name.to_string()),
            args: template.args.clone(),
            env: template.env.clone(),
            memory: template.memory.clone(),
            cpus: template.cpus,
            stop_timeout: template.stop_timeout,
            publish,
            health,
            ..CreateRequest::default()
        })
    }

    /// Applies an update: the new template (if any field of it changed), count and policy. Whether the template
    /// changed.
    pub fn apply(&mut self, update: &ServiceUpdate) -> Result<Option<Template>, FieldError> {
        if let Some(replicas) = update.replicas {
            if replicas > MAX_REPLICAS {
                return Err(bad("replicas", format!("{replicas} is more than {MAX_REPLICAS}")));
            }
        }
        let mut policy = self.update;
        policy.max_surge = update.max_surge.unwrap_or(policy.max_surge);
        policy.max_unavailable = update.max_unavailable.unwrap_or(policy.max_unavailable);
        policy.monitor_ms = update.monitor_ms.unwrap_or(policy.monitor_ms);
        check_policy(&policy)?;
        let old = &self.current.template;
        let template = Template {
            image: update.image.clone().unwrap_or_else(|| old.image.clone()),
            args: update.args.clone().unwrap_or_else(|| old.args.clone()),
            env: update.env.clone().unwrap_or_else(|| old.env.clone()),
            memory: update.memory.clone().or_else(|| old.memory.clone()),
            cpus: update.cpus.or(old.cpus),
            stop_timeout: update.stop_timeout.or(old.stop_timeout),
        };
        let ports = vec![1; self.publish.len()];
        self.replica_request(&template, "check", &ports)?.overrides()?;
        self.update = policy;
        self.replicas = update.replicas.unwrap_or(self.replicas);
        Ok((template != *old).then_some(template))
    }

    /// Makes `template` the current version (the update starts).
    pub fn roll_to(&mut self, template: Template) {
        let version = Version { generation: self.next_generation, template };
        self.next_generation += 1;
        self.previous = Some(std::mem::replace(&mut self.current, version));
        self.phase = Phase::Updating;
        self.message = Some(format!("updating to generation {}", self.current.generation));
    }

    /// Makes the previous version current again (its replicas keep their generation, so those still running stay).
    pub fn roll_back(&mut self, why: String) -> bool {
        let Some(previous) = self.previous.take() else { return false };
        self.previous = Some(std::mem::replace(&mut self.current, previous));
        self.phase = Phase::RollingBack;
        self.message = Some(why);
        true
    }
}

fn check_policy(policy: &UpdatePolicy) -> Result<(), FieldError> {
    if policy.max_surge == 0 && policy.max_unavailable == 0 {
        return Err(bad("max_surge", "max_surge and max_unavailable are both 0: an update could replace nothing"));
    }
    if policy.monitor_ms < 10 {
        return Err(bad("monitor_ms", "must be at least 10"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ServiceRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_replica_gets_its_own_loopback_port_and_check() {
        let r = request(
            r#"{"name":"web","image":"/bin/app","replicas":3,"publish":["8080:80","9090:90"],
                "health":{"check":"http:9090/up","interval_ms":100}}"#,
        );
        let record = ServiceRecord::from_request(&r, 0).unwrap();
        let replica = record.replica_request(&record.current.template, "web.1.x", &[40001, 40002]).unwrap();
        assert_eq!(replica.publish, ["127.0.0.1:40001:80/tcp", "127.0.0.1:40002:90/tcp"]);
        let health = replica.health.unwrap();
        assert_eq!((health.check.as_str(), health.interval_ms), ("http:40002/up", 100));
        assert_eq!(replica.name.as_deref(), Some("web.1.x"));
    }

    #[test]
    fn bad_requests_name_their_field() {
        let bad = |json: &str| ServiceRecord::from_request(&request(json), 0).unwrap_err().to_string();
        assert!(bad(r#"{"name":"a b","image":"/x"}"#).starts_with("name: "));
        assert!(bad(r#"{"name":"w","image":"/x","replicas":10001}"#).starts_with("replicas: "));
        assert!(bad(r#"{"name":"w","image":"/x","publish":["53:53/udp"]}"#).contains("UDP"));
        assert!(bad(r#"{"name":"w","image":"/x","publish":["80:80","80:81"]}"#).contains("published twice"));
        assert!(bad(r#"{"name":"w","image":"/x","publish":["80:80"],"health":{"check":"tcp:81"}}"#)
            .contains("host port 81 is not one the service publishes"));
        assert!(bad(r#"{"name":"w","image":"/x","max_surge":0}"#).starts_with("max_surge: "));
        assert!(bad(r#"{"name":"w","image":"/x","env":["NOEQ"]}"#).starts_with("env[0]: "));
        assert!(bad(r#"{"name":"w","image":""}"#).starts_with("image: missing"));
    }

    #[test]
    fn updates_make_versions_and_rollbacks_go_back() {
        let mut record =
            ServiceRecord::from_request(&request(r#"{"name":"w","image":"/v1","publish":["80:80"]}"#), 0).unwrap();
        let scale = ServiceUpdate { replicas: Some(5), ..Default::default() };
        assert_eq!(record.apply(&scale).unwrap(), None, "a count is no new version");
        assert_eq!(record.replicas, 5);
        let to_v2 = ServiceUpdate { image: Some("/v2".into()), max_surge: Some(2), ..Default::default() };
        let template = record.apply(&to_v2).unwrap().unwrap();
        record.roll_to(template);
        assert_eq!((record.current.generation, record.phase), (2, Phase::Updating));
        assert_eq!(record.update.max_surge, 2);
        assert!(record.roll_back("failed".into()));
        assert_eq!((record.current.generation, record.current.template.image.as_str()), (1, "/v1"));
        assert_eq!(record.previous.as_ref().unwrap().generation, 2);
        let nothing = ServiceUpdate { max_surge: Some(0), max_unavailable: Some(0), ..Default::default() };
        assert!(record.apply(&nothing).is_err());
    }
}
