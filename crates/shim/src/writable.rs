//! A container's writable directory mounts (an `emptyDir`, a `hostPath` or a persistent volume mounted read-write):
//! each becomes an ext2 volume of its own, a file in the container's state folder (the bundle) that the VM mounts at
//! the mount's destination as it mounts a `kiln volume`. At create the host directory's files are copied into it
//! (`mkfs.ext2 -d`, the tool `kiln volume create` uses, bounded by the volume's size); when the VM process ends, what
//! the volume then holds is written back into the host directory (read with Kiln's ext2 code, `kiln_ext2`), so that a
//! later container of the pod, or the host, sees it. An ext2 image cannot be shared by two live VMs: the host
//! directory is locked (`flock`) from create to write-back, and a second Kiln container that mounts it writable
//! meanwhile is refused.
//!
//! The volume is the guest's, and the guest is hostile: the write-back follows no symbolic link on the host (every
//! file is opened by name beneath a directory it holds open, with `O_NOFOLLOW`), takes names only as a directory entry
//! may have them, drops set-user-ID and set-group-ID bits, and is bounded (entries, bytes, depth; a directory met twice
//! is a loop and is not entered again).

use kiln_ext2::{BlockDevice, Ext2, FileType, IoError, ROOT_INO};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `io.kiln.volume-size.DEST`: the size of the volume for the writable mount at DEST (its path as the mount gives it,
/// or with its slashes as dots, which a Kubernetes annotation key can hold: `io.kiln.volume-size.var.cache`).
pub const VOLUME_SIZE_ANNOTATION: &str = "io.kiln.volume-size.";
/// A volume's size when no annotation says: sparse, so what is not written costs nothing (as `kiln volume create`'s).
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;
/// The smallest and largest volume (ext2 with 4 KiB blocks; 1 TiB is far more than a pod's scratch space).
pub const MIN_VOLUME_SIZE: u64 = 4 << 20;
pub const MAX_VOLUME_SIZE: u64 = 1 << 40;
/// Most entries a write-back makes (and a copy-in counts), and how deep it goes: bounds, not limits anyone meets.
const MAX_ENTRIES: u64 = 1_000_000;
const MAX_DEPTH: u32 = 256;
/// What one file or directory costs on the volume besides its data, for the copy-in's estimate.
const ENTRY_COST: u64 = 4096;
/// How long the shim's reaper may take to tell a reaped child's exit.
const REAPED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The directory mkfs.ext2 makes at a volume's root.
const LOST_AND_FOUND: &str = "lost+found";
/// Bytes read from the volume at once in a write-back.
const CHUNK: usize = 256 << 10;

/// A writable mount of a host directory, as the container's config gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct WritableMount {
    pub host: PathBuf,
    pub guest: String,
    pub size: u64,
}

/// The file of the container's `index`th writable mount, in its bundle.
pub fn image_path(bundle: &Path, index: usize) -> PathBuf {
    bundle.join(format!("kiln-volume-{index}.ext2"))
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "the writable directory {host} (at {guest}) is in use by another Kiln container: Kiln gives each container's \
         writable mount an ext2 volume of its own, which two VMs cannot share live; mount it read-only in all but \
         one, or run them one after another"
    )]
    InUse { host: String, guest: String },
    #[error(
        "the writable directory {host} (at {guest}) holds about {bytes} bytes, more than its {size}-byte volume \
         holds; give it a larger one with the annotation {VOLUME_SIZE_ANNOTATION}{guest}"
    )]
    TooBig { host: String, guest: String, bytes: u64, size: u64 },
    #[error("the writable directory {host} holds more than {MAX_ENTRIES} files, more than Kiln copies into a volume")]
    TooManyFiles { host: String },
    #[error("the writable directory {0}")]
    Host(String, #[source] std::io::Error),
    #[error("the volume {0}")]
    Image(String, #[source] std::io::Error),
    #[error("mkfs.ext2 is not installed; install e2fsprogs (e.g. `sudo apt-get install e2fsprogs`)")]
    NoMkfs,
    #[error("mkfs.ext2 could not make the volume for {host}: {problem}")]
    Mkfs { host: String, problem: String },
    #[error("the volume {image} cannot be read back: {problem}")]
    Unreadable { image: String, problem: String },
    #[error(
        "the volume {image} has more than {MAX_ENTRIES} files, a directory loop or a tree deeper than {MAX_DEPTH}"
    )]
    Unbounded { image: String },
}

