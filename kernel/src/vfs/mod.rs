//! The filesystem the program sees: one tree in memory. Files packed into the image (`kiln run --file/--dir`) are
//! read from where the VMM put them until first written, when they are copied (the image itself never changes, as a
//! container's writable layer over its image); everything created at run time lives in the library OS heap. Paths
//! resolve as Linux's walk does, symbolic links followed (`walk`), into canonical absolute paths that the operations
//! here take. Paths at or below a volume's mount point go to the volume (`crate::volume`), whose files are inodes of
//! another backing.

pub mod image;
pub mod pages;
mod proc;
pub mod walk;

pub use proc::process_stat;
pub use walk::normalise;

use crate::errno::Errno;
use crate::sync::SpinLock;
use crate::time;
use crate::volume::{self, Node};
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use pages::Pages;

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;
/// `st_rdev` of the device files: `makedev(1, minor)` as on Linux.
pub const DEV_NULL: u64 = (1 << 8) | 3;
pub const DEV_ZERO: u64 = (1 << 8) | 5;
pub const DEV_RANDOM: u64 = (1 << 8) | 8;
pub const DEV_URANDOM: u64 = (1 << 8) | 9;
/// Longest path accepted (PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// The most a read of a file in pages copies at once.
const PAGES_READ_CHUNK: u64 = 64 << 10;

pub enum Data {
    /// Bytes the program wrote (or copied on first write).
    Owned(Vec<u8>),
    /// `len` bytes of the image at this direct-map address: read in place, copied on first write.
    Image { addr: u64, len: u64 },
    /// `len` bytes in page frames that shared mappings map too (see `pages`).
    Pages { pages: Arc<Pages>, len: u64 },
}

impl Data {
    pub fn len(&self) -> u64 {
        match self {
            Data::Owned(v) => v.len() as u64,
            Data::Image { len, .. } | Data::Pages { len, .. } => *len,
        }
    }

    /// The bytes, where they are contiguous (not in pages).
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Data::Owned(v) => Some(v),
            Data::Image { addr, len } => {
                // SAFETY: the VMM placed the image in guest RAM, which the library OS never reuses; it stays mapped.
                Some(unsafe { core::slice::from_raw_parts(*addr as *const u8, *len as usize) })
            }
            Data::Pages { .. } => None,
        }
    }

    /// The bytes as a vector the file owns; `None` for pages, which are written in place.
    fn owned(&mut self) -> Option<&mut Vec<u8>> {
        if let Data::Image { addr, len } = *self {
            // SAFETY: as in `bytes`.
            *self = Data::Owned(unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }.to_vec());
        }
        match self {
            Data::Owned(v) => Some(v),
            _ => None,
        }
    }

    /// The pages, the bytes moved into them first if need be (a shared mapping's first).
    fn pages(&mut self) -> Result<Arc<Pages>, Errno> {
        if let Data::Pages { pages, .. } = self {
            return Ok(pages.clone());
        }
        let pages = Pages::from_bytes(self.bytes().unwrap_or_default())?;
        *self = Data::Pages { pages: pages.clone(), len: self.len() };
        Ok(pages)
    }
}

pub enum Kind {
    Dir(BTreeMap<String, Arc<Inode>>),
    File(Data),
    /// A character device (`/dev/null`...), by its `st_rdev`: opening it gives the device, not this inode.
    Device(u64),
    /// The name of a bound AF_UNIX socket (`net::unix::names`): it cannot be opened, only connected to.
    Socket,
    /// A symbolic link, by its target (followed by the walk, never opened).
    Symlink(String),
    /// A named pipe: opening it gives an end of its pipe (`crate::file::fifo`).
    Fifo,
    /// `/proc/self/task`: a directory of the live threads, each a directory by its id (`proc`).
    Tasks,
    /// `/proc/self/fd`: a directory of the open descriptors, each a link by its number (`proc`).
    Fds,
}

/// What a walk finds at a name.
enum Found {
    Dir,
    Link(String),
    Other,
}

pub struct Inode {
    pub ino: u64,
    backing: Backing,
}

enum Backing {
    Memory(SpinLock<State>),
    Volume(Node),
}

