//! Volumes (`kiln run -v NAME:/path`): each a virtio-blk device with an ext2 filesystem (`kiln_ext2`), mounted at a
//! path of the filesystem tree. `vfs` sends every path at or below a mount point here; files and directories on a
//! volume are [`Node`]s, which name an inode of it. Every operation takes the volume's lock for its length, device
//! requests included (a few VM exits at most, since blocks are cached).
//!
//! Durability: `fsync`/`fdatasync` (and `sync`, and the program's end) write everything the volume has changed:
//! file data and directory blocks first, flushed, then the metadata, flushed; the VMM turns each flush into
//! `fdatasync` of the host file.

mod virtio_blk;

use crate::errno::Errno;
use crate::sync::SpinLock;
use crate::vfs::{Attrs, EntryType};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use kiln_abi::BootInfo;
use kiln_ext2::{Ext2, Ext2Error, FileType, ROOT_INO};
use virtio_blk::VirtioBlk;

/// Blocks each volume's cache keeps (16 MiB of 4 KiB blocks), or an eighth of guest RAM if that is less.
const CACHE_BYTES: u64 = 16 << 20;

pub struct Volume {
    /// Where it is mounted: absolute, normalised.
    pub mount: String,
    index: u64,
    fs: SpinLock<Ext2<VirtioBlk>>,
}

static VOLUMES: SpinLock<Vec<Arc<Volume>>> = SpinLock::new(Vec::new());
/// Whether any volume is mounted (a path walk checks for mount points only then).
static ANY: AtomicBool = AtomicBool::new(false);

pub fn any() -> bool {
    ANY.load(Ordering::Relaxed)
}

fn errno(e: Ext2Error) -> Errno {
    match e {
        Ext2Error::NotFound => Errno::ENOENT,
        Ext2Error::Exists => Errno::EEXIST,
        Ext2Error::NotDir => Errno::ENOTDIR,
        Ext2Error::IsDir => Errno::EISDIR,
        Ext2Error::NotEmpty => Errno::ENOTEMPTY,
        Ext2Error::NoSpace => Errno::ENOSPC,
        Ext2Error::NameTooLong => Errno::ENAMETOOLONG,
        Ext2Error::FileTooBig => Errno::EFBIG,
        Ext2Error::Invalid => Errno::EINVAL,
        Ext2Error::TooManyLinks => Errno::EMLINK,
        Ext2Error::Unsupported(_) => Errno::EOPNOTSUPP,
        Ext2Error::Io(_) | Ext2Error::Corrupt(_) => Errno::EIO,
    }
}

fn clock() -> u32 {
    (crate::time::realtime_ns() / 1_000_000_000) as u32
}

fn entry_type(kind: FileType) -> EntryType {
    match kind {
        FileType::Directory => EntryType::Directory,
        FileType::Regular => EntryType::Regular,
        FileType::Symlink => EntryType::Symlink,
        FileType::Fifo => EntryType::Fifo,
        FileType::Other => EntryType::Other,
    }
}

/// Sets up each volume's device and mounts its filesystem; the mount points are made in the tree. The VMM checked
/// the filesystems before boot, so a failure here is reported as a library OS failure.
pub fn init(boot: &BootInfo) {
    for (index, info) in boot.volumes.iter().enumerate().filter(|(_, v)| v.mmio_phys != 0) {
        let Some(mount) = info.mount_path() else {
            crate::hypercall::panic_message("a volume's mount path is not UTF-8")
        };
        let blk = match VirtioBlk::setup(
            crate::virtio_transport::Transport::at(info.mmio_phys, info.transport),
            info.capacity,
        ) {
            Ok(blk) => blk,
            Err(_) => crate::hypercall::panic_message("cannot set up a volume's virtio-blk device"),
        };
        let cache_blocks = (CACHE_BYTES.min(boot.mem_size / 8) / 4096) as usize;
        let mut fs = match Ext2::mount(blk, info.capacity, cache_blocks, clock) {
            Ok(fs) => fs,
            Err(_) => crate::hypercall::panic_message("cannot mount a volume's ext2 filesystem"),
        };
        if fs.mark_in_use().is_err() {
            crate::hypercall::panic_message("cannot write a volume's superblock");
        }
        let mut at = String::new();
        for part in mount.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            let _ = crate::vfs::mkdir(&at, 0o755);
        }
        let volume = Volume { mount: mount.into(), index: index as u64, fs: SpinLock::new(fs) };
        VOLUMES.lock().push(Arc::new(volume));
        ANY.store(true, Ordering::Relaxed);
    }
}

/// The volume `abs` (an absolute, normalised path) is on, and the path's components below its mount point.
pub fn find(abs: &str) -> Option<(Arc<Volume>, Vec<String>)> {
    let volumes = VOLUMES.lock();
    let volume = volumes.iter().find(|v| abs == v.mount || abs.starts_with(&(v.mount.clone() + "/")))?.clone();
    let rest = abs[volume.mount.len()..].split('/').filter(|p| !p.is_empty()).map(String::from).collect();
    Some((volume, rest))
}