/// A writable mount's volume: its file, and the host directory, locked until the volume is written back.
#[derive(Debug)]
pub struct Volume {
    pub mount: WritableMount,
    pub image: PathBuf,
    /// The host directory, open and locked (exclusive `flock`).
    dir: File,
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Makes the volumes of `mounts`, in order, as [`image_path`] names them in `bundle`. A failure leaves none made.
pub fn make_all(mounts: &[WritableMount], bundle: &Path) -> Result<Vec<Volume>, VolumeError> {
    let mut made = Vec::with_capacity(mounts.len());
    for (index, mount) in mounts.iter().enumerate() {
        made.push(make(mount, &image_path(bundle, index))?);
    }
    Ok(made)
}

fn make(mount: &WritableMount, image: &Path) -> Result<Volume, VolumeError> {
    let host = mount.host.display().to_string();
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(&mount.host)
        .map_err(|e| VolumeError::Host(host.clone(), e))?;
    // SAFETY: flock on the descriptor `dir` owns; the lock lives as long as the open file.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => VolumeError::InUse { host, guest: mount.guest.clone() },
            _ => VolumeError::Host(host, e),
        });
    }
    let bytes = content_bytes(&mount.host, &host)?;
    // Room for the inode tables and the rest of ext2's own (about 2% with 16 KiB per inode), and some to spare.
    if bytes > mount.size - mount.size / 16 {
        return Err(VolumeError::TooBig { host, guest: mount.guest.clone(), bytes, size: mount.size });
    }
    let volume = Volume { mount: mount.clone(), image: image.to_path_buf(), dir };
    let shown = image.display().to_string();
    let file = File::create(image).map_err(|e| VolumeError::Image(shown.clone(), e))?;
    file.set_len(mount.size).map_err(|e| VolumeError::Image(shown, e))?;
    drop(file);
    // As `kiln volume create` makes one (ext2, 4 KiB blocks, 256-byte inodes, linear directories), with no blocks
    // kept for root (the container is the volume's only user), filled from the host directory.
    let mut mkfs = Command::new("mkfs.ext2");
    mkfs.args(["-q", "-F", "-t", "ext2", "-b", "4096", "-I", "256", "-O", "^dir_index", "-m", "0"])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(&mount.host)
        .arg(image);
    let (succeeded, stderr) = run_reaped(mkfs).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VolumeError::NoMkfs,
        _ => VolumeError::Mkfs { host: host.clone(), problem: e.to_string() },
    })?;
    if !succeeded {
        return Err(VolumeError::Mkfs { host, problem: stderr.trim().to_string() });
    }
    Ok(volume)
}

/// Runs `command` to its end: whether it succeeded, and what it said on stderr. In the shim, containerd-shim's
/// SIGCHLD handler reaps every child and tells its exit to the monitor's subscribers, so the exit is taken from there
/// when the shim's reaper was first (ECHILD).
fn run_reaped(mut command: Command) -> std::io::Result<(bool, String)> {
    use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
    use std::io::Read;
    let exits = monitor_subscribe(Topic::Pid).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.by_ref().take(64 << 10).read_to_string(&mut stderr);
        // The rest unread, so that the command never waits to write it.
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
    }
    match child.wait() {
        Ok(status) => Ok((status.success(), stderr)),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            let pid = child.id() as i32;
            loop {
                let exit = exits.rx.recv_timeout(REAPED_WAIT).map_err(|_| std::io::Error::from(e.kind()))?;
                if matches!(exit.subject, Subject::Pid(p) if p == pid) {
                    return Ok((exit.exit_code == 0, stderr));
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// About what `host`'s tree takes on a volume: its files' bytes in whole blocks, and a block per entry. Symbolic
/// links are not followed.
fn content_bytes(root: &Path, host: &str) -> Result<u64, VolumeError> {
    let (mut bytes, mut entries) = (ENTRY_COST, 0u64);
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| VolumeError::Host(host.to_string(), e))? {
            let entry = entry.map_err(|e| VolumeError::Host(host.to_string(), e))?;
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(VolumeError::TooManyFiles { host: host.to_string() });
            }
            let meta = entry.metadata().map_err(|e| VolumeError::Host(host.to_string(), e))?;
            bytes = bytes.saturating_add(meta.len().next_multiple_of(4096)).saturating_add(ENTRY_COST);
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(bytes)
}

/// Reads a volume file for the write-back.
struct ReadOnly<'a>(&'a File);

impl BlockDevice for ReadOnly<'_> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read_exact_at(buf, offset).map_err(|_| IoError)
    }
    fn write(&mut self, _: &[(u64, &[u8])], _: bool) -> Result<(), IoError> {
        Err(IoError)
    }
}

/// How far a write-back may go.
struct Budget {
    entries: u64,
    bytes: u64,
    seen: BTreeSet<u32>,
}

