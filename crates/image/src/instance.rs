//! Instance records (`$KILN_HOME/instances/<id>/record.json`, the output in `log` beside it): what `kiln run -d`
//! started, and what became of it. The VMM process writes its own record when it starts and when it ends; a VMM that
//! dies without writing (SIGKILL, a crash) is noticed by [`Instances::observe`], which checks that the recorded pid
//! still runs *and* started when the record says (pids are reused), and records why it ended.

use crate::health::{Health, HealthCheck};
use crate::restart::RestartPolicy;
use crate::store::{write_atomically, Store, StoreError};
use crate::Digest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded, its VMM not yet booted (`pid` is set once its process runs).
    Created,
    Running,
    /// Ended, and waiting to be started again by its restart policy (kilnd's instances only).
    Restarting,
    Exited,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    /// The image as it was named (`web:latest`) or the program's path.
    pub image: String,
    /// The image's id; none for a program run from a path.
    pub image_id: Option<Digest>,
    /// The program's argv.
    pub command: Vec<String>,
    /// Host ports published, in `-p` syntax.
    pub ports: Vec<String>,
    pub state: State,
    /// The VMM process, and its start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub exit_code: Option<i32>,
    /// Why it ended, in words (`exited`, `killed by SIGTERM`, `the VMM process died without recording an exit`).
    pub reason: Option<String>,
    /// `--rm`: the record goes when the instance ends.
    pub auto_remove: bool,
    /// What the instance launches (a `kiln_launch::LaunchSpec`, which this crate sits below): the instance process,
    /// and any later restart, launches exactly this, without resolving its flags or image name again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<serde_json::Value>,
    /// Run by kilnd on threads of its own process (`pid` is kilnd's): only kilnd stops it, through its API.
    #[serde(default)]
    pub kilnd: bool,
    /// Whether kilnd starts it again when it ends (`--restart`).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How many times kilnd started it again.
    #[serde(default)]
    pub restarts: u32,
    /// The user stopped it (stop, kill): `unless-stopped` does not start it when kilnd starts again.
    #[serde(default)]
    pub stopped: bool,
    /// Its health check, and the last verdict while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The kilnd service it is a replica of: the service starts, drains and removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// kilnd stopped with this instance kept, not ended: its VM's state is in [`KEPT_SNAPSHOT`] in its folder, and
    /// the next kilnd runs it on from there (same id, same start time). Meanwhile it counts as running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// Run by kilnd as a jailed instance process of its own (`kiln run -d --jail`'s), which kilnd supervises, not on
    /// kilnd's threads; `pid` is still kilnd's. Its restarts are jailed too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jailed: bool,
}

/// The file in an instance's folder that holds a kept instance's VM between two kilnds.
pub const KEPT_SNAPSHOT: &str = "kept.snap";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("no such instance: {0}")]
    NoSuch(String),
    #[error("{0} names more than one instance; give more of its id")]
    Ambiguous(String),
    #[error("the name {name:?} is already used by instance {id}; remove it (kiln rm {name}) or choose another --name")]
    NameTaken { name: String, id: String },
    #[error(
        "{name:?} is not an instance name: use letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    BadName { name: String },
    #[error("host port {port} is already published by instance {name} ({id})")]
    PortTaken { port: String, name: String, id: String },
    #[error("instance record {path} is damaged (kiln rm {id} removes it)")]
    Damaged {
        id: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("instance record {path} is damaged (kiln rm {id} removes it): it names instance {named:?}")]
    NotItsDirectory { id: String, path: PathBuf, named: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Milliseconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A process's start time (clock ticks after boot), or `None` if it is gone or a zombie.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after its last ')' do not.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Fields 4..=21 come before the start time (field 22); `state` was field 3.
    fields.nth(18)?.parse().ok()
}

