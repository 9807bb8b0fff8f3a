//! A containerd bundle (an OCI runtime bundle: `config.json` and the root filesystem) made into a Kiln
//! [`LaunchSpec`]: the process's args, env and cwd; the memory limit as guest memory; the CPU quota as vCPUs;
//! `io.kiln.*` annotations for what OCI has no field for. Only the fields Kiln uses are read.

use crate::writable::{WritableMount, DEFAULT_VOLUME_SIZE, MAX_VOLUME_SIZE, MIN_VOLUME_SIZE, VOLUME_SIZE_ANNOTATION};
use kiln_launch::{bundle, network::Network, LaunchSpec, Signals, Source, DEFAULT_MEMORY, DEFAULT_STOP_TIMEOUT};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Guest memory (a size: `512M`, `1G`, or bytes) when the container has no memory limit, or instead of it.
pub const MEMORY_ANNOTATION: &str = "io.kiln.memory";
/// vCPUs, instead of those the CPU quota gives.
pub const CPUS_ANNOTATION: &str = "io.kiln.cpus";
/// Seconds the program has to take SIGTERM before the VM is stopped (`kiln run --stop-timeout`).
pub const STOP_TIMEOUT_ANNOTATION: &str = "io.kiln.stop-timeout";
/// How a container of a pod is on the pod's network: `shared` (the default: every container of the pod, on the
/// user-mode network in the pod's namespace) or `tap` (the VM takes the pod's address, one container per pod).
pub const POD_NETWORK_ANNOTATION: &str = "io.kiln.pod-network";
const KILN_ANNOTATIONS: [&str; 4] =
    [MEMORY_ANNOTATION, CPUS_ANNOTATION, STOP_TIMEOUT_ANNOTATION, POD_NETWORK_ANNOTATION];