impl Volume {
    /// Writes what the volume holds into the host directory: its files, directories and symbolic links made or
    /// replaced, and what the container deleted deleted (the volume began as a copy of the directory, which no other
    /// Kiln container had meanwhile). FIFOs, sockets and device nodes are not written back.
    pub fn write_back(&self) -> Result<(), VolumeError> {
        let shown = self.image.display().to_string();
        let unreadable = |problem: String| VolumeError::Unreadable { image: shown.clone(), problem };
        let file = File::open(&self.image).map_err(|e| unreadable(e.to_string()))?;
        let len = file.metadata().map_err(|e| unreadable(e.to_string()))?.len();
        let mut fs = Ext2::mount(ReadOnly(&file), len, 256, || 0).map_err(|e| unreadable(e.to_string()))?;
        let mut budget = Budget { entries: MAX_ENTRIES, bytes: len, seen: BTreeSet::new() };
        let host = self.mount.host.display().to_string();
        match copy_dir(&mut fs, ROOT_INO, &self.dir, &mut budget, 0) {
            Ok(()) => Ok(()),
            Err(Failure::Volume(problem)) => Err(unreadable(problem)),
            Err(Failure::Host(e)) => Err(VolumeError::Host(host, e)),
            Err(Failure::Unbounded) => Err(VolumeError::Unbounded { image: shown }),
        }
    }
}

enum Failure {
    Volume(String),
    Host(std::io::Error),
    Unbounded,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Host(e)
    }
}

impl From<kiln_ext2::Ext2Error> for Failure {
    fn from(e: kiln_ext2::Ext2Error) -> Failure {
        Failure::Volume(e.to_string())
    }
}

/// A name a directory entry may have (a hostile volume's may hold anything).
fn is_entry_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Removes what is at `path` (not following a symbolic link there), if anything.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes volume directory `ino` into host directory `host` (open): each entry by its name beneath it, through
/// `/proc/self/fd`, so that no path on the host is walked again.
fn copy_dir<D: BlockDevice>(
    fs: &mut Ext2<D>,
    ino: u32,
    host: &File,
    budget: &mut Budget,
    depth: u32,
) -> Result<(), Failure> {
    if depth > MAX_DEPTH || !budget.seen.insert(ino) {
        return Err(Failure::Unbounded);
    }
    let here = PathBuf::from(format!("/proc/self/fd/{}", host.as_raw_fd()));
    let beneath = |name: &OsStr| here.join(name);
    let mut kept = BTreeSet::new();
    for (name, child, kind) in fs.read_dir(ino)? {
        if !is_entry_name(&name) || !kept.insert(name.clone()) {
            continue;
        }
        // The volume's own (mkfs.ext2 makes it, e2fsck fills it), not the container's: neither written nor deleted.
        if depth == 0 && name == LOST_AND_FOUND {
            continue;
        }
        budget.entries = budget.entries.checked_sub(1).ok_or(Failure::Unbounded)?;
        let path = beneath(OsStr::new(&name));
        let mode = fs.stat(child)?.mode & 0o1777;
        match kind {
            FileType::Directory => {
                if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    remove(&path)?;
                    std::fs::create_dir(&path)?;
                }
                let sub = File::options().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(&path)?;
                sub.set_permissions(std::fs::Permissions::from_mode(mode))?;
                copy_dir(fs, child, &sub, budget, depth + 1)?;
            }
            FileType::Regular => {
                if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
                    remove(&path)?;
                }
                let mut out = File::options()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                copy_file(fs, child, &mut out, budget)?;
                out.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            FileType::Symlink => {
                let target = fs.read_link(child)?;
                remove(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)?;
            }
            FileType::Fifo | FileType::Other => {
                kept.remove(&name);
            }
        }
    }
    // What the container deleted.
    for entry in std::fs::read_dir(&here)? {
        let name = entry?.file_name();
        let ours = depth == 0 && name == LOST_AND_FOUND;
        if !ours && !name.to_str().is_some_and(|n| kept.contains(n)) {
            remove(&beneath(&name))?;
        }
    }
    Ok(())
}

/// Copies volume file `ino` into `out`, within the budget's bytes.
fn copy_file<D: BlockDevice>(fs: &mut Ext2<D>, ino: u32, out: &mut File, budget: &mut Budget) -> Result<(), Failure> {
    let size = fs.stat(ino)?.size;
    budget.bytes = budget.bytes.checked_sub(size).ok_or(Failure::Unbounded)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(CHUNK as u64) as usize;
        let got = fs.read(ino, at, &mut buf[..want])?;
        if got == 0 {
            break;
        }
        out.write_all(&buf[..got])?;
        at += got as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
