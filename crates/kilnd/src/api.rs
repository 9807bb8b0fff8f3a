//! The API's bodies: what a client sends (`POST /instances`) and what kilnd answers besides instance records
//! (`kiln_image::instance::Instance`, as `kiln ps -o json` prints them). Shared by kilnd and its clients, so that
//! both sides agree on every field. A create request's fields are `kiln run`'s flags, checked by the flags' own
//! parsers (`kiln_launch`), so that a bad field gets the same one-line message a bad flag gets.

use kiln_image::health::HealthCheck;
use kiln_image::restart::RestartPolicy;
use kiln_launch::network::{parse_cidr, parse_cidr6, parse_net, parse_publish, NetworkFlags};
use kiln_launch::{parse_env, parse_mapping, parse_mount, parse_workdir, Overrides};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `POST /instances/{id}/snapshot`: the instance paused at a quiescent point and written to `path` (`kiln snapshot`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The file to write (replaced if it exists), an absolute path on kilnd's host.
    pub path: PathBuf,
    /// Whether the instance runs on afterwards (else it ends once written, and is not restarted).
    #[serde(default)]
    pub leave_running: bool,
}

/// What a snapshot wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotWritten {
    /// Bytes of guest RAM written (the pages the guest touched, not all zero).
    pub memory_bytes: u64,
    /// The file's length (mostly holes).
    pub file_len: u64,
}

/// `POST /instances/restore`: a new instance running on from a snapshot file (`kiln restore -d`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// A file `kiln snapshot` (or this API) wrote, an absolute path on kilnd's host.
    pub path: PathBuf,
    /// The new instance's name (default: its program's name and a few letters of its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Remove the record and log when it ends.
    #[serde(default)]
    pub auto_remove: bool,
}

/// `POST /instances`: create an instance and start it (`kiln run -d`). Only `image` is required; unknown fields are
/// refused (a misspelt field must not be silently dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateRequest {
    /// An image (`NAME[:TAG]` or id) or the absolute path of a Linux x86-64 executable on the daemon's host.
    pub image: String,
    /// The instance's name (default: the image's name and a few letters of the id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program's arguments, instead of the image's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `KEY=VALUE`, added to the image's environment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Guest memory: bytes, or a size with a K, M or G suffix (`"64M"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `HOST:GUEST`, host paths absolute.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<String>,
    /// `NAME:/path`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `user` (default), `none` or `tap:NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    /// `[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Seconds the program has to take a stop signal (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// Remove the record and log when the instance ends (`--rm`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
    /// `no` (default), `on-failure[:N]`, `always`, `unless-stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// A health check from the host to a published port: `{"check": "http:8080/healthz" | "tcp:8080",
    /// "interval_ms": 30000, "timeout_ms": 5000, "retries": 3}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Run it jailed (`kiln run -d --jail`): a process of its own in new namespaces, an empty root, a uid of its own,
    /// seccomp and limits, supervised by kilnd (kilnd must run as root). Always so under `kiln daemon --jail-instances`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub jail: bool,
}

/// A size as a number of bytes or as users write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// `201` to `POST /instances`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub id: String,
    pub name: String,
}

/// `GET /version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Kiln's version (the workspace's).
    pub version: String,
    /// This API's version: incremented when a route or body changes incompatibly.
    pub api_version: u32,
    /// kilnd's process id.
    pub pid: u32,
}

/// Every error's body, with a 4xx or 5xx status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

pub const API_VERSION: u32 = 1;

/// One field that does not say what it must: `field: why`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {why}")]
pub struct FieldError {
    pub field: String,
    pub why: String,
}

fn field<T>(name: impl Into<String>, parsed: Result<T, String>) -> Result<T, FieldError> {
    parsed.map_err(|why| FieldError { field: name.into(), why })
}