pub fn valid_name(name: &str) -> bool {
    name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// 12 random hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 6];
    // SAFETY: the pointer and length describe `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Unique enough without the random source: time and pid.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mixed = (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the record under the default name, the base and a few letters of the id: more of them if another
/// instance has that name (4 letters collide among a thousand instances), the whole id at worst.
pub fn create_with_default_name(
    base: &str,
    id: &str,
    mut create: impl FnMut(&str) -> Result<(), InstanceError>,
) -> Result<(), InstanceError> {
    let mut letters = 4.min(id.len());
    loop {
        match create(&format!("{base}-{}", &id[..letters])) {
            Err(InstanceError::NameTaken { .. }) if letters < id.len() => letters = (letters + 2).min(id.len()),
            other => return other,
        }
    }
}

/// A name from a file or image name: letters, digits, `.`, `_`, `-`, at most 64 of them.
pub fn default_name_base(name: &str) -> String {
    let s: String = name
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        s
    } else {
        format!("i{s}")
    }
}

/// Gives the unnamed file `file` (O_TMPFILE) the name `path`, replacing an older file of that name: a `linkat`
/// through `/proc/self/fd`, so this process needs `/proc` (not a jail's empty root).
pub fn name_unnamed(file: &std::fs::File, path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(invalid)?;
    let to = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(invalid)?;
    // SAFETY: two NUL-terminated paths that live across the call; linkat only reads them.
    let linked =
        unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    match linked {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Where the last `n` lines of `bytes` start.
pub fn tail_start(bytes: &[u8], n: usize) -> usize {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if n == 0 {
        return bytes.len();
    }
    body.iter().enumerate().rev().filter(|(_, &b)| b == b'\n').nth(n - 1).map_or(0, |(i, _)| i + 1)
}

impl InstanceError {
    /// The id of the record, when this says that the record is damaged.
    pub fn damaged_id(&self) -> Option<&str> {
        match self {
            InstanceError::Damaged { id, .. } | InstanceError::NotItsDirectory { id, .. } => Some(id),
            _ => None,
        }
    }
}

impl Instance {
    /// A record of an instance not yet started (no process, no image id, kept when it ends), made now.
    pub fn created(id: &str, name: &str, image: &str, command: Vec<String>, ports: Vec<String>) -> Instance {
        Instance {
            id: id.to_string(),
            name: name.to_string(),
            image: image.to_string(),
            image_id: None,
            command,
            ports,
            state: State::Created,
            pid: None,
            pid_start: None,
            created_ms: now(),
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            reason: None,
            auto_remove: false,
            launch: None,
            kilnd: false,
            restart: RestartPolicy::No,
            restarts: 0,
            stopped: false,
            health_check: None,
            health: None,
            service: None,
            kept: false,
            jailed: false,
        }
    }

    /// Whether its VMM process is still the one recorded.
    pub fn vmm_alive(&self) -> bool {
        match (self.pid, self.pid_start) {
            (Some(pid), Some(start)) => process_start(pid) == Some(start),
            _ => false,
        }
    }

    /// Whether the record says running (or starting, with a process) but that process is gone.
    fn lost(&self) -> bool {
        match self.state {
            State::Running => !self.kept && !self.vmm_alive(),
            State::Restarting => !self.vmm_alive(),
            State::Created => self.pid.is_some() && !self.vmm_alive(),
            State::Exited => false,
        }
    }

    /// The host port part of each published port (`127.0.0.1:8080:80/tcp` → `127.0.0.1:8080/tcp`), for conflicts.
    fn host_ports(&self) -> Vec<(u16, String)> {
        self.ports
            .iter()
            .filter_map(|p| p.parse::<kiln_usernet::PortForward>().ok())
            .map(|f| (f.host_port, f.proto.to_string()))
            .collect()
    }
}

/// The instances in a store.
pub struct Instances<'a> {
    store: &'a Store,
}

impl<'a> Instances<'a> {
    pub fn new(store: &'a Store) -> Self {
        Instances { store }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.store.root().join("instances").join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log")
    }

    /// Where the core file of a crash of a detached instance is.
    pub fn core_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("core")
    }

    /// An unnamed file in the instance's folder for a crash's core file (O_TMPFILE): the crashed vCPU's thread writes
    /// it with the calls its seccomp list has, and [`Instances::name_core`] names it. An error where the folder's file
    /// system cannot (the instance then has no core file).
    pub fn unnamed_core(&self, id: &str) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(self.dir(id))
    }

    /// Gives the core file written into `file` (from [`Instances::unnamed_core`]) its name, replacing an older one.
    pub fn name_core(&self, id: &str, file: &std::fs::File) -> std::io::Result<()> {
        name_unnamed(file, &self.core_path(id))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("record.json")
    }

    pub fn save(&self, instance: &Instance) -> Result<(), InstanceError> {
        let mut bytes = serde_json::to_vec_pretty(instance).expect("a record always serialises");
        bytes.push(b'\n');
        Ok(write_atomically(&self.record_path(&instance.id), &bytes)?)
    }

    pub fn load(&self, id: &str) -> Result<Instance, InstanceError> {
        let path = self.record_path(id);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => InstanceError::NoSuch(id.to_string()),
            _ => InstanceError::Store(StoreError::Io { path: path.clone(), source: e }),
        })?;
        let instance: Instance = serde_json::from_slice(&bytes).map_err(|source| InstanceError::Damaged {
            id: id.to_string(),
            path: path.clone(),
            source,
        })?;
        // The id names the directory `kiln rm` removes: one that is not this record's own could be any path.
        if instance.id != id {
            return Err(InstanceError::NotItsDirectory { id: id.to_string(), path, named: instance.id });
        }
        Ok(instance)
    }

    /// Every instance, oldest first, as [`Instances::observe`] sees it.
    pub fn list(&self) -> Result<Vec<Instance>, InstanceError> {
        self.records()?.into_iter().map(|i| self.observe(i)).collect()
    }

    /// Every record as written, oldest first: without [`Instances::observe`]'s corrections, which take the store's
    /// lock, so that a command holding it can read them.
    pub fn records(&self) -> Result<Vec<Instance>, InstanceError> {
        Ok(self.records_and_damaged()?.0)
    }

    /// The ids of records that cannot be read (see [`InstanceError::Damaged`]): left out of [`Instances::list`], so
    /// that one damaged record stops neither `kiln ps` nor `kiln run -d`, and removable by `kiln rm ID`.
    pub fn damaged(&self) -> Result<Vec<InstanceError>, InstanceError> {
        Ok(self.records_and_damaged()?.1)
    }

    fn records_and_damaged(&self) -> Result<(Vec<Instance>, Vec<InstanceError>), InstanceError> {
        let dir = self.store.root().join("instances");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(source) => return Err(StoreError::Io { path: dir, source }.into()),
        };
        let (mut all, mut damaged) = (Vec::new(), Vec::new());
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.load(&id) {
                Ok(instance) => all.push(instance),
                // Removed meanwhile (`--rm`), or not written yet.
                Err(InstanceError::NoSuch(_)) => {}
                Err(e @ (InstanceError::Damaged { .. } | InstanceError::NotItsDirectory { .. })) => damaged.push(e),
                Err(e) => return Err(e),
            }
        }
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok((all, damaged))
    }

    /// The record, corrected if it says running but its VMM is gone: it is then exited, with the reason.
    pub fn observe(&self, instance: Instance) -> Result<Instance, InstanceError> {
        if !instance.lost() {
            return Ok(instance);
        }
        let _lock = self.store.lock()?;
        // The VMM may have recorded its exit between the first read and the liveness check.
        let mut fresh = match self.load(&instance.id) {
            Ok(fresh) => fresh,
            Err(InstanceError::NoSuch(_)) => return Ok(instance),
            Err(e) => return Err(e),
        };
        if fresh.lost() {
            fresh.reason = Some(match fresh.state {
                State::Created => "its process ended before the VM booted".into(),
                _ => "the VMM process died without recording an exit (killed, or it crashed)".into(),
            });
            fresh.state = State::Exited;
            fresh.finished_ms = Some(now());
            self.save(&fresh)?;
        }
        Ok(fresh)
    }

    /// The instance `what` names: a name, an id, or a unique prefix of an id. The exact id of a damaged record
    /// gives its [`InstanceError::Damaged`] error.
    pub fn find(&self, what: &str) -> Result<Instance, InstanceError> {
        if let Some(damaged) = self.damaged()?.into_iter().find(|e| e.damaged_id() == Some(what)) {
            return Err(damaged);
        }
        let all = self.list()?;
        if let Some(found) = all.iter().find(|i| i.name == what || i.id == what) {
            return Ok(found.clone());
        }
        let mut prefixed = all.into_iter().filter(|i| what.len() >= 3 && i.id.starts_with(what));
        match (prefixed.next(), prefixed.next()) {
            (Some(found), None) => Ok(found),
            (Some(_), Some(_)) => Err(InstanceError::Ambiguous(what.to_string())),
            _ => Err(InstanceError::NoSuch(what.to_string())),
        }
    }

    /// Records a new instance, after checking under the store's lock that its name is free and that no running
    /// instance publishes one of its host ports.
    pub fn create(&self, instance: &Instance) -> Result<(), InstanceError> {
        if !valid_name(&instance.name) {
            return Err(InstanceError::BadName { name: instance.name.clone() });
        }
        let _lock = self.store.lock()?;
        for other in self.records()? {
            if other.name == instance.name {
                return Err(InstanceError::NameTaken { name: other.name.clone(), id: other.id.clone() });
            }
            if other.state == State::Exited || other.lost() {
                continue;
            }
            for (port, proto) in instance.host_ports() {
                if other.host_ports().contains(&(port, proto.clone())) {
                    return Err(InstanceError::PortTaken {
                        port: format!("{port}/{proto}"),
                        name: other.name.clone(),
                        id: other.id.clone(),
                    });
                }
            }
        }
        self.save(instance)
    }

    /// Changes a record under the store's lock (so that `kiln stop` and the VMM do not overwrite each other).
    pub fn update(&self, id: &str, change: impl FnOnce(&mut Instance)) -> Result<Instance, InstanceError> {
        let _lock = self.store.lock()?;
        let mut instance = self.load(id)?;
        change(&mut instance);
        self.save(&instance)?;
        Ok(instance)
    }

    pub fn remove(&self, id: &str) -> Result<(), InstanceError> {
        let dir = self.dir(id);
        std::fs::remove_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    fn sample(id: &str, name: &str, ports: &[&str]) -> Instance {
        Instance::created(id, name, "web", vec!["/web".into()], ports.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn a_default_name_in_use_takes_more_of_the_id() {
        let taken = ["web-abcd", "web-abcdef"];
        let mut tried = Vec::new();
        let result = create_with_default_name("web", "abcdef123456", |name| {
            tried.push(name.to_string());
            match taken.contains(&name) {
                true => Err(InstanceError::NameTaken { name: name.into(), id: "other".into() }),
                false => Ok(()),
            }
        });
        assert!(result.is_ok());
        assert_eq!(tried, ["web-abcd", "web-abcdef", "web-abcdef12"]);
        // Another error is no reason to try another name.
        let mut calls = 0;
        let result = create_with_default_name("web", "abcdef123456", |_| {
            calls += 1;
            Err(InstanceError::BadName { name: "x".into() })
        });
        assert!(matches!(result, Err(InstanceError::BadName { .. })) && calls == 1);
    }

    #[test]
    fn names_come_from_files_and_images() {
        assert_eq!(default_name_base("hello"), "hello");
        assert_eq!(default_name_base("my app"), "my-app");
        assert_eq!(default_name_base(".hidden"), "i.hidden");
        assert_eq!(default_name_base(&"x".repeat(300)).len(), 64);
    }

    #[test]
    fn tails_count_lines_from_the_end() {
        let log = b"one\ntwo\nthree\n";
        assert_eq!(&log[tail_start(log, 1)..], b"three\n");
        assert_eq!(&log[tail_start(log, 2)..], b"two\nthree\n");
        assert_eq!(&log[tail_start(log, 9)..], log);
        assert_eq!(&log[tail_start(log, 0)..], b"");
        assert_eq!(&b"a\nb"[tail_start(b"a\nb", 1)..], b"b");
    }

    #[test]
    fn the_start_time_tells_a_live_process_from_a_reused_pid() {
        let me = std::process::id();
        let start = process_start(me).expect("this process runs");
        let mut i = sample("a", "a", &[]);
        (i.pid, i.pid_start) = (Some(me), Some(start));
        assert!(i.vmm_alive());
        i.pid_start = Some(start + 1);
        assert!(!i.vmm_alive());
        assert_eq!(process_start(u32::MAX), None);
    }

    #[test]
    fn names_and_host_ports_are_unique() {
        let store = temp_store("instances");
        let instances = Instances::new(&store);
        let mut web = sample("aaaaaaaaaaaa", "web", &["8080:80"]);
        instances.create(&web).unwrap();
        let err = instances.create(&sample("bbbbbbbbbbbb", "web", &[])).unwrap_err();
        assert!(matches!(err, InstanceError::NameTaken { .. }), "{err}");
        let err = instances.create(&sample("bbbbbbbbbbbb", "api", &["127.0.0.1:8080:81"])).unwrap_err();
        assert_eq!(err.to_string(), "host port 8080/tcp is already published by instance web (aaaaaaaaaaaa)");
        instances.create(&sample("bbbbbbbbbbbb", "dns", &["8080:53/udp"])).unwrap();
        assert!(matches!(instances.create(&sample("c", "bad name", &[])), Err(InstanceError::BadName { .. })));
        // A running record whose process is gone is seen as exited, with the reason, and frees its ports.
        web.state = State::Running;
        (web.pid, web.pid_start) = (Some(std::process::id()), Some(1));
        instances.save(&web).unwrap();
        let seen = instances.find("web").unwrap();
        assert_eq!(seen.state, State::Exited);
        assert!(seen.reason.unwrap().contains("died without recording an exit"));
        instances.create(&sample("cccccccccccc", "web2", &["8080:80"])).unwrap();
        // So is one still starting whose process is gone.
        let mut starting = sample("dddddddddddd", "starting", &[]);
        (starting.pid, starting.pid_start) = (Some(std::process::id()), Some(1));
        instances.create(&starting).unwrap();
        let seen = instances.find("starting").unwrap();
        assert_eq!(
            (seen.state, seen.reason.as_deref()),
            (State::Exited, Some("its process ended before the VM booted"))
        );
        instances.remove("dddddddddddd").unwrap();
        assert_eq!(instances.find("aaaa").unwrap().name, "web");
        assert!(matches!(instances.find("zzz"), Err(InstanceError::NoSuch(_))));
        assert_eq!(instances.list().unwrap().len(), 3);
        instances.remove("aaaaaaaaaaaa").unwrap();
        assert_eq!(instances.list().unwrap().len(), 2);

        // A damaged record, or one whose id is not its directory's, is left out of the list, not fatal to it, and
        // found only by its exact id, as damaged.
        std::fs::create_dir_all(instances.dir("eeeeeeeeeeee")).unwrap();
        std::fs::write(instances.record_path("eeeeeeeeeeee"), b"{\"id\": ").unwrap();
        let escape = serde_json::to_vec(&sample("../../..", "escape", &[])).unwrap();
        std::fs::create_dir_all(instances.dir("ffffffffffff")).unwrap();
        std::fs::write(instances.record_path("ffffffffffff"), escape).unwrap();
        assert_eq!(instances.list().unwrap().len(), 2);
        let mut damaged: Vec<_> =
            instances.damaged().unwrap().iter().map(|e| e.damaged_id().unwrap().to_string()).collect();
        damaged.sort();
        assert_eq!(damaged, ["eeeeeeeeeeee", "ffffffffffff"]);
        let err = instances.find("eeeeeeeeeeee").unwrap_err();
        assert!(err.to_string().ends_with("is damaged (kiln rm eeeeeeeeeeee removes it)"), "{err}");
        assert!(matches!(instances.find("ffffffffffff"), Err(InstanceError::NotItsDirectory { .. })));
        instances.create(&sample("gggggggggggg", "after", &[])).unwrap();
        std::fs::remove_dir_all(store.root()).unwrap();
    }
}
