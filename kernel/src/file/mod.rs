//! Open files: the descriptor table and the objects behind descriptors (the standard streams, `/dev/null`-like
//! devices, pipes, eventfds). Blocking operations put the thread to sleep in the scheduler on the object's
//! `wait::Waitable`; a change wakes only that object's waiters and watchers (see `wait`).

pub mod console;
pub mod epoll;
pub mod eventfd;
pub mod fifo;
pub mod locks;
pub mod pipe;
pub mod stdin;
pub mod wait;

use crate::errno::Errno;
use crate::sync::SpinLock;
use crate::vfs::Inode;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use eventfd::EventFd;
use wait::Waitable;

pub const O_ACCMODE: u32 = 3;
pub const O_RDONLY: u32 = 0;
pub const O_WRONLY: u32 = 1;
pub const O_RDWR: u32 = 2;
pub const O_NONBLOCK: u32 = 0o4000;
pub const O_APPEND: u32 = 0o2000;
pub const O_CLOEXEC: u32 = 0o2000000;
/// Each write reaches the disk before it returns, as if fdatasync followed it; O_SYNC (0o4010000) includes it.
pub const O_DSYNC: u32 = 0o10000;
/// O_SYNC's own bit, kept so that F_GETFL reports O_SYNC as it was given.
pub const O_SYNC_ONLY: u32 = 0o4000000;
/// A descriptor that only names a file (for fstat, fchdir, `*at` calls, AT_EMPTY_PATH): no I/O through it, EBADF.
pub const O_PATH: u32 = 0o10000000;

pub const POLLIN: u16 = 0x1;
pub const POLLOUT: u16 = 0x4;
pub const POLLERR: u16 = 0x8;
pub const POLLHUP: u16 = 0x10;

/// Descriptors a program may have open: enough for a server with tens of thousands of connections. The highest hard
/// RLIMIT_NOFILE (what Linux's `nr_open` is to root), and where both limits start.
pub const MAX_FDS: usize = 65536;

/// RLIMIT_NOFILE, soft and hard. No descriptor at or above the soft limit is made: the lowest free one is EMFILE past
/// it, dup2's target EBADF, F_DUPFD's start EINVAL. Descriptors already above a lowered limit stay open.
static NOFILE: SpinLock<(usize, usize)> = SpinLock::new((MAX_FDS, MAX_FDS));

pub fn nofile_limit() -> (usize, usize) {
    *NOFILE.lock()
}

/// The RLIMIT_NOFILE the launcher asked for (a container's): at most [`MAX_FDS`], the soft limit at most the hard.
pub fn start_nofile_limit(soft: u64, hard: u64) {
    let hard = hard.min(MAX_FDS as u64) as usize;
    *NOFILE.lock() = ((soft as usize).min(hard), hard);
}

/// setrlimit(RLIMIT_NOFILE) with Linux's rules: soft <= hard, hard <= MAX_FDS (EPERM), and only a privileged caller
/// raises the hard limit.
pub fn set_nofile_limit(soft: u64, hard: u64, privileged: bool) -> Result<(), Errno> {
    if soft > hard {
        return Err(Errno::EINVAL);
    }
    let mut limit = NOFILE.lock();
    if hard > MAX_FDS as u64 || (hard > limit.1 as u64 && !privileged) {
        return Err(Errno::EPERM);
    }
    *limit = (soft as usize, hard as usize);
    Ok(())
}