pub struct State {
    pub kind: Kind,
    /// Permission bits (the type comes from `kind`).
    pub perm: u32,
    /// `st_nlink`: the names a file has (hard links); for a directory 2 and one per subdirectory (its "..").
    pub links: u32,
    pub atime_ns: u64,
    pub mtime_ns: u64,
}

/// What a directory listing says an entry is (getdents64's `d_type`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Directory,
    Regular,
    CharDevice,
    Socket,
    Symlink,
    Fifo,
    /// Something a volume holds that the library OS does not open (a device node).
    Other,
}

/// What `stat` reports of an inode: `st_mode`, `st_size`, and the access and modification times in nanoseconds
/// since the epoch (the change time is the modification time).
#[derive(Clone, Copy, Default)]
pub struct Attrs {
    pub mode: u32,
    pub size: u64,
    /// `st_nlink`.
    pub links: u32,
    pub atime_ns: u64,
    pub mtime_ns: u64,
}

impl Inode {
    fn new(kind: Kind, perm: u32) -> Arc<Inode> {
        static NEXT_INO: AtomicU64 = AtomicU64::new(2);
        Inode::numbered(kind, perm, NEXT_INO.fetch_add(1, Ordering::Relaxed))
    }

    fn numbered(kind: Kind, perm: u32, ino: u64) -> Arc<Inode> {
        let now = time::realtime_ns();
        let links = if matches!(kind, Kind::Dir(_) | Kind::Tasks | Kind::Fds) { 2 } else { 1 };
        let state = SpinLock::new(State { kind, perm, links, atime_ns: now, mtime_ns: now });
        Arc::new(Inode { ino, backing: Backing::Memory(state) })
    }

    fn on_volume(node: Node) -> Arc<Inode> {
        Arc::new(Inode { ino: node.ino(), backing: Backing::Volume(node) })
    }

    /// The in-memory state; `None` for a file on a volume.
    pub(super) fn memory(&self) -> Option<&SpinLock<State>> {
        match &self.backing {
            Backing::Memory(state) => Some(state),
            Backing::Volume(_) => None,
        }
    }

    /// For a file on a volume, the volume's size and use (statfs): bytes, free bytes, inodes, free inodes, block
    /// size.
    pub fn volume_usage(&self) -> Option<(u64, u64, u64, u64, u32)> {
        match &self.backing {
            Backing::Memory(_) => None,
            Backing::Volume(node) => Some(node.usage()),
        }
    }

    /// Writes the file back to its volume (fsync); nothing to do in memory.
    pub fn sync(&self) -> Result<(), Errno> {
        match &self.backing {
            Backing::Memory(_) => Ok(()),
            Backing::Volume(node) => node.sync(),
        }
    }

    /// A read-only file in no directory, holding `bytes` (what `/proc/self/maps` opens).
    pub fn detached(bytes: Vec<u8>) -> Arc<Inode> {
        Inode::new(Kind::File(Data::Owned(bytes)), 0o444)
    }

    pub fn is_dir(&self) -> bool {
        match &self.backing {
            Backing::Memory(state) => matches!(state.lock().kind, Kind::Dir(_) | Kind::Tasks | Kind::Fds),
            Backing::Volume(node) => node.is_dir(),
        }
    }

    pub fn is_fifo(&self) -> bool {
        self.entry_type() == EntryType::Fifo
    }

    /// The entry `name` of this directory of the tree (ENOTDIR for anything else).
    fn memory_child(&self, name: &str) -> Result<Arc<Inode>, Errno> {
        let s = self.memory().ok_or(Errno::ENOTDIR)?.lock();
        match &s.kind {
            Kind::Dir(entries) => entries.get(name).cloned().ok_or(Errno::ENOENT),
            Kind::Tasks => proc::thread_dir(name),
            Kind::Fds => proc::descriptor_link(name),
            _ => Err(Errno::ENOTDIR),
        }
    }

