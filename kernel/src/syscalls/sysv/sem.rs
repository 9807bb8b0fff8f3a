//! System V semaphore sets: semget, semop, semtimedop, semctl. A semop's operations apply all at once or not at all;
//! one that cannot waits (unless IPC_NOWAIT) for the set to change. SEM_UNDO is accepted and has nothing to undo:
//! adjustments would apply when the process exits, which ends the VM.

use super::{command, deadline_after, now, set_perm, Perm, Table, IPC_NOWAIT, IPC_RMID, IPC_SET, IPC_STAT};
use crate::errno::{Errno, SysResult};
use crate::file::wait::Waitable;
use crate::sync::SpinLock;
use crate::syscalls::{Args, PID};
use crate::user;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Linux's defaults: semaphores per set, operations per semop, sets, the largest value.
const SEMMSL: u64 = 32000;
const SEMOPM: u64 = 500;
const SEMMNI: usize = 32000;
const SEMVMX: i32 = 32767;

const GETPID: u64 = 11;
const GETVAL: u64 = 12;
const GETALL: u64 = 13;
const GETNCNT: u64 = 14;
const GETZCNT: u64 = 15;
const SETVAL: u64 = 16;
const SETALL: u64 = 17;

#[derive(Clone, Copy, Default)]
struct Semaphore {
    value: i32,
    pid: i32,
    /// Threads waiting for it to grow, and to be zero.
    ncnt: u32,
    zcnt: u32,
}

struct Set {
    perm: Perm,
    sems: Vec<Semaphore>,
    otime: i64,
    ctime: i64,
    removed: bool,
}

pub struct SemaphoreSet {
    set: SpinLock<Set>,
    waitable: Arc<Waitable>,
}

static SETS: SpinLock<Table<SemaphoreSet>> = SpinLock::new(Table::new(SEMMNI));

/// `struct semid64_ds` (104 bytes on x86-64).
#[repr(C)]
#[derive(Clone, Copy)]
struct SemidDs {
    perm: Perm,
    otime: i64,
    _unused1: u64,
    ctime: i64,
    _unused2: u64,
    nsems: u64,
    _unused3: [u64; 2],
}

/// `struct sembuf`.
#[derive(Clone, Copy)]
struct SemBuf {
    num: u16,
    op: i16,
    flags: i16,
}

const SEMBUF_SIZE: usize = 6;

impl SemBuf {
    fn from_bytes(b: &[u8]) -> SemBuf {
        let half = |i: usize| [b[i], b[i + 1]];
        SemBuf { num: u16::from_ne_bytes(half(0)), op: i16::from_ne_bytes(half(2)), flags: i16::from_ne_bytes(half(4)) }
    }
}

pub fn semget(a: &Args) -> SysResult {
    let (key, nsems, flags) = (a[0] as i32, a[1] as i32, a[2]);
    if nsems < 0 || nsems as u64 > SEMMSL {
        return Err(Errno::EINVAL);
    }
    let fits = |s: &SemaphoreSet| if nsems as usize > s.set.lock().sems.len() { Err(Errno::EINVAL) } else { Ok(()) };
    let make = |perm, _| {
        if nsems == 0 {
            return Err(Errno::EINVAL);
        }
        let mut sems = Vec::new();
        sems.try_reserve_exact(nsems as usize).map_err(|_| Errno::ENOMEM)?;
        sems.resize(nsems as usize, Semaphore::default());
        let set = Set { perm, sems, otime: 0, ctime: now(), removed: false };
        Ok(SemaphoreSet { set: SpinLock::new(set), waitable: Waitable::new() })
    };
    SETS.lock().get_or_create(key, flags, fits, make).map(|id| id as u64)
}

pub fn semop(a: &Args) -> SysResult {
    semtimedop(&[a[0], a[1], a[2], 0, 0, 0])
}

/// Where a semop stopped: the semaphore it waits on, and whether for zero (else for a larger value).
struct Blocked {
    num: usize,
    for_zero: bool,
    nowait: bool,
}

/// Applies all of `ops` or none; `Err(Ok(blocked))` when one of them has to wait.
fn apply(sems: &mut [Semaphore], ops: &[SemBuf]) -> Result<(), Result<Blocked, Errno>> {
    let mut values: Vec<i32> = sems.iter().map(|s| s.value).collect();
    for op in ops {
        let num = usize::from(op.num);
        let v = values.get_mut(num).ok_or(Err(Errno::EFBIG))?;
        let nowait = op.flags as u64 & IPC_NOWAIT != 0;
        match op.op {
            0 if *v != 0 => return Err(Ok(Blocked { num, for_zero: true, nowait })),
            0 => {}
            n if n > 0 => {
                if *v + i32::from(n) > SEMVMX {
                    return Err(Err(Errno::ERANGE));
                }
                *v += i32::from(n);
            }
            n if *v + i32::from(n) < 0 => return Err(Ok(Blocked { num, for_zero: false, nowait })),
            n => *v += i32::from(n),
        }
    }
    for (i, s) in sems.iter_mut().enumerate() {
        if s.value != values[i] || ops.iter().any(|op| usize::from(op.num) == i) {
            s.value = values[i];
            s.pid = PID as i32;
        }
    }
    Ok(())
}