/// How a container given the pod's network namespace is on it (docs/kubernetes.md, "several containers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    /// The user-mode network in the pod's namespace: the program's listening ports published there, the pod's
    /// other containers reached on its loopback. Every container of the pod can have it.
    Shared,
    /// The VM takes the pod's address through a tap (`podnet.rs`): faster, and one container per pod.
    Tap,
}
/// What CRI calls a pod's sandbox ("pause") container, which costs no VM.
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The pod a CRI container belongs to: the containers of one pod share one shim.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{} is not an OCI runtime config", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("the container has no process")]
    NoProcess,
    #[error("{0}")]
    Program(#[from] kiln_launch::BundleError),
    #[error("process.cwd {0}")]
    Cwd(String),
    #[error("annotation {0}={1:?}: {2}")]
    Annotation(String, String, String),
    #[error("process.rlimits RLIMIT_NOFILE soft {soft}, hard {hard}: {problem}")]
    Nofile { soft: u64, hard: u64, problem: &'static str },
    #[error("memory limit {0} bytes: a Kiln VM needs at least 1 MiB")]
    Memory(i64),
    #[error(transparent)]
    Mount(#[from] crate::mounts::MountError),
    #[error("{0}: Kiln runs Linux x86-64 ELF programs (static, or dynamic with their loader in the image)")]
    NotAProgram(String, #[source] kiln_vmm::elf::ElfError),
    #[error("writable mount at {0}: {1}")]
    Writable(String, String),
}

/// The part of an OCI runtime `config.json` Kiln reads.
#[derive(Debug, Default, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<crate::mounts::Mount>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Process {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
}

/// One of `process.rlimits`: Kiln applies RLIMIT_NOFILE (the library OS enforces it); the others have nothing to
/// limit in a VM whose memory and vCPUs are its limits, and are not applied.
#[derive(Debug, Default, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Root {
    pub path: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    /// The namespace to join; none for a new one.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Memory {
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Cpu {
    pub quota: Option<i64>,
    pub period: Option<u64>,
}

impl Config {
    pub fn read(bundle: &Path) -> Result<Config, BundleError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|e| BundleError::Read(path.clone(), e))?;
        serde_json::from_slice(&text).map_err(|e| BundleError::Parse(path, e))
    }

    /// A pod's sandbox container, which only holds the pod's namespaces: Kiln gives it no VM.
    pub fn is_sandbox(&self) -> bool {
        self.annotations.get(CONTAINER_TYPE_ANNOTATION).is_some_and(|t| t == "sandbox")
    }

    /// The network namespace the container joins (the pod's, made by CNI), whose address the VM takes; none for a
    /// namespace of its own, where the VM has the loopback only, as a runc container would.
    pub fn network_namespace(&self) -> Option<&Path> {
        let namespaces = self.linux.as_ref().map(|l| l.namespaces.as_slice()).unwrap_or_default();
        namespaces
            .iter()
            .find(|n| n.kind == "network")
            .and_then(|n| n.path.as_deref())
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The root filesystem's directory: `root.path`, relative to the bundle unless absolute.
    pub fn rootfs(&self, bundle: &Path) -> PathBuf {
        bundle.join(self.root.as_ref().map_or("rootfs", |r| r.path.as_str()))
    }

    /// The launch `bundle` describes, its program checked to be one Kiln boots.
    pub fn launch_spec(&self, bundle: &Path, id: &str) -> Result<LaunchSpec, BundleError> {
        let process = self.process.as_ref().ok_or(BundleError::NoProcess)?;
        let writable = self.writable_mounts()?;
        for key in self.annotations.keys().filter(|k| k.starts_with("io.kiln.")) {
            let sized = key
                .strip_prefix(VOLUME_SIZE_ANNOTATION)
                .is_some_and(|at| self.writable_destinations().any(|dest| names_mount(at, &dest)));
            if !KILN_ANNOTATIONS.contains(&key.as_str()) && !sized {
                let known = KILN_ANNOTATIONS.join(", ");
                return Err(BundleError::Annotation(
                    key.clone(),
                    self.annotations[key].clone(),
                    format!(
                        "unknown (Kiln reads {known}, and {VOLUME_SIZE_ANNOTATION}DEST for a writable mount at DEST)"
                    ),
                ));
            }
        }
        let rootfs = self.rootfs(bundle);
        let workdir = match process.cwd.as_str() {
            "" | "/" => String::new(),
            cwd => kiln_launch::parse_workdir(cwd).map_err(BundleError::Cwd)?.trim_end_matches('/').to_string(),
        };
        let argv0 = process.args.first().map(String::as_str).unwrap_or_default();
        let exe_path = bundle::find_program(&rootfs, argv0, &process.env, &workdir)?;
        check_program(&rootfs, &exe_path)?;
        let (memory, cpus, grace_secs) = (self.memory()?, self.cpus()?, self.stop_timeout()?);
        let copies = crate::mounts::copies(&self.mounts)?;
        let nofile = nofile(&process.rlimits)?;
        Ok(LaunchSpec {
            source: Source::Bundle { rootfs },
            shown: argv0.to_string(),
            name: id.to_string(),
            exe_path,
            argv: process.args.clone(),
            env: process.env.clone(),
            workdir,
            memory,
            cpus,
            network: match (self.network_namespace(), self.pod_network()?) {
                (Some(_), PodNetwork::Shared) => pod_user_network(),
                // The VM process takes the pod's address (`podnet.rs`) where it has a namespace to take it in.
                _ => Network::None,
            },
            volumes: Vec::new(),
            volume_files: (writable.iter().enumerate())
                .map(|(index, mount)| (crate::writable::image_path(bundle, index), mount.guest.clone()))
                .collect(),
            files: copies.files,
            dirs: copies.dirs,
            trace_syscalls: false,
            stats: false,
            signals: Signals { grace_secs },
            core_file: None,
            seccomp: Default::default(),
            nofile,
        })
    }

    /// The writable mounts of host directories, each to become a volume (`writable.rs`), with its size:
    /// `io.kiln.volume-size.DEST`, else [`DEFAULT_VOLUME_SIZE`]. At most `MAX_VOLUMES`, none inside another.
    pub fn writable_mounts(&self) -> Result<Vec<WritableMount>, BundleError> {
        let copies = crate::mounts::copies(&self.mounts)?;
        let mut mounts: Vec<WritableMount> = Vec::with_capacity(copies.writable.len());
        for (host, guest) in copies.writable {
            let problem = |what: String| BundleError::Writable(guest.clone(), what);
            if mounts.len() == kiln_abi::boot::MAX_VOLUMES {
                return Err(problem(format!(
                    "a Kiln VM mounts at most {} writable directories (each is a volume)",
                    kiln_abi::boot::MAX_VOLUMES
                )));
            }
            if guest == "/" || guest.len() > kiln_abi::boot::MOUNT_PATH_MAX {
                let max = kiln_abi::boot::MOUNT_PATH_MAX;
                return Err(problem(format!("a volume is mounted below the root, at a path of at most {max} bytes")));
            }
            let nested = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            if let Some(other) = mounts.iter().find(|m| nested(&m.guest, &guest) || nested(&guest, &m.guest)) {
                return Err(problem(format!(
                    "inside or around the writable mount at {} (volumes cannot nest)",
                    other.guest
                )));
            }
            let keys = self.annotations.keys().filter_map(|k| Some((k, k.strip_prefix(VOLUME_SIZE_ANNOTATION)?)));
            let size = match keys.filter(|(_, at)| names_mount(at, &guest)).map(|(k, _)| k).next() {
                Some(key) => {
                    let value = &self.annotations[key];
                    let in_range = |s: u64| (MIN_VOLUME_SIZE..=MAX_VOLUME_SIZE).contains(&s);
                    match kiln_image::size::parse_size(value) {
                        Ok(size) if in_range(size) => size.next_multiple_of(4096),
                        _ => {
                            let why = "must be a size from 4M to 1T".to_string();
                            return Err(BundleError::Annotation(key.clone(), value.clone(), why));
                        }
                    }
                }
                None => DEFAULT_VOLUME_SIZE,
            };
            mounts.push(WritableMount { host, guest, size });
        }
        Ok(mounts)
    }

    /// Where the writable mounts are (for telling a volume-size annotation from a typo).
    fn writable_destinations(&self) -> impl Iterator<Item = String> + '_ {
        crate::mounts::copies(&self.mounts).map(|c| c.writable).unwrap_or_default().into_iter().map(|(_, guest)| guest)
    }

    /// `io.kiln.pod-network`: how the container is on its pod's network.
    pub fn pod_network(&self) -> Result<PodNetwork, BundleError> {
        let mode = self.annotation(POD_NETWORK_ANNOTATION, |v| match v {
            "shared" => Ok(PodNetwork::Shared),
            "tap" => Ok(PodNetwork::Tap),
            _ => Err("must be shared or tap".into()),
        })?;
        Ok(mode.unwrap_or(PodNetwork::Shared))
    }

    fn annotation<T>(&self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, BundleError> {
        match self.annotations.get(key) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).map_err(|why| BundleError::Annotation(key.into(), v.clone(), why)),
        }
    }

    fn resources(&self) -> Option<&Resources> {
        self.linux.as_ref()?.resources.as_ref()
    }

    /// `io.kiln.memory`, else the memory limit, else Kiln's default.
    fn memory(&self) -> Result<u64, BundleError> {
        if let Some(memory) = self.annotation(MEMORY_ANNOTATION, parse_size)? {
            return Ok(memory);
        }
        match self.resources().and_then(|r| r.memory.as_ref()).and_then(|m| m.limit) {
            Some(limit) if limit > 0 && limit < 1 << 20 => Err(BundleError::Memory(limit)),
            Some(limit) if limit > 0 => Ok(limit as u64),
            _ => Ok(DEFAULT_MEMORY),
        }
    }

    /// `io.kiln.cpus`, else the CPU quota rounded up to whole vCPUs, else one.
    fn cpus(&self) -> Result<u32, BundleError> {
        let max = kiln_vmm::vm::MAX_VCPUS;
        let in_range = |n: u32| match (1..=max).contains(&n) {
            true => Ok(n),
            false => Err(format!("must be 1 to {max}")),
        };
        if let Some(cpus) = self.annotation(CPUS_ANNOTATION, |v| in_range(v.parse().map_err(|_| "not a number")?))? {
            return Ok(cpus);
        }
        let cpu = self.resources().and_then(|r| r.cpu.as_ref());
        Ok(match cpu.and_then(|c| Some((c.quota?, c.period?))) {
            Some((quota, period)) if quota > 0 && period > 0 => {
                (quota as u64).div_ceil(period).clamp(1, max.into()) as u32
            }
            _ => 1,
        })
    }

    fn stop_timeout(&self) -> Result<u32, BundleError> {
        let secs = self
            .annotation(STOP_TIMEOUT_ANNOTATION, |v| v.parse::<u32>().map_err(|_| "not a number of seconds".into()))?;
        Ok(secs.filter(|&s| s > 0).unwrap_or(DEFAULT_STOP_TIMEOUT))
    }
}