    pub fn stat(&self) -> Attrs {
        let state = match &self.backing {
            Backing::Memory(state) => state,
            Backing::Volume(node) => return node.stat(),
        };
        let s = state.lock();
        let (mode, size) = match &s.kind {
            Kind::Dir(entries) => (S_IFDIR | s.perm, entries.len() as u64),
            Kind::File(d) => (S_IFREG | s.perm, d.len()),
            Kind::Device(_) => (S_IFCHR | s.perm, 0),
            Kind::Socket => (S_IFSOCK | s.perm, 0),
            Kind::Symlink(target) => (S_IFLNK | 0o777, target.len() as u64),
            Kind::Fifo => (S_IFIFO | s.perm, 0),
            Kind::Tasks | Kind::Fds => (S_IFDIR | s.perm, 0),
        };
        let links = match &s.kind {
            Kind::Tasks => 2 + proc::threads().len() as u32,
            _ => s.links,
        };
        Attrs { mode, size, links, atime_ns: s.atime_ns, mtime_ns: s.mtime_ns }
    }

    /// What a walk needs to know of the inode, in one look.
    fn found(&self) -> Found {
        match &self.backing {
            Backing::Memory(state) => match &state.lock().kind {
                Kind::Dir(_) | Kind::Tasks | Kind::Fds => Found::Dir,
                Kind::Symlink(target) => Found::Link(target.clone()),
                _ => Found::Other,
            },
            Backing::Volume(node) if node.is_dir() => Found::Dir,
            Backing::Volume(node) => node.link_target().map_or(Found::Other, Found::Link),
        }
    }

    /// For a symbolic link, its target.
    pub fn link_target(&self) -> Option<String> {
        match &self.backing {
            Backing::Memory(state) => match &state.lock().kind {
                Kind::Symlink(target) => Some(target.clone()),
                _ => None,
            },
            Backing::Volume(node) => node.link_target(),
        }
    }

    /// Counts a name made for the inode (`more`) or removed.
    fn count_link(&self, more: bool) {
        if let Backing::Memory(state) = &self.backing {
            let mut s = state.lock();
            s.links = if more { s.links.saturating_add(1) } else { s.links.saturating_sub(1) };
        }
    }

    pub fn is_socket(&self) -> bool {
        self.memory().is_some_and(|state| matches!(state.lock().kind, Kind::Socket))
    }

    /// For a device file, its `st_rdev`.
    pub fn device(&self) -> Option<u64> {
        match &self.memory()?.lock().kind {
            Kind::Device(rdev) => Some(*rdev),
            _ => None,
        }
    }

    pub fn set_perm(&self, perm: u32) {
        match &self.backing {
            Backing::Memory(state) => state.lock().perm = perm & 0o7777,
            Backing::Volume(node) => node.set_perm(perm),
        }
    }

    /// Sets the access and modification times that are `Some` (nanoseconds since the epoch).
    pub fn set_times(&self, atime_ns: Option<u64>, mtime_ns: Option<u64>) {
        match &self.backing {
            Backing::Memory(state) => {
                let mut s = state.lock();
                s.atime_ns = atime_ns.unwrap_or(s.atime_ns);
                s.mtime_ns = mtime_ns.unwrap_or(s.mtime_ns);
            }
            Backing::Volume(node) => node.set_times(atime_ns, mtime_ns),
        }
    }

    /// Where the file's bytes lie in the image, (address, length), while it still reads them in place: bytes that
    /// never change (a write copies them first), so the same span means the same bytes.
    pub fn image_span(&self) -> Option<(u64, u64)> {
        let Backing::Memory(state) = &self.backing else { return None };
        match &state.lock().kind {
            Kind::File(Data::Image { addr, len }) => Some((*addr, *len)),
            _ => None,
        }
    }

