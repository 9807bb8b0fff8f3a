//! System V IPC: message queues, semaphore sets and shared memory segments. One program is one process, so each
//! family is a table in memory: ids made as Linux makes them (slot + 32768 * sequence), keys looked up with
//! IPC_PRIVATE, IPC_CREAT and IPC_EXCL as Linux does, Linux's default limits (MSGMAX, MSGMNB, SEMMSL, SEMOPM, SHMMAX,
//! the number of ids), IPC_STAT/IPC_SET/IPC_RMID. A blocking msgsnd, msgrcv or semop waits on its object's
//! `Waitable` (woken by every change of the object only); IPC_RMID wakes its waiters with EIDRM. One user: permission
//! bits are kept and reported, not checked.

pub mod msg;
pub mod sem;
pub mod shm;

use crate::errno::Errno;
use crate::time;
use crate::user;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;

pub const IPC_PRIVATE: i32 = 0;
pub const IPC_CREAT: u64 = 0o1000;
pub const IPC_EXCL: u64 = 0o2000;
pub const IPC_NOWAIT: u64 = 0o4000;
pub const IPC_RMID: u64 = 0;
pub const IPC_SET: u64 = 1;
pub const IPC_STAT: u64 = 2;
/// The "new layout" flag some libcs put in the command; x86-64 has only the one layout.
const IPC_64: u64 = 0x100;
/// Linux's ids: slot plus this times a sequence number that grows with every use of the slot.
const SEQ_MULTIPLIER: i32 = 32768;

/// `struct ipc64_perm` (48 bytes on x86-64): key, uid, gid, cuid, cgid, mode, seq.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Perm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
    pub seq: u16,
    _pad: [u16; 3],
    _unused: [u64; 2],
}

impl Perm {
    fn new(key: i32, mode: u32, seq: u16) -> Perm {
        Perm { key, mode: mode & 0o777, seq, ..Perm::default() }
    }
}

/// The command of a `*ctl` call without the layout flag.
pub fn command(cmd: u64) -> u64 {
    cmd & !IPC_64
}

/// The seconds of the real-time clock, for the `*_time` fields.
pub fn now() -> i64 {
    (time::realtime_ns() / 1_000_000_000) as i64
}

/// One family's objects by id, and ids by key.
pub struct Table<T> {
    by_id: BTreeMap<i32, Arc<T>>,
    by_key: BTreeMap<i32, i32>,
    /// The sequence number of each slot's next use.
    seqs: alloc::vec::Vec<u16>,
    max: usize,
}

impl<T> Table<T> {
    pub const fn new(max: usize) -> Table<T> {
        Table { by_id: BTreeMap::new(), by_key: BTreeMap::new(), seqs: alloc::vec::Vec::new(), max }
    }

    /// `*get(key, ..., flags)`: the id of the object with `key` (checked by `fits`), or a new one from `make(perm,
    /// id)` when IPC_PRIVATE or IPC_CREAT says so; ENOENT, EEXIST, ENOSPC as Linux.
    pub fn get_or_create(
        &mut self,
        key: i32,
        flags: u64,
        fits: impl FnOnce(&T) -> Result<(), Errno>,
        make: impl FnOnce(Perm, i32) -> Result<T, Errno>,
    ) -> Result<i32, Errno> {
        if key != IPC_PRIVATE {
            if let Some(&id) = self.by_key.get(&key) {
                if flags & IPC_CREAT != 0 && flags & IPC_EXCL != 0 {
                    return Err(Errno::EEXIST);
                }
                fits(&self.by_id[&id])?;
                return Ok(id);
            }
            if flags & IPC_CREAT == 0 {
                return Err(Errno::ENOENT);
            }
        }
        if self.by_id.len() >= self.max {
            return Err(Errno::ENOSPC);
        }
        // The lowest free slot, as Linux's idr hands out.
        let used: alloc::collections::BTreeSet<usize> =
            self.by_id.keys().map(|&id| (id % SEQ_MULTIPLIER) as usize).collect();
        let slot = (0..self.max).find(|s| !used.contains(s)).ok_or(Errno::ENOSPC)?;
        if self.seqs.len() <= slot {
            self.seqs.resize(slot + 1, 0);
        }
        let seq = self.seqs[slot];
        // Ids stay positive: the sequence wraps below i32::MAX / SEQ_MULTIPLIER.
        self.seqs[slot] = ((u32::from(seq) + 1) % (i32::MAX / SEQ_MULTIPLIER) as u32) as u16;
        let id = slot as i32 + SEQ_MULTIPLIER * i32::from(seq);
        let object = make(Perm::new(key, (flags & 0o777) as u32, seq), id)?;
        self.by_id.insert(id, Arc::new(object));
        if key != IPC_PRIVATE {
            self.by_key.insert(key, id);
        }
        Ok(id)
    }

    /// The object with id `id`; EINVAL if there is none (negative ids too).
    pub fn get(&self, id: u64) -> Result<Arc<T>, Errno> {
        let id = i32::try_from(id as i64).map_err(|_| Errno::EINVAL)?;
        self.by_id.get(&id).cloned().ok_or(Errno::EINVAL)
    }

    /// Frees the object's key for a new object, keeping the object (a removed shared memory segment that is still
    /// attached).
    pub fn forget_key(&mut self, id: u64) {
        let id = id as i64 as i32;
        self.by_key.retain(|_, v| *v != id);
    }

    /// IPC_RMID: forgets the object (its key can be used again at once).
    pub fn remove(&mut self, id: u64) -> Result<Arc<T>, Errno> {
        let id = i32::try_from(id as i64).map_err(|_| Errno::EINVAL)?;
        let object = self.by_id.remove(&id).ok_or(Errno::EINVAL)?;
        self.by_key.retain(|_, v| *v != id);
        Ok(object)
    }
}

/// IPC_SET: the owner and mode bits from `new`, the program's `struct ipc64_perm` (read before the object is locked).
pub fn set_perm(perm: &mut Perm, new: &Perm) {
    perm.uid = new.uid;
    perm.gid = new.gid;
    perm.mode = (perm.mode & !0o777) | (new.mode & 0o777);
}

/// A relative `struct timespec` timeout (null: none) as a deadline in ns since boot.
pub fn deadline_after(timeout: u64) -> Result<u64, Errno> {
    if timeout == 0 {
        return Ok(u64::MAX);
    }
    Ok(time::since_boot_ns().saturating_add(user::read_timespec(timeout)?))
}
