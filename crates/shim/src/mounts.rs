//! The bundle's `mounts` as a Kiln VM takes them: a bind-mounted host file (CRI's `/etc/resolv.conf`, `/etc/hosts`,
//! `/etc/hostname`) is copied into the guest's root filesystem, as `kiln run --file` copies one; a read-only bind
//! mount of a host directory is copied in as `--dir` copies one; a writable one becomes a volume of its own
//! (`writable.rs`); the kernel filesystems (`/proc`, `/sys`, `/dev`, a tmpfs) are the library OS's own. Anything else
//! is refused at create, with the reason.

use serde::Deserialize;
use std::path::PathBuf;

/// One entry of `config.json`'s `mounts`.
#[derive(Debug, Default, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Filesystems the library OS provides by itself (or, for a tmpfs, whose empty, writable, memory-backed directory
/// the guest's own root filesystem already is).
const KERNEL_FILESYSTEMS: [&str; 8] = ["proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm"];
/// Where the library OS's own filesystems live: nothing is copied under them.
const KERNEL_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MountError {
    #[error("mount at {0:?}: the destination is not an absolute path")]
    Destination(String),
    #[error("mount of type {kind:?} at {destination}: Kiln takes bind mounts of host files and directories only")]
    Kind { kind: String, destination: String },
    #[error("bind mount of {host} at {destination}: {problem}")]
    Source { host: String, destination: String, problem: String },
}

/// What the mounts add to the guest's root filesystem: host files and host directories, each with its guest path;
/// and the writable host directories, each a volume mounted at its guest path.
#[derive(Debug, Default, PartialEq)]
pub struct Copies {
    pub files: Vec<(PathBuf, String)>,
    pub dirs: Vec<(PathBuf, String)>,
    pub writable: Vec<(PathBuf, String)>,
}

pub fn copies(mounts: &[Mount]) -> Result<Copies, MountError> {
    let mut copies = Copies::default();
    for mount in mounts {
        let destination = mount.destination.trim_end_matches('/');
        if !mount.destination.starts_with('/') {
            return Err(MountError::Destination(mount.destination.clone()));
        }
        let kernel_tree = KERNEL_TREES.iter().any(|t| destination == *t || destination.starts_with(&format!("{t}/")));
        let bind = mount.kind == "bind" || mount.options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            if KERNEL_FILESYSTEMS.contains(&mount.kind.as_str()) {
                continue;
            }
            return Err(MountError::Kind { kind: mount.kind.clone(), destination: destination.into() });
        }
        // Kubernetes' termination log, and anything else a runtime binds into the kernel's trees.
        if kernel_tree {
            continue;
        }
        let source_problem = |problem: String| MountError::Source {
            host: mount.source.clone(),
            destination: destination.into(),
            problem,
        };
        let metadata = std::fs::metadata(&mount.source).map_err(|e| source_problem(e.to_string()))?;
        let guest = if destination.is_empty() { "/".to_string() } else { destination.to_string() };
        if metadata.is_file() {
            copies.files.push((PathBuf::from(&mount.source), guest));
        } else if metadata.is_dir() {
            match mount.options.iter().any(|o| o == "ro") {
                true => copies.dirs.push((PathBuf::from(&mount.source), guest)),
                false => copies.writable.push((PathBuf::from(&mount.source), guest)),
            }
        } else {
            return Err(source_problem("neither a file nor a directory (Kiln copies only those into the VM)".into()));
        }
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            destination: destination.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn files_and_read_only_directories_are_copied_in() {
        let dir = std::env::temp_dir().join(format!("kiln-shim-mounts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();
        let resolv = dir.join("resolv.conf").display().to_string();
        let data = dir.join("data").display().to_string();
        let mounts = [
            mount("/proc", "proc", "proc", &[]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid"]),
            mount("/dev/termination-log", "bind", &resolv, &["rbind", "rw"]),
            mount("/etc/resolv.conf", "bind", &resolv, &["rbind", "rw"]),
            mount("/srv/data/", "", &data, &["rbind", "ro"]),
        ];
        let found = copies(&mounts).unwrap();
        assert_eq!(found.files, [(PathBuf::from(&resolv), "/etc/resolv.conf".to_string())]);
        assert_eq!(found.dirs, [(PathBuf::from(&data), "/srv/data".to_string())]);

        let writable = copies(&[mount("/srv/data", "bind", &data, &["rbind", "rw"])]).unwrap();
        assert_eq!(writable.writable, [(PathBuf::from(&data), "/srv/data".to_string())]);
        assert!(writable.dirs.is_empty());
        let nfs = copies(&[mount("/srv", "nfs", "server:/export", &[])]).unwrap_err();
        assert!(nfs.to_string().contains("type \"nfs\""), "{nfs}");
        let missing = copies(&[mount("/etc/hosts", "bind", "/nonexistent/kiln", &["rbind"])]).unwrap_err();
        assert!(matches!(missing, MountError::Source { .. }), "{missing}");
        assert!(copies(&[mount("etc/hosts", "bind", &resolv, &[])]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