    /// Hands `f` the file's bytes from `offset`, at most `len` of them (fewer at the end, none past it).
    pub fn read_with<R>(&self, offset: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, Errno> {
        let state = match &self.backing {
            Backing::Memory(state) => state,
            Backing::Volume(node) => return node.read_with(offset, len, f),
        };
        let s = state.lock();
        let Kind::File(d) = &s.kind else { return Err(Errno::EISDIR) };
        if let Data::Pages { pages, len: size } = d {
            // Pages are not contiguous: the bytes go through a buffer, at most PAGES_READ_CHUNK at a time (callers
            // take a short read as regular files give one at their end, and ask again).
            let start = offset.min(*size);
            let n = len.min(size - start).min(PAGES_READ_CHUNK);
            let mut buffer = Vec::new();
            buffer.try_reserve_exact(n as usize).map_err(|_| Errno::ENOMEM)?;
            buffer.resize(n as usize, 0);
            pages.read(start, &mut buffer);
            drop(s);
            return Ok(f(&buffer));
        }
        let bytes = d.bytes().unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(bytes.len() - start);
        Ok(f(&bytes[start..start + n]))
    }

    /// Writes at `offset` (at the end if `append`); returns the offset after the write.
    pub fn write_at(&self, offset: u64, data: &[u8], append: bool) -> Result<u64, Errno> {
        let state = match &self.backing {
            Backing::Memory(state) => state,
            Backing::Volume(node) => return node.write_at(offset, data, append),
        };
        let mut s = state.lock();
        let Kind::File(d) = &mut s.kind else { return Err(Errno::EISDIR) };
        if let Data::Pages { pages, len } = d {
            let at = if append { *len } else { offset };
            let end = at.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
            pages.write(at, data)?;
            *len = (*len).max(end);
            s.mtime_ns = time::realtime_ns();
            return Ok(end);
        }
        let Some(v) = d.owned() else { return Err(Errno::EIO) };
        let at = if append { v.len() } else { usize::try_from(offset).map_err(|_| Errno::EFBIG)? };
        let end = at.checked_add(data.len()).ok_or(Errno::EFBIG)?;
        if end > v.len() {
            v.try_reserve(end - v.len()).map_err(|_| Errno::ENOSPC)?;
            v.resize(end, 0);
        }
        v[at..end].copy_from_slice(data);
        s.mtime_ns = time::realtime_ns();
        Ok(end as u64)
    }

    pub fn truncate(&self, len: u64) -> Result<(), Errno> {
        let state = match &self.backing {
            Backing::Memory(state) => state,
            Backing::Volume(node) => return node.truncate(len),
        };
        let mut s = state.lock();
        let Kind::File(d) = &mut s.kind else { return Err(Errno::EISDIR) };
        if let Data::Pages { pages, len: size } = d {
            // Frames stay (a mapping may reach them); what lies past the new end reads as zero, now and after a
            // later growth.
            if len < *size {
                pages.zero_from(len);
            }
            pages.cover(len)?;
            *size = len;
            s.mtime_ns = time::realtime_ns();
            return Ok(());
        }
        let Some(v) = d.owned() else { return Err(Errno::EIO) };
        let len = usize::try_from(len).map_err(|_| Errno::EFBIG)?;
        if len > v.len() {
            v.try_reserve(len - v.len()).map_err(|_| Errno::ENOSPC)?;
        }
        v.resize(len, 0);
        s.mtime_ns = time::realtime_ns();
        Ok(())
    }

    /// For a shared mapping: the file's pages (its bytes moved into them on the first), covering at least its first
    /// `len` bytes, and its size. ENODEV for a file on a volume, whose shared writable mappings are not supported.
    pub fn shared_pages(&self) -> Result<(Arc<Pages>, u64), Errno> {
        let Backing::Memory(state) = &self.backing else { return Err(Errno::ENODEV) };
        let mut s = state.lock();
        let Kind::File(d) = &mut s.kind else { return Err(Errno::ENODEV) };
        let size = d.len();
        let pages = d.pages()?;
        pages.cover(size)?;
        Ok((pages, size))
    }

    /// Directory entries from position `from` on: (name, inode number, type).
    pub fn entries_from(&self, from: usize) -> Result<Vec<(String, u64, EntryType)>, Errno> {
        let state = match &self.backing {
            Backing::Memory(state) => state,
            Backing::Volume(node) => return node.entries_from(from),
        };
        let s = state.lock();
        if let Kind::Tasks = s.kind {
            return Ok(proc::thread_entries(from));
        }
        if let Kind::Fds = s.kind {
            // Listed without the tree's lock: the descriptor table has its own.
            drop(s);
            return Ok(proc::descriptor_entries(from));
        }
        let Kind::Dir(entries) = &s.kind else { return Err(Errno::ENOTDIR) };
        Ok(entries.iter().skip(from).map(|(name, inode)| (name.clone(), inode.ino, inode.entry_type())).collect())
    }

    fn entry_type(&self) -> EntryType {
        match &self.backing {
            Backing::Memory(state) => match state.lock().kind {
                Kind::Dir(_) => EntryType::Directory,
                Kind::File(_) => EntryType::Regular,
                Kind::Device(_) => EntryType::CharDevice,
                Kind::Socket => EntryType::Socket,
                Kind::Symlink(_) => EntryType::Symlink,
                Kind::Fifo => EntryType::Fifo,
                Kind::Tasks | Kind::Fds => EntryType::Directory,
            },
            Backing::Volume(node) => node.entry_type(),
        }
    }
}

static ROOT: SpinLock<Option<Arc<Inode>>> = SpinLock::new(None);
/// The working directory, as an absolute, normalised path.
static CWD: SpinLock<String> = SpinLock::new(String::new());

pub fn root() -> Arc<Inode> {
    ROOT.lock().clone().expect("the filesystem is set up at boot")
}

/// Creates the root with the directories programs expect, then adds the image's files.
pub fn init(image: Option<&'static [u8]>) {
    *ROOT.lock() = Some(Inode::new(Kind::Dir(BTreeMap::new()), 0o755));
    *CWD.lock() = "/".to_string();
    for dir in ["/tmp", "/etc", "/dev", "/proc"] {
        let _ = mkdir(dir, 0o755);
    }
    // POSIX shared memory and named semaphores (shm_open, sem_open) live here, as in Linux's tmpfs.
    let _ = mkdir("/dev/shm", 0o1777);
    for (path, rdev) in
        [("/dev/null", DEV_NULL), ("/dev/zero", DEV_ZERO), ("/dev/random", DEV_RANDOM), ("/dev/urandom", DEV_URANDOM)]
    {
        let _ = create_device(path, rdev);
    }
    let _ = create_file("/etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let _ = create_file("/etc/resolv.conf", b"nameserver 10.0.2.3\n");
    let _ = create_file("/etc/services", proc::SERVICES.as_bytes());
    let _ = create_file("/etc/protocols", proc::PROTOCOLS.as_bytes());
    let _ = mkdir("/proc/self", 0o555);
    // For /proc/net/igmp and igmp6, which open renders (`syscalls::fs`).
    let _ = mkdir("/proc/net", 0o555);
    let _ = insert_new("/proc/self/task", Inode::new(Kind::Tasks, 0o555));
    let _ = insert_new("/proc/self/fd", Inode::new(Kind::Fds, 0o500));
    if let Some(image) = image {
        image::load(image);
    }
}

/// Device files are in the tree like any other, so that walks through them and listings of /dev behave as on Linux.
fn create_device(path: &str, rdev: u64) -> Result<(), Errno> {
    let (dir, name) = parent(path)?;
    let mut s = dir.memory().ok_or(Errno::ENOTDIR)?.lock();
    let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
    entries.insert(name, Inode::new(Kind::Device(rdev), 0o666));
    Ok(())
}

fn create_file(path: &str, contents: &[u8]) -> Result<(), Errno> {
    let inode = create(path, 0o644, false)?;
    inode.write_at(0, contents, false).map(|_| ())
}

/// Makes the file at `path` hold `contents` (a configuration file the library OS keeps, such as `/etc/resolv.conf`
/// from a DHCP lease), made again if it was removed; a directory there is left alone.
pub fn replace_file(path: &str, contents: &[u8]) {
    if let Ok(inode) = create(path, 0o644, false) {
        if inode.truncate(0).is_ok() {
            let _ = inode.write_at(0, contents, false);
        }
    }
}

/// `path` made absolute and canonical ([`normalise`]), its last name not followed unless a trailing slash asks for
/// a directory. A trailing slash on something else is ENOTDIR (a missing last name with one is fine:
/// `mkdir("new/")`).
pub fn absolute(path: &str) -> Result<String, Errno> {
    let (abs, slash) = normalise(path, false)?;
    if slash {
        must_be_dir(&abs)?;
    }
    Ok(abs)
}

/// What a trailing slash asks of `abs`: ENOTDIR if it names something other than a directory; a missing name is
/// fine here (each call decides what a missing one with a slash means).
pub fn must_be_dir(abs: &str) -> Result<(), Errno> {
    match lookup_normalised(abs) {
        Ok(node) if !node.is_dir() => Err(Errno::ENOTDIR),
        Ok(_) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn components(abs: &str) -> impl Iterator<Item = &str> {
    abs.split('/').filter(|p| !p.is_empty())
}

pub fn lookup(path: &str) -> Result<Arc<Inode>, Errno> {
    lookup_normalised(&absolute(path)?)
}

/// The inode at `abs`, an absolute path without `.`, `..` or empty components.
fn lookup_normalised(abs: &str) -> Result<Arc<Inode>, Errno> {
    if let Some((volume, rest)) = volume::find(abs) {
        return volume.lookup(&rest).map(Inode::on_volume);
    }
    let mut node = root();
    for name in components(abs) {
        node = node.memory_child(name)?;
    }
    Ok(node)
}

/// The directory that holds `path`, and the last component's name.
fn parent(path: &str) -> Result<(Arc<Inode>, String), Errno> {
    let abs = absolute(path)?;
    let (dir, name) = abs.rsplit_once('/').ok_or(Errno::ENOENT)?;
    if name.is_empty() {
        // The root has no parent to create it in or remove it from.
        return Err(Errno::EBUSY);
    }
    let dir = lookup(if dir.is_empty() { "/" } else { dir })?;
    if !dir.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    Ok((dir, name.to_string()))
}

/// Opens `path`, creating an empty file first if it does not exist and `create` (failing if it exists and
/// `exclusive`).
pub fn open(path: &str, create_mode: Option<u32>, exclusive: bool) -> Result<Arc<Inode>, Errno> {
    if let Some((volume, rest)) = volume::find(&absolute(path)?) {
        return volume.open(&rest, create_mode, exclusive).map(Inode::on_volume);
    }
    match (lookup(path), create_mode) {
        (Ok(_), Some(_)) if exclusive => Err(Errno::EEXIST),
        (Ok(inode), _) => Ok(inode),
        (Err(Errno::ENOENT), Some(mode)) => create(path, mode, exclusive),
        (Err(e), _) => Err(e),
    }
}

fn create(path: &str, perm: u32, exclusive: bool) -> Result<Arc<Inode>, Errno> {
    let (dir, name) = parent(path)?;
    let mut s = dir.memory().ok_or(Errno::ENOTDIR)?.lock();
    let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
    if let Some(existing) = entries.get(&name) {
        return if exclusive { Err(Errno::EEXIST) } else { Ok(existing.clone()) };
    }
    let inode = Inode::new(Kind::File(Data::Owned(Vec::new())), perm & 0o7777);
    entries.insert(name, inode.clone());
    s.mtime_ns = time::realtime_ns();
    Ok(inode)
}

/// Makes the socket file of an AF_UNIX socket bound to `path` (EEXIST if the path exists); its inode number. Volumes
/// hold no socket files (EOPNOTSUPP).
pub fn make_socket(path: &str) -> Result<u64, Errno> {
    if volume::find(&absolute(path)?).is_some() {
        return Err(Errno::EOPNOTSUPP);
    }
    let (dir, name) = parent(path)?;
    let mut s = dir.memory().ok_or(Errno::ENOTDIR)?.lock();
    let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
    if entries.contains_key(&name) {
        return Err(Errno::EEXIST);
    }
    let inode = Inode::new(Kind::Socket, 0o755);
    let ino = inode.ino;
    entries.insert(name, inode);
    s.mtime_ns = time::realtime_ns();
    Ok(ino)
}

/// The inode number of the socket file at `path` (a symbolic link followed, as connect does); `None` if `path` is
/// something else.
pub fn socket_inode(path: &str) -> Result<Option<u64>, Errno> {
    let inode = lookup_normalised(&normalise(path, true)?.0)?;
    Ok(inode.is_socket().then_some(inode.ino))
}

pub fn mkdir(path: &str, perm: u32) -> Result<(), Errno> {
    if let Some((volume, rest)) = volume::find(&absolute(path)?) {
        return volume.mkdir(&rest, perm);
    }
    // The root exists (and has no parent to make it in).
    let (dir, name) = parent(path).map_err(|e| if e == Errno::EBUSY { Errno::EEXIST } else { e })?;
    let mut s = dir.memory().ok_or(Errno::ENOTDIR)?.lock();
    let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
    if entries.contains_key(&name) {
        return Err(Errno::EEXIST);
    }
    entries.insert(name, Inode::new(Kind::Dir(BTreeMap::new()), perm & 0o7777));
    s.links += 1;
    Ok(())
}

/// link: `to` names the file `from` names (a hard link; `from` is not followed). A directory is EPERM, as on Linux;
/// one between volumes, or a volume and memory, is EXDEV.
pub fn link(from: &str, to: &str) -> Result<(), Errno> {
    let (from_abs, to_abs) = (absolute(from)?, absolute(to)?);
    match (volume::find(&from_abs), volume::find(&to_abs)) {
        (None, None) => {}
        (Some((a, from_rest)), Some((b, to_rest))) if Arc::ptr_eq(&a, &b) => return a.link(&from_rest, &to_rest),
        _ => return Err(Errno::EXDEV),
    }
    let target = lookup(&from_abs)?;
    if target.is_dir() {
        return Err(Errno::EPERM);
    }
    let (dir, name) = parent(&to_abs)?;
    let mut s = dir.memory().ok_or(Errno::ENOTDIR)?.lock();
    let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
    if entries.contains_key(&name) {
        return Err(Errno::EEXIST);
    }
    target.count_link(true);
    entries.insert(name, target);
    s.mtime_ns = time::realtime_ns();
    Ok(())
}

/// symlink: a link at `path` (not followed) whose target is `target`, kept as given (it may dangle).
pub fn symlink(target: &str, path: &str) -> Result<(), Errno> {
    if target.is_empty() {
        return Err(Errno::ENOENT);
    }
    if target.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if let Some((volume, rest)) = volume::find(&absolute(path)?) {
        return volume.symlink(&rest, target);
    }
    insert_new(path, Inode::new(Kind::Symlink(target.to_string()), 0o777))
}

/// mkfifo: a named pipe at `path` (not followed).
pub fn mkfifo(path: &str, perm: u32) -> Result<(), Errno> {
    if let Some((volume, rest)) = volume::find(&absolute(path)?) {
        return volume.mkfifo(&rest, perm);
    }
    insert_new(path, Inode::new(Kind::Fifo, perm & 0o7777))
}

/// Puts a new inode at `path` (not followed): EEXIST if the name is taken.
fn insert_new(path: &str, inode: Arc<Inode>) -> Result<(), Errno> {
    let (dir, name) = parent(path).map_err(|e| if e == Errno::EBUSY { Errno::EEXIST } else { e })?;
    let mut s = dir.memory().ok_or(Errno::ENOTDIR)?.lock();
    let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
    if entries.contains_key(&name) {
        return Err(Errno::EEXIST);
    }
    let is_dir = inode.is_dir();
    entries.insert(name, inode);
    if is_dir {
        s.links += 1;
    }
    s.mtime_ns = time::realtime_ns();
    Ok(())
}

/// readlink: the target of the link at `path` (not followed); EINVAL for anything else, as Linux says.
pub fn readlink(path: &str) -> Result<String, Errno> {
    lookup(path)?.link_target().ok_or(Errno::EINVAL)
}

/// unlink (`dir == false`) or rmdir (`dir == true`).
pub fn remove(path: &str, dir: bool) -> Result<(), Errno> {
    let abs = absolute(path)?;
    if let Some((volume, rest)) = volume::find(&abs) {
        return volume.remove(&rest, dir);
    }
    let (parent_dir, name) = parent(&abs)?;
    // (No walk from here on: it would take the lock held below.)
    let mut s = parent_dir.memory().ok_or(Errno::ENOTDIR)?.lock();
    let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
    let target = entries.get(&name).ok_or(Errno::ENOENT)?;
    if volume::find(&(abs + "/")).is_some() {
        // A mount point.
        return Err(Errno::EBUSY);
    }
    {
        let Some(t) = target.memory() else { return Err(Errno::EBUSY) };
        let t = t.lock();
        match (&t.kind, dir) {
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_) | Kind::Device(_) | Kind::Socket | Kind::Symlink(_) | Kind::Fifo, true) => {
                return Err(Errno::ENOTDIR)
            }
            (Kind::Tasks | Kind::Fds, _) => return Err(Errno::EPERM),
            (Kind::Dir(children), true) if !children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
    }
    if let Some(gone) = entries.remove(&name) {
        gone.count_link(false);
        if dir {
            s.links -= 1;
        }
    }
    s.mtime_ns = time::realtime_ns();
    Ok(())
}

pub fn rename(from: &str, to: &str) -> Result<(), Errno> {
    let (from_abs, to_abs) = (absolute(from)?, absolute(to)?);
    match (volume::find(&from_abs), volume::find(&to_abs)) {
        (None, None) => {}
        (Some((a, from_rest)), Some((b, to_rest))) if Arc::ptr_eq(&a, &b) => {
            if to_abs.starts_with(&(from_abs.clone() + "/")) {
                return Err(Errno::EINVAL);
            }
            return a.rename(&from_rest, &to_rest);
        }
        _ => return Err(Errno::EXDEV),
    }
    if volume::find(&(from_abs.clone() + "/")).is_some() {
        return Err(Errno::EBUSY);
    }
    let (from_dir, from_name) = parent(from)?;
    let (to_dir, to_name) = parent(to)?;
    let moving = {
        let s = from_dir.memory().ok_or(Errno::ENOTDIR)?.lock();
        let Kind::Dir(entries) = &s.kind else { return Err(Errno::ENOTDIR) };
        entries.get(&from_name).cloned().ok_or(Errno::ENOENT)?
    };
    // A directory cannot move into itself or below itself.
    if moving.is_dir() && (to_abs == from_abs || to_abs.starts_with(&(from_abs.clone() + "/"))) {
        return Err(Errno::EINVAL);
    }
    {
        let mut s = to_dir.memory().ok_or(Errno::ENOTDIR)?.lock();
        let Kind::Dir(entries) = &mut s.kind else { return Err(Errno::ENOTDIR) };
        if let Some(existing) = entries.get(&to_name) {
            if Arc::ptr_eq(existing, &moving) {
                // Two names of one file: rename does nothing, as POSIX says.
                return Ok(());
            }
            match (existing.is_dir(), moving.is_dir()) {
                (true, false) => return Err(Errno::EISDIR),
                (false, true) => return Err(Errno::ENOTDIR),
                (true, true) if !existing.entries_from(0)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        let moving_dir = moving.is_dir();
        if let Some(replaced) = entries.insert(to_name, moving) {
            replaced.count_link(false);
            if replaced.is_dir() {
                s.links -= 1;
            }
        }
        if moving_dir {
            s.links += 1;
        }
    }
    if from_abs != to_abs {
        if let Some(state) = from_dir.memory() {
            let mut s = state.lock();
            if let Kind::Dir(entries) = &mut s.kind {
                if entries.remove(&from_name).is_some_and(|moved| moved.is_dir()) {
                    s.links -= 1;
                }
            }
        }
    }
    Ok(())
}

/// Makes the directory the program starts in (`kiln run -w`) if it is missing, as Docker does, and enters it; after
/// the volumes are mounted, since it may be on one. One that cannot be made stops the VM with the reason.
pub fn start_in(boot: &kiln_abi::BootInfo) {
    if boot.workdir_len == 0 || boot.workdir_len >= PATH_MAX as u64 {
        return;
    }
    // SAFETY: the VMM put the path in the program's initial stack, which is mapped and not yet in the program's hands.
    let bytes = unsafe { core::slice::from_raw_parts(boot.workdir_addr as *const u8, boot.workdir_len as usize) };
    let Ok(path) = core::str::from_utf8(bytes) else { return };
    let mut at = String::new();
    let mut made = Ok(());
    for part in components(path) {
        at.push('/');
        at.push_str(part);
        made = match mkdir(&at, 0o755) {
            Err(Errno::EEXIST) => Ok(()),
            other => other,
        };
    }
    if made.and_then(|()| chdir(path)).is_err() {
        let mut message = String::from("cannot make or enter the working directory ");
        message.push_str(path);
        message.push_str(" (a name on its way is not a directory)");
        crate::hypercall::panic_message(&message);
    }
}

pub fn cwd() -> String {
    CWD.lock().clone()
}

pub fn chdir(path: &str) -> Result<(), Errno> {
    let abs = absolute(path)?;
    if !lookup(&abs)?.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    *CWD.lock() = abs;
    Ok(())
}