/// The volume mounted exactly at `abs`, if any (a walk entering its mount point).
pub fn mounted_at(abs: &str) -> Option<Arc<Volume>> {
    VOLUMES.lock().iter().find(|v| v.mount == abs).cloned()
}

/// Writes back every volume (sync(2), syncfs).
pub fn sync_all() -> Result<(), Errno> {
    let volumes: Vec<Arc<Volume>> = VOLUMES.lock().clone();
    for v in volumes {
        v.fs.lock().sync().map_err(errno)?;
    }
    Ok(())
}

/// The program's end: every volume written back and marked cleanly unmounted, so that the next `kiln run` needs no
/// check. (A VM killed instead leaves it marked in use, and the next attach has e2fsck check it.) Each volume's lock
/// stays taken: other vCPUs run on until the VM ends, and a write of theirs after the clean mark would leave a
/// volume marked clean that is not (the next attach would not check it). They wait instead, and the VM ends.
pub fn unmount_all() {
    let volumes: Vec<Arc<Volume>> = VOLUMES.lock().clone();
    for v in volumes {
        let mut fs = v.fs.lock();
        let _ = fs.unmount();
        core::mem::forget(fs);
    }
}

/// A file or directory on a volume, while something (a descriptor, a lookup) holds it: its inode is not freed
/// before it is dropped, even if unlinked.
pub struct Node {
    volume: Arc<Volume>,
    ino: u32,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.volume.fs.lock().close(self.ino);
    }
}

impl Volume {
    fn node(self: &Arc<Self>, ino: u32) -> Node {
        self.fs.lock().open(ino);
        Node { volume: self.clone(), ino }
    }

    /// The inode at `path` (components below the mount point).
    fn walk(fs: &mut Ext2<VirtioBlk>, path: &[String]) -> Result<u32, Errno> {
        let mut ino = ROOT_INO;
        for name in path {
            ino = fs.lookup(ino, name).map_err(errno)?;
        }
        Ok(ino)
    }

    /// The directory holding `path` and the last component's name; EBUSY for the mount point itself.
    fn parent<'a>(fs: &mut Ext2<VirtioBlk>, path: &'a [String]) -> Result<(u32, &'a str), Errno> {
        let (name, dirs) = path.split_last().ok_or(Errno::EBUSY)?;
        Ok((Self::walk(fs, dirs)?, name))
    }

    pub fn lookup(self: &Arc<Self>, path: &[String]) -> Result<Node, Errno> {
        let ino = Self::walk(&mut self.fs.lock(), path)?;
        Ok(self.node(ino))
    }

    /// Opens `path`, creating a regular file with `create_mode` if it is missing (EEXIST if `exclusive`).
    pub fn open(self: &Arc<Self>, path: &[String], create_mode: Option<u32>, exclusive: bool) -> Result<Node, Errno> {
        let ino = {
            let mut fs = self.fs.lock();
            match (Self::walk(&mut fs, path), create_mode) {
                (Ok(_), Some(_)) if exclusive => return Err(Errno::EEXIST),
                (Ok(ino), _) => ino,
                (Err(Errno::ENOENT), Some(mode)) => {
                    let (dir, name) = Self::parent(&mut fs, path)?;
                    fs.create(dir, name, mode).map_err(errno)?
                }
                (Err(e), _) => return Err(e),
            }
        };
        Ok(self.node(ino))
    }

    pub fn mkdir(&self, path: &[String], perm: u32) -> Result<(), Errno> {
        let mut fs = self.fs.lock();
        let (dir, name) = Self::parent(&mut fs, path).map_err(|e| if e == Errno::EBUSY { Errno::EEXIST } else { e })?;
        fs.mkdir(dir, name, perm).map(|_| ()).map_err(errno)
    }

    pub fn remove(&self, path: &[String], dir: bool) -> Result<(), Errno> {
        let mut fs = self.fs.lock();
        let (parent, name) = Self::parent(&mut fs, path)?;
        if dir {
            fs.rmdir(parent, name).map_err(errno)
        } else {
            fs.unlink(parent, name).map_err(errno)
        }
    }

    /// A symbolic link at `path` to `target`.
    pub fn symlink(&self, path: &[String], target: &str) -> Result<(), Errno> {
        let mut fs = self.fs.lock();
        let (dir, name) = Self::parent(&mut fs, path).map_err(|e| if e == Errno::EBUSY { Errno::EEXIST } else { e })?;
        fs.symlink(dir, name, target.as_bytes()).map(|_| ()).map_err(errno)
    }

    /// A FIFO at `path`.
    pub fn mkfifo(&self, path: &[String], perm: u32) -> Result<(), Errno> {
        let mut fs = self.fs.lock();
        let (dir, name) = Self::parent(&mut fs, path).map_err(|e| if e == Errno::EBUSY { Errno::EEXIST } else { e })?;
        fs.mkfifo(dir, name, perm).map(|_| ()).map_err(errno)
    }

    /// A hard link at `to` to the file at `from` (not followed); EPERM for a directory, as on Linux.
    pub fn link(&self, from: &[String], to: &[String]) -> Result<(), Errno> {
        let mut fs = self.fs.lock();
        let ino = Self::walk(&mut fs, from)?;
        let (dir, name) = Self::parent(&mut fs, to)?;
        fs.link(ino, dir, name).map_err(|e| if e == Ext2Error::IsDir { Errno::EPERM } else { errno(e) })
    }

    pub fn rename(&self, from: &[String], to: &[String]) -> Result<(), Errno> {
        let mut fs = self.fs.lock();
        let (from_dir, from_name) = Self::parent(&mut fs, from)?;
        let (to_dir, to_name) = Self::parent(&mut fs, to)?;
        fs.rename(from_dir, from_name, to_dir, to_name).map_err(errno)
    }
}

