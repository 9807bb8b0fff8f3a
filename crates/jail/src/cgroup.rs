//! cgroup v2 limits around a jailed VMM: memory, CPU time and processes, counted for the whole process (the rlimits
//! count address space, which says little about memory in use, and processes per uid). A cgroup `kiln-KEY` is made
//! under the one the process runs in, its limits set and the process moved into it before the VM is built; the
//! jail's parent removes it once the child has ended.
//!
//! This needs the host to give kiln's cgroup the `memory`, `cpu` and `pids` controllers on a unified (v2) hierarchy
//! mounted at /sys/fs/cgroup. Where it does not (cgroups v1, or a hybrid host whose controllers are all on v1
//! hierarchies; a cgroup that holds processes and whose controllers are not yet handed down, which the kernel then
//! refuses), the jail goes on without these limits and says why ([`Cgroup::Unavailable`]).

use crate::{os, JailError};
use std::path::{Path, PathBuf};

/// `statfs`'s f_type for a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: u32 = 0x6367_7270;
/// The controllers the limits need.
const NEEDED: [&str; 3] = ["memory", "cpu", "pids"];
/// cpu.max's period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// What the cgroup holds the jailed process to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Bytes of memory (`memory.max`): the guest's RAM and the VMM's own.
    pub memory: u64,
    /// CPUs' worth of time (`cpu.max`): one per vCPU.
    pub cpus: u32,
    /// Tasks (`pids.max`): threads count.
    pub processes: u64,
}

impl CgroupLimits {
    /// The limits for a VM of `memory` bytes and `cpus` vCPUs: its memory plus 256 MiB for the VMM (the relay's
    /// buffers, the heap, the page tables), a CPU per vCPU, and as many tasks as the process limit allows.
    pub fn for_vm(memory: u64, cpus: u32) -> CgroupLimits {
        CgroupLimits { memory: memory.saturating_add(256 << 20), cpus, processes: u64::from(cpus) + 8 }
    }
}

/// What became of the cgroup limits.
#[derive(Debug, PartialEq, Eq)]
pub enum Cgroup {
    /// The process is in this cgroup, with the limits set.
    Joined(PathBuf),
    /// No cgroup v2 limits, and why.
    Unavailable(String),
}

/// Moves the calling process into a new cgroup `kiln-KEY` under its own (cgroup v2) with `limits`. Call it as root,
/// before the VM is built, so that all of its memory is counted there.
pub fn join(key: u32, limits: &CgroupLimits) -> Result<Cgroup, JailError> {
    let Some(parent) = own_cgroup()? else {
        return Ok(Cgroup::Unavailable(
            "/sys/fs/cgroup is not a cgroup v2 hierarchy (this host's cgroups are v1, or hybrid)".into(),
        ));
    };
    join_under(&parent, key, limits)
}

/// Removes the cgroup [`join`] made with `key`, once the process in it has ended (nothing to do if there is none):
/// whether none is left (false while a process is still in it).
pub fn remove(key: u32) -> bool {
    match own_cgroup() {
        Ok(Some(parent)) => match std::fs::remove_dir(parent.join(name(key))) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        },
        Ok(None) | Err(_) => true,
    }
}

fn name(key: u32) -> String {
    format!("kiln-{key}")
}

