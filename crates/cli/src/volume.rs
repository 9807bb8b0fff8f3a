//! `kiln volume`: named volumes in `$KILN_HOME/volumes/` (default `~/.local/share/kiln/volumes/`), each one file
//! holding an ext2 filesystem made by `mkfs.ext2` from e2fsprogs, so that host tools (`e2fsck`, `debugfs`) check and
//! read it. `kiln run -v NAME:/path` attaches one: the file is locked (`flock`, exclusive) for as long as the VM
//! runs, so a second instance cannot attach it, and `rm` will not delete it meanwhile (`kiln_launch::volumes`, which
//! every launcher shares).

use crate::size::{human, parse_size};
use anyhow::{anyhow, bail, Context, Result};
use kiln_launch::volumes::{open_existing, open_locked, volume_path, volumes_dir};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const DEFAULT_SIZE: &str = "1G";
const MIN_SIZE: u64 = 4 << 20;
/// ext2 with 4 KiB blocks addresses at most 2^32 blocks.
const MAX_SIZE: u64 = 16 << 40;
const BLOCK: u64 = 4096;

#[derive(clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: a file holding an empty ext2 filesystem
    Create {
        name: String,
        /// Size (K, M or G suffix); the file is sparse, so unused space costs nothing
        #[arg(long, default_value = DEFAULT_SIZE, value_parser = parse_size)]
        size: u64,
    },
    /// List volumes
    Ls,
    /// Delete a volume and everything on it
    Rm { name: String },
    /// Show a volume's file, size, space used and whether an instance has it attached
    Inspect { name: String },
}

pub fn run(command: VolumeCommand) -> Result<u8> {
    match command {
        VolumeCommand::Create { name, size } => create(&name, size),
        VolumeCommand::Ls => list(),
        VolumeCommand::Rm { name } => remove(&name),
        VolumeCommand::Inspect { name } => inspect(&name),
    }
    .map(|()| 0)
}

fn create(name: &str, size: u64) -> Result<()> {
    let path = volume_path(name)?;
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        bail!("--size {size} is out of range: a volume has 4M to 16T");
    }
    let size = size.next_multiple_of(BLOCK);
    if path.exists() {
        bail!("volume {name} already exists");
    }
    let dir = path.parent().expect("a volume path has a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Made under a temporary name and renamed into place: a failure leaves no half-made volume.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let made = make_filesystem(&tmp, size).and_then(|()| {
        std::fs::hard_link(&tmp, &path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow!("volume {name} already exists"),
            _ => anyhow!(e).context(format!("cannot create {}", path.display())),
        })
    });
    let _ = std::fs::remove_file(&tmp);
    made?;
    outln!("{name}");
    Ok(())
}

fn make_filesystem(path: &Path, size: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(size).with_context(|| format!("cannot make {} {size} bytes long", path.display()))?;
    drop(file);
    // ext2 revision 1 with 4 KiB blocks and 256-byte inodes; no hashed directories (Kiln keeps directories linear).
    let out = Command::new("mkfs.ext2")
        .args(["-q", "-F", "-t", "ext2", "-b", "4096", "-I", "256", "-O", "^dir_index", "-E", "root_owner=0:0"])
        .arg(path)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow!("mkfs.ext2 is not installed; install e2fsprogs (e.g. `sudo apt-get install e2fsprogs`)")
            }
            _ => anyhow!(e).context("cannot run mkfs.ext2"),
        })?;
    if !out.status.success() {
        bail!("mkfs.ext2 failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// What the superblock says: total and free bytes (none if it is not an ext2 superblock, or not a sane one).
fn usage(file: &File) -> Option<(u64, u64)> {
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, 1024).ok()?;
    let word = |at: usize| u64::from(u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes")));
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xef53 {
        return None;
    }
    let block = 1024u64 << word(24).min(6);
    let (total, free) = (word(4) * block, word(12) * block);
    // A damaged superblock can claim more free blocks than blocks.
    (free <= total).then_some((total, free))
}

/// Whether a running instance holds the volume's lock.
fn attached(file: &File) -> bool {
    // SAFETY: flock on a descriptor this function's caller keeps open; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if r == 0 {
        // SAFETY: as above; releases the shared lock just taken.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    }
    r != 0
}

fn list() -> Result<()> {
    let dir = volumes_dir()?;
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".ext2").map(String::from))
            .filter(|n| kiln_launch::check_volume_name(n).is_ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(anyhow!(e).context(format!("cannot list {}", dir.display()))),
    };
    names.sort();
    outln!("{:<24} {:>10} {:>10} ATTACHED", "NAME", "SIZE", "USED");
    for name in names {
        // Gone since the directory was read (a concurrent rm): not listed.
        let Ok((_, file)) = open_existing(&name, false) else { continue };
        let (size, used) = usage(&file).map_or(("?".into(), "?".into()), |(t, f)| (human(t), human(t - f)));
        outln!("{name:<24} {size:>10} {used:>10} {}", if attached(&file) { "yes" } else { "no" });
    }
    Ok(())
}

fn remove(name: &str) -> Result<()> {
    let Some((path, _locked)) = open_locked(name, false)? else {
        bail!("volume {name} is attached to a running instance; stop it first");
    };
    // Deleted while locked: an attach that opened the file before this checks the name once it has the lock.
    std::fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))?;
    outln!("{name}");
    Ok(())
}

fn inspect(name: &str) -> Result<()> {
    let (path, file) = open_existing(name, false)?;
    let file_size = file.metadata().map(|m| m.len()).unwrap_or(0);
    outln!("name:       {name}");
    outln!("file:       {}", path.display());
    outln!("filesystem: ext2");
    outln!("size:       {} ({file_size} bytes)", human(file_size));
    match usage(&file) {
        Some((total, free)) => outln!("used:       {} of {}", human(total - free), human(total)),
        None => outln!("used:       unknown (no ext2 superblock: check it with e2fsck)"),
    }
    outln!("attached:   {}", if attached(&file) { "yes" } else { "no" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(test: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kiln-volume-{test}-{}", std::process::id()))
    }

    #[test]
    fn a_superblock_with_more_free_blocks_than_blocks_has_no_usage() {
        let path = scratch("usage");
        let mut sb = vec![0u8; 2048];
        sb[1024 + 4..1024 + 8].copy_from_slice(&100u32.to_le_bytes());
        sb[1024 + 12..1024 + 16].copy_from_slice(&101u32.to_le_bytes());
        sb[1024 + 56..1024 + 58].copy_from_slice(&0xef53u16.to_le_bytes());
        std::fs::write(&path, &sb).unwrap();
        assert_eq!(usage(&File::open(&path).unwrap()), None);
        sb[1024 + 12..1024 + 16].copy_from_slice(&40u32.to_le_bytes());
        std::fs::write(&path, &sb).unwrap();
        assert_eq!(usage(&File::open(&path).unwrap()), Some((100 << 10, 40 << 10)));
        std::fs::remove_file(&path).unwrap();
    }
}