pub fn semtimedop(a: &Args) -> SysResult {
    let (id, at, nsops, timeout) = (a[0], a[1], a[2], a[3]);
    if nsops == 0 {
        return Err(Errno::EINVAL);
    }
    if nsops > SEMOPM {
        return Err(Errno::E2BIG);
    }
    let deadline = deadline_after(timeout)?;
    // One check of the whole array (at most SEMOPM entries), not a page walk per entry.
    let mut raw = alloc::vec![0u8; nsops as usize * SEMBUF_SIZE];
    user::read_bytes(at, &mut raw)?;
    let ops: Vec<SemBuf> = raw.chunks_exact(SEMBUF_SIZE).map(SemBuf::from_bytes).collect();
    let s = SETS.lock().get(id)?;
    if ops.iter().any(|op| usize::from(op.num) >= s.set.lock().sems.len()) {
        return Err(Errno::EFBIG);
    }
    loop {
        let seen = s.waitable.count();
        let blocked = {
            let mut set = s.set.lock();
            if set.removed {
                return Err(Errno::EIDRM);
            }
            match apply(&mut set.sems, &ops) {
                Ok(()) => {
                    set.otime = now();
                    drop(set);
                    s.waitable.changed();
                    return Ok(0);
                }
                Err(Err(e)) => return Err(e),
                Err(Ok(b)) if b.nowait => return Err(Errno::EAGAIN),
                Err(Ok(b)) => {
                    let sem = &mut set.sems[b.num];
                    if b.for_zero {
                        sem.zcnt += 1;
                    } else {
                        sem.ncnt += 1;
                    }
                    b
                }
            }
        };
        let woke = s.waitable.wait(seen, deadline);
        {
            let mut set = s.set.lock();
            let sem = &mut set.sems[blocked.num];
            if blocked.for_zero {
                sem.zcnt -= 1;
            } else {
                sem.ncnt -= 1;
            }
        }
        woke?;
        if crate::time::since_boot_ns() >= deadline {
            return Err(Errno::EAGAIN);
        }
    }
}

/// semctl(id, num, cmd, arg): `arg` is the value (SETVAL) or a pointer (IPC_STAT, IPC_SET, GETALL, SETALL).
pub fn semctl(a: &Args) -> SysResult {
    let (id, num, cmd, arg) = (a[0], a[1] as i32, command(a[2]), a[3]);
    if cmd == IPC_RMID {
        let s = SETS.lock().remove(id)?;
        s.set.lock().removed = true;
        s.waitable.changed();
        return Ok(0);
    }
    let s = SETS.lock().get(id)?;
    let mut set = s.set.lock();
    let count = set.sems.len();
    let one = || usize::try_from(num).ok().filter(|&n| n < count).ok_or(Errno::EINVAL);
    let answer = match cmd {
        IPC_STAT => {
            let ds = SemidDs {
                perm: set.perm,
                otime: set.otime,
                _unused1: 0,
                ctime: set.ctime,
                _unused2: 0,
                nsems: count as u64,
                _unused3: [0; 2],
            };
            user::write(arg, ds)?;
            0
        }
        IPC_SET => {
            set_perm(&mut set.perm, &user::read(arg)?);
            set.ctime = now();
            0
        }
        GETVAL => set.sems[one()?].value as u64,
        GETPID => set.sems[one()?].pid as u64,
        GETNCNT => u64::from(set.sems[one()?].ncnt),
        GETZCNT => u64::from(set.sems[one()?].zcnt),
        GETALL => {
            // One check of the whole array, not a page walk per semaphore.
            let values: Vec<u8> = set.sems.iter().flat_map(|sem| (sem.value as u16).to_ne_bytes()).collect();
            user::write_bytes(arg, &values)?;
            0
        }
        SETVAL => {
            let value = arg as i32;
            if !(0..=SEMVMX).contains(&value) {
                return Err(Errno::ERANGE);
            }
            let n = one()?;
            set.sems[n] = Semaphore { value, pid: PID as i32, ..set.sems[n] };
            set.ctime = now();
            drop(set);
            s.waitable.changed();
            return Ok(0);
        }
        SETALL => {
            let mut raw = alloc::vec![0u8; 2 * count];
            user::read_bytes(arg, &mut raw)?;
            let values = raw.chunks_exact(2).map(|v| i32::from(u16::from_ne_bytes([v[0], v[1]])));
            if values.clone().any(|v| v > SEMVMX) {
                return Err(Errno::ERANGE);
            }
            for (sem, v) in set.sems.iter_mut().zip(values) {
                sem.value = v;
                sem.pid = PID as i32;
            }
            set.ctime = now();
            drop(set);
            s.waitable.changed();
            return Ok(0);
        }
        _ => return Err(Errno::EINVAL),
    };
    Ok(answer)
}