fn each<T>(name: &str, values: &[String], parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, FieldError> {
    values.iter().enumerate().map(|(i, v)| field(format!("{name}[{i}]"), parse(v))).collect()
}

/// A host path the daemon reads must not depend on where the daemon was started.
fn absolute_host(mapping: (PathBuf, String)) -> Result<(PathBuf, String), String> {
    match mapping.0.is_absolute() {
        true => Ok(mapping),
        false => Err(format!("'{}' is relative; give kilnd an absolute host path", mapping.0.display())),
    }
}

impl CreateRequest {
    /// The restart policy asked for (none: `no`); not with `auto_remove`, which would remove what it restarts.
    pub fn restart_policy(&self) -> Result<RestartPolicy, FieldError> {
        let policy = match &self.restart {
            Some(text) => field("restart", text.parse())?,
            None => RestartPolicy::No,
        };
        if policy != RestartPolicy::No && self.auto_remove {
            let why = "a restart policy and auto_remove cannot go together (auto_remove removes what it would restart)";
            return Err(FieldError { field: "restart".into(), why: why.into() });
        }
        Ok(policy)
    }

    /// The run flags this asks for, each field checked (`kiln_launch::resolve` checks them again with the image).
    pub fn overrides(&self) -> Result<Overrides, FieldError> {
        if self.image.is_empty() {
            return Err(FieldError { field: "image".into(), why: "missing: name an image or an executable".into() });
        }
        if self.image.starts_with('.') {
            let why = format!("'{}' is relative; give kilnd an absolute path", self.image);
            return Err(FieldError { field: "image".into(), why });
        }
        let memory = match &self.memory {
            None => None,
            Some(Size::Bytes(n)) => Some(*n),
            Some(Size::Text(s)) => Some(field("memory", kiln_image::size::parse_size(s))?),
        };
        let network = NetworkFlags {
            mode: match &self.net {
                Some(net) => field("net", parse_net(net))?,
                None => Default::default(),
            },
            publish: each("publish", &self.publish, parse_publish)?,
            ip: self.ip.as_deref().map(|s| field("ip", parse_cidr(s))).transpose()?,
            gateway: self
                .gateway
                .as_deref()
                .map(|s| field("gateway", s.parse().map_err(|_| bad_addr(s))))
                .transpose()?,
            ip6: self.ip6.as_deref().map(|s| field("ip6", parse_cidr6(s))).transpose()?,
            gateway6: self
                .gateway6
                .as_deref()
                .map(|s| field("gateway6", s.parse().map_err(|_| bad_addr(s))))
                .transpose()?,
            dns: self.dns.clone(),
        };
        if self.stop_timeout == Some(0) {
            return Err(FieldError { field: "stop_timeout".into(), why: "must be at least 1 second".into() });
        }
        if let Some(cpus) = self.cpus.filter(|&c| c == 0 || c > kiln_vmm::vm::MAX_VCPUS) {
            let why = format!("{cpus} is out of range: Kiln runs 1 to {} vCPUs", kiln_vmm::vm::MAX_VCPUS);
            return Err(FieldError { field: "cpus".into(), why });
        }
        Ok(Overrides {
            args: self.args.clone(),
            memory,
            cpus: self.cpus,
            env: each("env", &self.env, parse_env)?,
            workdir: self.workdir.as_deref().map(|w| field("workdir", parse_workdir(w))).transpose()?,
            files: each("files", &self.files, |s| parse_mapping(s).and_then(absolute_host))?,
            dirs: each("dirs", &self.dirs, |s| parse_mapping(s).and_then(absolute_host))?,
            volumes: each("volumes", &self.volumes, parse_mount)?,
            network,
            trace_syscalls: false,
            stats: false,
            stop_timeout: self.stop_timeout,
            core_file: None,
        })
    }
}

impl CreateRequest {
    /// The request for `kiln run -d`'s flags (`overrides` as the CLI parsed them), to run `image` (a name, an id, or
    /// an absolute path): the inverse of [`CreateRequest::overrides`], but for tracing and statistics, which an
    /// instance of kilnd's does not print.
    pub fn from_overrides(
        image: String,
        name: Option<String>,
        auto_remove: bool,
        restart: Option<String>,
        o: &Overrides,
    ) -> CreateRequest {
        let mapping = |(host, guest): &(PathBuf, String)| format!("{}:{guest}", host.display());
        let n = &o.network;
        CreateRequest {
            image,
            name,
            args: o.args.clone(),
            env: o.env.clone(),
            memory: o.memory.map(Size::Bytes),
            cpus: o.cpus,
            workdir: o.workdir.clone(),
            files: o.files.iter().map(mapping).collect(),
            dirs: o.dirs.iter().map(mapping).collect(),
            volumes: o.volumes.iter().map(|(name, path)| format!("{name}:{path}")).collect(),
            net: Some(n.mode.to_string()),
            publish: n.publish.iter().map(ToString::to_string).collect(),
            ip: n.ip.map(|(a, p)| format!("{a}/{p}")),
            gateway: n.gateway.map(|a| a.to_string()),
            ip6: n.ip6.map(|(a, p)| format!("{a}/{p}")),
            gateway6: n.gateway6.map(|a| a.to_string()),
            dns: n.dns.clone(),
            stop_timeout: o.stop_timeout,
            auto_remove,
            restart,
            health: None,
            jail: false,
        }
    }
}

fn bad_addr(s: &str) -> String {
    format!("'{s}' is not an IP address")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<CreateRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn fields_are_the_run_flags() {
        let r =
            request(r#"{"image":"web:1","memory":"25M","publish":["8080:80"],"env":["A=1"],"args":["-v"]}"#).unwrap();
        let o = r.overrides().unwrap();
        assert_eq!(o.memory, Some(25 << 20));
        assert_eq!(o.network.publish.len(), 1);
        assert_eq!((o.env, o.args), (vec!["A=1".to_string()], vec!["-v".to_string()]));
        assert_eq!(request(r#"{"image":"x","memory":1048576}"#).unwrap().overrides().unwrap().memory, Some(1 << 20));
    }

    #[test]
    fn run_flags_go_there_and_back() {
        let full = request(
            r#"{"image":"/bin/app","args":["a"],"env":["A=1"],"memory":33554432,"cpus":2,"workdir":"/w",
               "files":["/h:/g"],"dirs":["/d:/e"],"volumes":["data:/data"],"net":"user",
               "publish":["127.0.0.1:8080:80/tcp","9000:90/udp"],"ip":"10.0.3.15/24","gateway":"10.0.3.1",
               "ip6":"fd01::15/64","gateway6":"fd01::1","dns":"10.0.3.3","stop_timeout":3}"#,
        )
        .unwrap();
        let overrides = full.overrides().unwrap();
        let back = CreateRequest::from_overrides("/bin/app".into(), None, false, None, &overrides);
        assert_eq!(back.overrides().unwrap(), overrides);
        assert_eq!(back.publish, ["127.0.0.1:8080:80/tcp", "9000:90/udp"]);
    }

    #[test]
    fn a_bad_field_is_named() {
        let bad = |json: &str| request(json).unwrap().overrides().unwrap_err().to_string();
        assert!(bad(r#"{"image":""}"#).starts_with("image: missing"));
        assert!(bad(r#"{"image":"./app"}"#).starts_with("image: './app' is relative"));
        assert!(bad(r#"{"image":"x","publish":["80:80","nope"]}"#).starts_with("publish[1]: "));
        assert!(bad(r#"{"image":"x","env":["NOEQUALS"]}"#).starts_with("env[0]: "));
        assert!(bad(r#"{"image":"x","files":["rel:/a"]}"#).starts_with("files[0]: 'rel' is relative"));
        assert!(bad(r#"{"image":"x","memory":"lots"}"#).starts_with("memory: "));
        assert!(bad(r#"{"image":"x","cpus":0}"#).starts_with("cpus: 0 is out of range"));
        assert!(bad(r#"{"image":"x","stop_timeout":0}"#).starts_with("stop_timeout: "));
        assert!(bad(r#"{"image":"x","net":"bogus"}"#).starts_with("net: "));
        let policy = |json: &str| request(json).unwrap().restart_policy().map_err(|e| e.to_string());
        assert_eq!(policy(r#"{"image":"x","restart":"on-failure:2"}"#), Ok(RestartPolicy::OnFailure { max: Some(2) }));
        assert!(policy(r#"{"image":"x","restart":"sometimes"}"#).unwrap_err().starts_with("restart: 'sometimes'"));
        assert!(policy(r#"{"image":"x","restart":"always","auto_remove":true}"#)
            .unwrap_err()
            .contains("cannot go together"));
        // Unknown fields and wrong types are the JSON's errors.
        assert!(request(r#"{"image":"x","memroy":"1M"}"#).unwrap_err().to_string().contains("unknown field `memroy`"));
        assert!(request(r#"{"image":5}"#).is_err());
    }
}