impl Node {
    /// Inode numbers as `stat` shows them: apart from the in-memory tree's and other volumes'.
    pub fn ino(&self) -> u64 {
        (self.volume.index + 1) << 40 | u64::from(self.ino)
    }

    pub fn is_dir(&self) -> bool {
        self.volume.fs.lock().file_type(self.ino) == Ok(FileType::Directory)
    }

    pub fn entry_type(&self) -> EntryType {
        self.volume.fs.lock().file_type(self.ino).map_or(EntryType::Other, entry_type)
    }

    /// The entry `name` of this directory.
    pub fn child(&self, name: &str) -> Result<Node, Errno> {
        let ino = self.volume.fs.lock().lookup(self.ino, name).map_err(errno)?;
        Ok(self.volume.node(ino))
    }

    /// For a symbolic link, its target (a target that is not UTF-8 reads as missing).
    pub fn link_target(&self) -> Option<String> {
        let mut fs = self.volume.fs.lock();
        if fs.file_type(self.ino) != Ok(FileType::Symlink) {
            return None;
        }
        let bytes = fs.read_link(self.ino).ok()?;
        Some(String::from_utf8(bytes).unwrap_or_default())
    }

    pub fn stat(&self) -> Attrs {
        let secs = |s: u32| u64::from(s) * 1_000_000_000;
        match self.volume.fs.lock().stat(self.ino) {
            Ok(s) => {
                Attrs { mode: s.mode, size: s.size, links: s.links, atime_ns: secs(s.atime), mtime_ns: secs(s.mtime) }
            }
            Err(_) => Attrs::default(),
        }
    }

    pub fn set_perm(&self, perm: u32) {
        let _ = self.volume.fs.lock().set_perm(self.ino, perm);
    }

    /// The volume keeps whole seconds.
    pub fn set_times(&self, atime_ns: Option<u64>, mtime_ns: Option<u64>) {
        let secs = |ns: u64| (ns / 1_000_000_000) as u32;
        let _ = self.volume.fs.lock().set_times(self.ino, atime_ns.map(secs), mtime_ns.map(secs));
    }

    pub fn read_with<R>(&self, offset: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, Errno> {
        let mut fs = self.volume.fs.lock();
        let size = fs.stat(self.ino).map_err(errno)?.size;
        let n = size.saturating_sub(offset).min(len);
        let mut buf = Vec::new();
        buf.try_reserve_exact(n as usize).map_err(|_| Errno::ENOMEM)?;
        buf.resize(n as usize, 0);
        let got = fs.read(self.ino, offset, &mut buf).map_err(errno)?;
        drop(fs);
        Ok(f(&buf[..got]))
    }

    pub fn write_at(&self, offset: u64, data: &[u8], append: bool) -> Result<u64, Errno> {
        let mut fs = self.volume.fs.lock();
        let at = if append { fs.stat(self.ino).map_err(errno)?.size } else { offset };
        let n = fs.write(self.ino, at, data).map_err(errno)?;
        Ok(at + n as u64)
    }

    pub fn truncate(&self, len: u64) -> Result<(), Errno> {
        self.volume.fs.lock().truncate(self.ino, len).map_err(errno)
    }

    pub fn entries_from(&self, from: usize) -> Result<Vec<(String, u64, EntryType)>, Errno> {
        let entries = self.volume.fs.lock().read_dir(self.ino).map_err(errno)?;
        let base = (self.volume.index + 1) << 40;
        Ok(entries
            .into_iter()
            .skip(from)
            .map(|(name, ino, kind)| (name, base | u64::from(ino), entry_type(kind)))
            .collect())
    }

    /// The volume's size and use, for statfs: bytes, free bytes, inodes, free inodes, block size.
    pub fn usage(&self) -> (u64, u64, u64, u64, u32) {
        let fs = self.volume.fs.lock();
        let (bytes, free, inodes, free_inodes) = fs.usage();
        (bytes, free, inodes, free_inodes, fs.block_size())
    }

    /// fsync: everything the volume changed reaches the host file (this file's data and metadata among it).
    pub fn sync(&self) -> Result<(), Errno> {
        self.volume.fs.lock().sync().map_err(errno)
    }
}