pub enum Object {
    Stdin,
    /// fd 1 or 2 of the VMM.
    Console(u64),
    Null,
    Zero,
    Random,
    PipeReader(pipe::Reader),
    PipeWriter(pipe::Writer),
    EventFd(Arc<EventFd>),
    Epoll(epoll::Epoll),
    /// A file of the filesystem, the path it was opened by (what `/proc/self/fd` shows; empty for a file in no
    /// directory) and the descriptor's offset in it. Under O_PATH, any inode but a directory.
    Regular {
        inode: Arc<Inode>,
        path: String,
        offset: SpinLock<u64>,
    },
    Socket(crate::net::socket::Socket),
    /// An AF_UNIX socket.
    Unix(crate::net::unix::Socket),
    /// A NETLINK_ROUTE socket.
    Netlink(Arc<crate::net::netlink::Netlink>),
    /// A FIFO opened O_RDWR: both ends of its pipe.
    FifoBoth(pipe::Reader, pipe::Writer),
    /// An O_PATH descriptor opened through `/proc/self/fd/N` for a file of no path (a pipe, a socket): it names that
    /// file without holding it open (a pipe's writer still sees its readers go), so it keeps what `fstat` and
    /// `readlink` show of it.
    Named {
        mode: u32,
        ino: u64,
        link: String,
    },
    /// A directory, its absolute path (for `*at` calls relative to it) and the `getdents64` position.
    Directory {
        inode: Arc<Inode>,
        path: String,
        position: SpinLock<usize>,
    },
}

pub struct File {
    pub object: Object,
    /// Access mode and status flags (O_NONBLOCK, O_APPEND), as F_GETFL reports them.
    pub flags: AtomicU32,
}

impl File {
    pub fn new(object: Object, flags: u32) -> Arc<File> {
        Arc::new(File { object, flags: AtomicU32::new(flags) })
    }

    /// What record locks of this file are keyed by: the inode number for a file of the filesystem (so that separate
    /// opens of it meet), else the description itself.
    pub fn lock_key(&self) -> u64 {
        match &self.object {
            Object::Regular { inode, .. } | Object::Directory { inode, .. } => inode.ino,
            _ => self as *const File as u64 | 1 << 63,
        }
    }

    /// Whether the descriptor only names its file (O_PATH).
    pub fn is_path(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & O_PATH != 0
    }

    /// The inode number `fstat` gives an object that is not a file of the filesystem: one per pipe (both ends) and
    /// per socket, one for the standard streams each, and one anonymous inode for eventfds and epoll instances, as
    /// Linux has. They lie above the tree's numbers, which count up from 2.
    pub fn anonymous_ino(&self) -> u64 {
        const BASE: u64 = 1 << 40;
        let of = |w: &Arc<Waitable>| BASE | ((Arc::as_ptr(w) as u64 >> 4) & ((1 << 36) - 1)) << 2;
        match &self.object {
            Object::Regular { inode, .. } | Object::Directory { inode, .. } => inode.ino,
            Object::Stdin => BASE | 1,
            Object::Console(n) => BASE | (1 + n),
            Object::PipeReader(p) => of(&p.0.waitable),
            Object::PipeWriter(p) => of(&p.0.waitable),
            Object::FifoBoth(rx, _) => of(&rx.0.waitable),
            Object::Socket(s) => of(&s.waitable),
            Object::Unix(u) => of(&u.0.waitable),
            Object::Netlink(n) => of(&n.waitable),
            Object::Named { ino, .. } => *ino,
            Object::EventFd(_) | Object::Epoll(_) | Object::Null | Object::Zero | Object::Random => BASE,
        }
    }

    /// What `readlink` of `/proc/self/fd/N` gives for this file, as Linux names it.
    pub fn proc_link(&self) -> String {
        use alloc::format;
        match &self.object {
            Object::Regular { path, .. } | Object::Directory { path, .. } => path.clone(),
            Object::Named { link, .. } => link.clone(),
            Object::Null => "/dev/null".into(),
            Object::Zero => "/dev/zero".into(),
            Object::Random => "/dev/urandom".into(),
            Object::EventFd(_) => "anon_inode:[eventfd]".into(),
            Object::Epoll(_) => "anon_inode:[eventpoll]".into(),
            Object::Socket(_) | Object::Unix(_) | Object::Netlink(_) => format!("socket:[{}]", self.anonymous_ino()),
            Object::Stdin
            | Object::Console(_)
            | Object::PipeReader(_)
            | Object::PipeWriter(_)
            | Object::FifoBoth(..) => format!("pipe:[{}]", self.anonymous_ino()),
        }
    }

    pub fn nonblocking(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & O_NONBLOCK != 0
    }

