//! Named volumes (`$KILN_HOME/volumes/NAME.ext2`, see `kiln volume`) as a launch attaches them: each file opened and
//! locked (`flock`, exclusive) for as long as the VM runs, so that a second instance cannot attach it and
//! `kiln volume rm` will not delete it meanwhile, and checked first so that the library OS can mount it.

use crate::home::{kiln_home, NoHome};
use crate::overrides::check_volume_name;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    NoHome(#[from] NoHome),
    #[error("{0}")]
    BadName(String),
    #[error("no such volume {0}; create it with `kiln volume create {0}`")]
    NoSuch(String),
    #[error("cannot open volume {name} ({path})")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {0} is attached to another running instance; a volume can be attached to one at a time")]
    Attached(String),
    #[error("cannot read volume {name}")]
    Metadata {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {name}: {problem}; check it with `e2fsck -f {path}`")]
    Unmountable { name: String, problem: String, path: PathBuf },
    #[error("cannot lock volume {name}")]
    Lock {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {0} keeps being deleted and created again; try again")]
    KeepsChanging(String),
    #[error("volume {0} was not detached cleanly and needs a check, but e2fsck is not installed; install e2fsprogs")]
    NoE2fsck(String),
    #[error("cannot run e2fsck")]
    RunE2fsck(#[source] std::io::Error),
    #[error("volume {name} was not detached cleanly and e2fsck cannot repair it; run `e2fsck -f {path}`")]
    Unrepairable { name: String, path: PathBuf },
    #[error("{0} volumes: a VM mounts at most {max}", max = kiln_abi::boot::MAX_VOLUMES)]
    TooMany(usize),
}

/// A volume attached to a launch.
pub struct Attached {
    pub volumes: Vec<kiln_vmm::VolumeConfig>,
    /// What the launcher should tell the user (a volume that e2fsck repaired).
    pub notices: Vec<String>,
}

pub fn volumes_dir() -> Result<PathBuf, VolumeError> {
    Ok(kiln_home().ok_or(NoHome("volumes"))?.join("volumes"))
}

pub fn volume_path(name: &str) -> Result<PathBuf, VolumeError> {
    check_volume_name(name).map_err(VolumeError::BadName)?;
    Ok(volumes_dir()?.join(format!("{name}.ext2")))
}

/// Opens and locks each volume of a launch (the resolver has checked the list), in mount order.
pub fn attach_all(mounts: &[(String, String)]) -> Result<Attached, VolumeError> {
    let mut attached = Attached { volumes: Vec::with_capacity(mounts.len()), notices: Vec::new() };
    for (name, mount) in mounts {
        let (file, notice) = attach(name)?;
        attached.notices.extend(notice);
        attached.volumes.push(kiln_vmm::VolumeConfig { file, name: name.clone(), mount: mount.clone() });
    }
    Ok(attached)
}

/// Opens and locks each volume of a snapshot's launch for its restore, in mount order: not checked or repaired as
/// for a boot (the guest's file system is mounted in the snapshot, so never clean, and a repair would change the file
/// the restore needs unchanged: the VMM compares it with the snapshot's).
pub fn reattach_all(mounts: &[(String, String)]) -> Result<Vec<kiln_vmm::VolumeConfig>, VolumeError> {
    let mut volumes = Vec::with_capacity(mounts.len());
    for (name, mount) in mounts {
        let (_, file) = open_locked(name, true)?.ok_or_else(|| VolumeError::Attached(name.to_string()))?;
        volumes.push(kiln_vmm::VolumeConfig { file, name: name.clone(), mount: mount.clone() });
    }
    Ok(volumes)
}

/// Opens and locks each volume file of a launch (a container's writable mount, `LaunchSpec::volume_files`), after
/// the `named` ones already attached, and checks that the library OS can mount it; named in messages by its path.
pub fn attach_files(named: &mut Attached, files: &[(PathBuf, String)]) -> Result<(), VolumeError> {
    let total = named.volumes.len() + files.len();
    if total > kiln_abi::boot::MAX_VOLUMES {
        return Err(VolumeError::TooMany(total));
    }
    for (path, mount) in files {
        let name = path.display().to_string();
        let file = match File::options().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(source) => return Err(VolumeError::Open { name, path: path.clone(), source }),
        };
        if !lock_exclusive(&file).map_err(|source| VolumeError::Lock { name: name.clone(), source })? {
            return Err(VolumeError::Attached(name));
        }
        let len = file.metadata().map_err(|source| VolumeError::Metadata { name: name.clone(), source })?.len();
        if let Err(e) = kiln_ext2::Ext2::mount(HostFile(&file), len, 64, || 0) {
            return Err(VolumeError::Unmountable { name, problem: e.to_string(), path: path.clone() });
        }
        named.volumes.push(kiln_vmm::VolumeConfig { file, name, mount: mount.clone() });
    }
    Ok(())
}

/// Opens volume `name`, for writing if `write` (an instance's); `ls`, `inspect` and `rm` only read it and lock it.
pub fn open_existing(name: &str, write: bool) -> Result<(PathBuf, File), VolumeError> {
    let path = volume_path(name)?;
    match File::options().read(true).write(write).open(&path) {
        Ok(f) => Ok((path, f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VolumeError::NoSuch(name.to_string())),
        Err(source) => Err(VolumeError::Open { name: name.to_string(), path, source }),
    }
}

/// Reads a volume file for the check before boot (the VM does the writing).
struct HostFile<'a>(&'a File);

impl kiln_ext2::BlockDevice for HostFile<'_> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), kiln_ext2::IoError> {
        self.0.read_exact_at(buf, offset).map_err(|_| kiln_ext2::IoError)
    }
    fn write(&mut self, _: &[(u64, &[u8])], _: bool) -> Result<(), kiln_ext2::IoError> {
        Err(kiln_ext2::IoError)
    }
}