/// Whether a volume-size annotation's DEST (`io.kiln.volume-size.DEST`) names the mount at `guest`: its path, or its
/// path with the slashes as dots (`var.cache` for `/var/cache`), which a Kubernetes annotation key can hold.
fn names_mount(at: &str, guest: &str) -> bool {
    at == guest || at == guest.trim_start_matches('/').replace('/', ".")
}

/// The user-mode network's usual addresses, with the program's listening ports published as it listens (in the pod's
/// namespace, where the VM process runs).
fn pod_user_network() -> Network {
    let flags = kiln_launch::network::NetworkFlags::default();
    match kiln_launch::network::resolve(&flags) {
        Ok(Network::User { addresses, publish, .. }) => Network::User { addresses, publish, publish_listens: true },
        // The defaults always resolve to the user-mode network.
        _ => Network::None,
    }
}

/// The program must be an ELF file Kiln can load; anything else (a script, another architecture) is refused now,
/// with the reason, rather than failing inside the VM.
fn check_program(rootfs: &Path, exe_path: &str) -> Result<(), BundleError> {
    let host = bundle::host_path(rootfs, exe_path).unwrap_or_else(|| rootfs.join(exe_path.trim_start_matches('/')));
    let bytes = std::fs::read(&host).map_err(|e| BundleError::Read(host.clone(), e))?;
    kiln_vmm::elf::ElfImage::parse(&bytes).map_err(|e| BundleError::NotAProgram(exe_path.to_string(), e))?;
    Ok(())
}

/// RLIMIT_NOFILE from `process.rlimits`, checked as setrlimit checks it (the library OS keeps at most 65,536
/// descriptors, and lowers a higher limit to that).
fn nofile(rlimits: &[Rlimit]) -> Result<Option<(u64, u64)>, BundleError> {
    let Some(limit) = rlimits.iter().find(|r| r.kind == "RLIMIT_NOFILE") else { return Ok(None) };
    let (soft, hard) = (limit.soft, limit.hard);
    let problem = match () {
        _ if soft > hard => "the soft limit is above the hard one",
        _ if hard == 0 => "a program cannot run without a file descriptor",
        _ => return Ok(Some((soft, hard))),
    };
    Err(BundleError::Nofile { soft, hard, problem })
}

/// A size (`kiln run --memory`'s syntax) of at least 1 MiB.
fn parse_size(s: &str) -> Result<u64, String> {
    Some(kiln_image::size::parse_size(s)?).filter(|&b| b >= 1 << 20).ok_or_else(|| "must be at least 1M".into())
}

#[cfg(test)]
mod tests;