    /// The waitables whose changes can change this file's readiness: none for files that are always ready.
    fn waitables(&self) -> [Option<&Waitable>; 2] {
        match &self.object {
            Object::Stdin => [Some(&stdin::WAITABLE), None],
            Object::PipeReader(p) => [Some(&p.0.waitable), None],
            Object::PipeWriter(p) => [Some(&p.0.waitable), None],
            Object::EventFd(e) => [Some(&e.waitable), None],
            Object::Socket(s) => [Some(&s.waitable), None],
            Object::Unix(u) => [Some(&u.0.waitable), None],
            Object::Netlink(n) => [Some(&n.waitable), None],
            Object::FifoBoth(rx, _) => [Some(&rx.0.waitable), None],
            Object::Epoll(e) => [Some(&e.waitable), None],
            _ => [None, None],
        }
    }

    /// How often the object behind this file has changed state (for edge-triggered epoll).
    pub fn changes(&self) -> u64 {
        self.waitables().into_iter().flatten().map(|w| w.count()).sum()
    }

    /// Tells `watcher` (an epoll instance, a `poll` call) of every change of this file's object until `unwatch`.
    pub fn watch(&self, watcher: &Arc<Waitable>) {
        for w in self.waitables().into_iter().flatten() {
            w.watch(watcher);
        }
    }

    pub fn unwatch(&self, watcher: &Arc<Waitable>) {
        for w in self.waitables().into_iter().flatten() {
            w.unwatch(watcher);
        }
    }

    /// The `poll` events this file has now, out of `wanted` (POLLHUP and POLLERR always count).
    pub fn ready(&self, wanted: u16) -> u16 {
        let has = match &self.object {
            Object::Stdin => stdin::events(),
            Object::Console(_) => POLLOUT,
            Object::Null | Object::Zero | Object::Random | Object::Regular { .. } => POLLIN | POLLOUT,
            Object::Directory { .. } => POLLIN,
            Object::PipeReader(p) => p.0.reader_events(),
            Object::PipeWriter(p) => p.0.writer_events(),
            Object::EventFd(e) => e.events(),
            Object::Socket(s) => s.events(),
            Object::Unix(u) => u.0.events(),
            Object::Netlink(n) => n.events(),
            // Its own writer is open: never a hang-up.
            Object::FifoBoth(rx, tx) => (rx.0.reader_events() & POLLIN) | (tx.0.writer_events() & POLLOUT),
            // Only named (O_PATH), never polled.
            Object::Named { .. } => 0,
            Object::Epoll(e) => {
                if e.any_ready() {
                    POLLIN
                } else {
                    0
                }
            }
        };
        has & (wanted | POLLHUP | POLLERR)
    }
}

/// An open file description ends when its last descriptor (or other holder) lets go: its OFD locks go with it.
impl Drop for File {
    fn drop(&mut self) {
        let description = self as *const File as usize;
        locks::release(locks::Owner::Description(description), None);
        locks::release(locks::Owner::Flock(description), None);
    }
}

/// A closed descriptor's file: the process's POSIX locks of that file go, as Linux drops them on any close.
fn closed(slot: Option<Slot>) {
    if let Some(slot) = slot {
        locks::release(locks::Owner::Process, Some(slot.file.lock_key()));
    }
}

/// A descriptor's file and its close-on-exec flag.
#[derive(Clone)]
struct Slot {
    file: Arc<File>,
    cloexec: bool,
}

static TABLE: SpinLock<Vec<Option<Slot>>> = SpinLock::new(Vec::new());

/// Opens the three standard streams.
pub fn init() {
    let mut t = TABLE.lock();
    t.push(Some(Slot { file: File::new(Object::Stdin, O_RDONLY), cloexec: false }));
    t.push(Some(Slot { file: File::new(Object::Console(1), O_WRONLY), cloexec: false }));
    t.push(Some(Slot { file: File::new(Object::Console(2), O_WRONLY), cloexec: false }));
}

/// The file behind `fd` for I/O and anything else but naming it: EBADF for an O_PATH descriptor, as on Linux.
pub fn get(fd: u64) -> Result<Arc<File>, Errno> {
    get_including_path(fd).and_then(|f| if f.is_path() { Err(Errno::EBADF) } else { Ok(f) })
}