/// Opens volume `name` for an instance and locks it for as long as the file stays open; checks first that the
/// library OS will be able to mount it, and repairs it if its last VM did not detach it (the notice says so).
fn attach(name: &str) -> Result<(File, Option<String>), VolumeError> {
    let (path, file) = open_locked(name, true)?.ok_or_else(|| VolumeError::Attached(name.to_string()))?;
    let len = file.metadata().map_err(|source| VolumeError::Metadata { name: name.to_string(), source })?.len();
    let clean = match kiln_ext2::Ext2::mount(HostFile(&file), len, 64, || 0) {
        Ok(fs) => fs.was_clean(),
        Err(e) => return Err(VolumeError::Unmountable { name: name.to_string(), problem: e.to_string(), path }),
    };
    let notice = if clean { None } else { repair(name, &path)? };
    Ok((file, notice))
}

/// Opens volume `name` and takes its exclusive lock; `None` if an instance holds it. The lock is taken on what was
/// opened, so the name is checked again afterwards: a `kiln volume rm` that deleted the file between the open and the
/// lock must not leave us attaching (or deleting) a file no name reaches, or a newer volume of the same name unlocked.
pub fn open_locked(name: &str, write: bool) -> Result<Option<(PathBuf, File)>, VolumeError> {
    for _ in 0..3 {
        let (path, file) = open_existing(name, write)?;
        if !lock_exclusive(&file).map_err(|source| VolumeError::Lock { name: name.to_string(), source })? {
            return Ok(None);
        }
        if names(&path, &file) {
            return Ok(Some((path, file)));
        }
    }
    Err(VolumeError::KeepsChanging(name.to_string()))
}

/// Whether `path` still names the open file `file`.
fn names(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(at_path), Ok(open)) => at_path.dev() == open.dev() && at_path.ino() == open.ino(),
        _ => false,
    }
}

/// Takes `file`'s exclusive lock; false if someone keeps holding it. `ls` and `inspect` take a shared lock for a
/// moment to see whether a volume is attached, so a busy lock is tried again for a while before it counts as an
/// instance's, which holds it for as long as it runs.
fn lock_exclusive(file: &File) -> std::io::Result<bool> {
    for attempt in 0..50 {
        // SAFETY: flock on the descriptor `file` owns; the lock lives as long as the open file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if attempt < 49 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    Ok(false)
}

/// Has e2fsck check and repair a volume whose last VM did not unmount it (killed, or the host crashed), as a Linux
/// boot does for a filesystem not cleanly unmounted: writing to it unchecked could spread the damage. `-y`, not
/// `-p`: a VM killed between a sync's two batches can leave an inode that a deleted or renamed-over name no longer
/// reaches, which preen mode leaves to a person; `-y` puts it in lost+found, and nothing that was synced is lost.
/// What to tell the user, if e2fsck repaired something.
fn repair(name: &str, path: &Path) -> Result<Option<String>, VolumeError> {
    let out = Command::new("e2fsck").arg("-fy").arg(path).output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VolumeError::NoE2fsck(name.to_string()),
        _ => VolumeError::RunE2fsck(e),
    })?;
    // 0: clean; 1: errors corrected. Anything else needs a person.
    match out.status.code() {
        Some(0) => Ok(None),
        Some(1) => Ok(Some(format!("volume {name} was not detached cleanly (its VM was killed?); e2fsck repaired it"))),
        _ => Err(VolumeError::Unrepairable { name: name.to_string(), path: path.to_path_buf() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kiln-launch-volume-{test}-{}", std::process::id()))
    }

    #[test]
    fn a_file_deleted_and_created_again_is_not_the_one_opened() {
        let path = scratch("names");
        std::fs::write(&path, b"first").unwrap();
        let first = File::open(&path).unwrap();
        assert!(names(&path, &first));
        std::fs::remove_file(&path).unwrap();
        assert!(!names(&path, &first), "deleted");
        std::fs::write(&path, b"second").unwrap();
        assert!(!names(&path, &first), "deleted and created again");
        std::fs::remove_file(&path).unwrap();
    }
}