/// The calling process's cgroup directory in the unified hierarchy at /sys/fs/cgroup; None when that is not one.
fn own_cgroup() -> Result<Option<PathBuf>, JailError> {
    let root = Path::new("/sys/fs/cgroup");
    if !is_cgroup2(root) {
        return Ok(None);
    }
    let table = std::fs::read_to_string("/proc/self/cgroup").map_err(os("read /proc/self/cgroup"))?;
    Ok(unified_path(&table).map(|path| root.join(path.trim_start_matches('/'))))
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs writes one `statfs` into the buffer it is given, and reads a valid C string.
    if unsafe { libc::statfs(c_path.as_ptr(), fs.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled the buffer.
    let fs = unsafe { fs.assume_init() };
    fs.f_type == CGROUP2_SUPER_MAGIC.into()
}

/// The unified hierarchy's path in a `/proc/PID/cgroup` table (its `0::PATH` line).
fn unified_path(table: &str) -> Option<&str> {
    table.lines().find_map(|line| line.strip_prefix("0::"))
}

/// [`join`] under the cgroup directory `parent`.
fn join_under(parent: &Path, key: u32, limits: &CgroupLimits) -> Result<Cgroup, JailError> {
    let read = |file: &str| std::fs::read_to_string(parent.join(file)).unwrap_or_default();
    let offered = read("cgroup.controllers");
    let missing: Vec<&str> = NEEDED.into_iter().filter(|c| !offered.split_whitespace().any(|o| o == *c)).collect();
    if !missing.is_empty() {
        return Ok(Cgroup::Unavailable(format!(
            "{} does not offer the {} controller(s): the host has not delegated them to kiln's cgroup",
            parent.display(),
            missing.join(", ")
        )));
    }
    let enabled = read("cgroup.subtree_control");
    for controller in NEEDED.into_iter().filter(|c| !enabled.split_whitespace().any(|e| e == *c)) {
        if let Err(e) = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{controller}")) {
            return Ok(Cgroup::Unavailable(format!(
                "cannot hand the {controller} controller down from {} ({e}; a cgroup that holds processes cannot: \
                 run kiln in a cgroup of its own with the controllers delegated)",
                parent.display()
            )));
        }
    }
    let dir = parent.join(name(key));
    // One left by an earlier process of the same pid that was killed before its parent could remove it.
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).map_err(os("make the jail's cgroup"))?;
    let set = |file: &str, value: String| std::fs::write(dir.join(file), value);
    let result = set("memory.max", limits.memory.to_string())
        .and_then(|()| set("cpu.max", format!("{} {CPU_PERIOD_US}", u64::from(limits.cpus) * CPU_PERIOD_US)))
        .and_then(|()| set("pids.max", limits.processes.to_string()))
        // "0" is the writer itself.
        .and_then(|()| set("cgroup.procs", "0".into()));
    if let Err(e) = result {
        let _ = std::fs::remove_dir(&dir);
        return Err(JailError::Os("set the jail's cgroup limits", e));
    }
    Ok(Cgroup::Joined(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out as a cgroup v2 directory's interface files are (plain files here: the kernel's checks are
    /// not there, only what the code writes where).
    fn fake_cgroup(test: &str, controllers: &str, subtree: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-jail-cgroup-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), subtree).unwrap();
        dir
    }

    #[test]
    fn the_limits_are_written_and_the_process_moved_into_a_cgroup_of_its_own() {
        let parent = fake_cgroup("joined", "cpuset cpu io memory pids\n", "memory pids cpu\n");
        let limits = CgroupLimits::for_vm(512 << 20, 2);
        let joined = join_under(&parent, 77, &limits).unwrap();
        let dir = parent.join("kiln-77");
        assert_eq!(joined, Cgroup::Joined(dir.clone()));
        let file = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(file("memory.max"), (768u64 << 20).to_string());
        assert_eq!(file("cpu.max"), "200000 100000");
        assert_eq!(file("pids.max"), "10");
        assert_eq!(file("cgroup.procs"), "0");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn controllers_not_yet_handed_down_are_enabled_first() {
        let parent = fake_cgroup("enable", "cpu memory pids", "");
        join_under(&parent, 1, &CgroupLimits::for_vm(1 << 30, 1)).unwrap();
        // The fake keeps the last write: the last controller enabled.
        assert_eq!(std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(), "+pids");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_cgroup_without_the_controllers_says_which_are_missing() {
        let parent = fake_cgroup("missing", "cpu io", "cpu");
        let Cgroup::Unavailable(why) = join_under(&parent, 1, &CgroupLimits::for_vm(1 << 30, 1)).unwrap() else {
            panic!("joined without the controllers");
        };
        assert!(why.contains("memory, pids controller(s)"), "{why}");
        assert!(!parent.join("kiln-1").exists());
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn the_unified_line_of_a_cgroup_table_is_found() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n1:cpu:/\n0::/\n";
        assert_eq!(unified_path(hybrid), Some("/"));
        assert_eq!(unified_path("0::/system.slice/kiln.service\n"), Some("/system.slice/kiln.service"));
        assert_eq!(unified_path("4:memory:/x\n"), None);
    }

    /// On this machine: whatever the hierarchy, joining says what it did or why not, and never fails for a host
    /// without cgroup v2.
    #[test]
    fn joining_on_this_host_is_joined_or_says_why_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // On a v2 host joining is not tried here, since it would move the test process itself.
        if own_cgroup().unwrap().is_none() {
            match join(u32::MAX, &CgroupLimits::for_vm(1 << 30, 1)).unwrap() {
                Cgroup::Unavailable(why) => assert!(why.contains("not a cgroup v2 hierarchy"), "{why}"),
                Cgroup::Joined(dir) => panic!("joined {} with no cgroup v2 hierarchy", dir.display()),
            }
        }
    }
}