/// The file behind `fd` for the calls that only need to know which file it is (fstat, fchdir, `*at` calls, dup,
/// F_GETFL...): O_PATH descriptors included.
pub fn get_including_path(fd: u64) -> Result<Arc<File>, Errno> {
    let t = TABLE.lock();
    let slot = usize::try_from(fd).ok().and_then(|fd| t.get(fd)).and_then(Option::as_ref);
    slot.map(|s| s.file.clone()).ok_or(Errno::EBADF)
}

/// The open descriptors, lowest first, with their files (`/proc/self/fd`).
pub fn descriptors() -> Vec<(u64, Arc<File>)> {
    let t = TABLE.lock();
    t.iter().enumerate().filter_map(|(fd, slot)| slot.as_ref().map(|s| (fd as u64, s.file.clone()))).collect()
}

/// Installs `file` at the lowest free descriptor not below `from` (F_DUPFD: EINVAL if `from` is not below the soft
/// RLIMIT_NOFILE).
pub fn install_from(file: Arc<File>, cloexec: bool, from: usize) -> Result<u64, Errno> {
    if from >= nofile_limit().0 {
        return Err(Errno::EINVAL);
    }
    install_lowest(file, cloexec, from)
}

/// Installs `file` at the lowest free descriptor not below `from`; EMFILE if none is below the soft limit.
fn install_lowest(file: Arc<File>, cloexec: bool, from: usize) -> Result<u64, Errno> {
    let soft = nofile_limit().0;
    let mut t = TABLE.lock();
    let fd = (from..soft).find(|&fd| t.get(fd).is_none_or(Option::is_none)).ok_or(Errno::EMFILE)?;
    if t.len() <= fd {
        t.resize(fd + 1, None);
    }
    t[fd] = Some(Slot { file, cloexec });
    Ok(fd as u64)
}

/// EMFILE if no descriptor is free below the soft limit: for calls that must not consume anything (a queued
/// connection) before they know they can install it, as Linux reserves the descriptor first.
pub fn check_free() -> Result<(), Errno> {
    let soft = nofile_limit().0;
    let t = TABLE.lock();
    (0..soft).any(|fd| t.get(fd).is_none_or(Option::is_none)).then_some(()).ok_or(Errno::EMFILE)
}

pub fn install(file: Arc<File>, cloexec: bool) -> Result<u64, Errno> {
    install_lowest(file, cloexec, 0)
}

/// Puts `file` at `fd`, closing what was there (dup2); EBADF for a descriptor the soft RLIMIT_NOFILE does not allow.
pub fn install_at(fd: u64, file: Arc<File>, cloexec: bool) -> Result<u64, Errno> {
    let soft = nofile_limit().0;
    let fd = usize::try_from(fd).ok().filter(|&fd| fd < soft).ok_or(Errno::EBADF)?;
    let old = {
        let mut t = TABLE.lock();
        if t.len() <= fd {
            t.resize(fd + 1, None);
        }
        t[fd].replace(Slot { file, cloexec })
    };
    // Dropped outside the lock: closing a pipe end wakes the other side.
    closed(old);
    Ok(fd as u64)
}

pub fn close(fd: u64) -> Result<(), Errno> {
    let old = {
        let mut t = TABLE.lock();
        let slot = usize::try_from(fd).ok().and_then(|fd| t.get_mut(fd)).ok_or(Errno::EBADF)?;
        slot.take().ok_or(Errno::EBADF)?
    };
    closed(Some(old));
    Ok(())
}

pub fn cloexec(fd: u64) -> Result<bool, Errno> {
    let t = TABLE.lock();
    let slot = usize::try_from(fd).ok().and_then(|fd| t.get(fd)).and_then(Option::as_ref);
    slot.map(|s| s.cloexec).ok_or(Errno::EBADF)
}

pub fn set_cloexec(fd: u64, on: bool) -> Result<(), Errno> {
    let mut t = TABLE.lock();
    let slot = usize::try_from(fd).ok().and_then(|fd| t.get_mut(fd)).and_then(Option::as_mut);
    slot.map(|s| s.cloexec = on).ok_or(Errno::EBADF)
}
