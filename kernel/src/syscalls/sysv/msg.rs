//! System V message queues: msgget, msgsnd, msgrcv, msgctl.

use super::{command, now, set_perm, Perm, Table, IPC_NOWAIT, IPC_RMID, IPC_SET, IPC_STAT};
use crate::errno::{Errno, SysResult};
use crate::file::wait::Waitable;
use crate::sync::SpinLock;
use crate::syscalls::{Args, PID};
use crate::user;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Linux's defaults: the largest message, a queue's bytes, the number of queues.
const MSGMAX: u64 = 8192;
const MSGMNB: u64 = 16384;
const MSGMNI: usize = 32000;
const MSG_NOERROR: u64 = 0o10000;
const MSG_EXCEPT: u64 = 0o20000;
const MSG_COPY: u64 = 0o40000;

struct Queue {
    perm: Perm,
    messages: VecDeque<(i64, Vec<u8>)>,
    bytes: u64,
    qbytes: u64,
    stime: i64,
    rtime: i64,
    ctime: i64,
    lspid: i32,
    lrpid: i32,
    removed: bool,
}

pub struct MessageQueue {
    queue: SpinLock<Queue>,
    waitable: Arc<Waitable>,
}

static QUEUES: SpinLock<Table<MessageQueue>> = SpinLock::new(Table::new(MSGMNI));

/// `struct msqid64_ds` (120 bytes on x86-64).
#[repr(C)]
#[derive(Clone, Copy)]
struct MsqidDs {
    perm: Perm,
    stime: i64,
    rtime: i64,
    ctime: i64,
    cbytes: u64,
    qnum: u64,
    qbytes: u64,
    lspid: i32,
    lrpid: i32,
    _unused: [u64; 2],
}

pub fn msgget(a: &Args) -> SysResult {
    let (key, flags) = (a[0] as i32, a[1]);
    let make = |perm, _| {
        let queue = Queue {
            perm,
            messages: VecDeque::new(),
            bytes: 0,
            qbytes: MSGMNB,
            stime: 0,
            rtime: 0,
            ctime: now(),
            lspid: 0,
            lrpid: 0,
            removed: false,
        };
        Ok(MessageQueue { queue: SpinLock::new(queue), waitable: Waitable::new() })
    };
    QUEUES.lock().get_or_create(key, flags, |_| Ok(()), make).map(|id| id as u64)
}

pub fn msgsnd(a: &Args) -> SysResult {
    let (id, at, size, flags) = (a[0], a[1], a[2], a[3]);
    if size > MSGMAX {
        return Err(Errno::EINVAL);
    }
    let q = QUEUES.lock().get(id)?;
    let mtype: i64 = user::read(at)?;
    if mtype < 1 {
        return Err(Errno::EINVAL);
    }
    let mut text = Vec::new();
    text.try_reserve_exact(size as usize).map_err(|_| Errno::ENOMEM)?;
    text.resize(size as usize, 0);
    user::read_bytes(at + 8, &mut text)?;
    loop {
        let seen = q.waitable.count();
        {
            let mut s = q.queue.lock();
            if s.removed {
                return Err(Errno::EIDRM);
            }
            // As Linux: room for the bytes, and for one more message (each counts at least a byte).
            if s.bytes + size <= s.qbytes && (s.messages.len() as u64) < s.qbytes {
                s.bytes += size;
                s.messages.push_back((mtype, text));
                s.stime = now();
                s.lspid = PID as i32;
                drop(s);
                q.waitable.changed();
                return Ok(0);
            }
        }
        if flags & IPC_NOWAIT != 0 {
            return Err(Errno::EAGAIN);
        }
        q.waitable.wait(seen, u64::MAX)?;
    }
}

/// The index of the message msgrcv takes for `wanted` (0: the first; > 0: the first of that type, or of another
/// type with MSG_EXCEPT; < 0: the first of the lowest type up to -wanted).
fn pick(messages: &VecDeque<(i64, Vec<u8>)>, wanted: i64, except: bool) -> Option<usize> {
    match wanted {
        0 => (!messages.is_empty()).then_some(0),
        t if t > 0 => messages.iter().position(|(m, _)| (*m == t) != except),
        t => {
            let limit = t.unsigned_abs();
            let mut best: Option<(usize, i64)> = None;
            for (i, (m, _)) in messages.iter().enumerate() {
                if (*m as u64) <= limit && best.is_none_or(|(_, b)| *m < b) {
                    best = Some((i, *m));
                }
            }
            best.map(|(i, _)| i)
        }
    }
}

pub fn msgrcv(a: &Args) -> SysResult {
    let (id, at, size, wanted, flags) = (a[0], a[1], a[2] as i64, a[3] as i64, a[4]);
    if size < 0 {
        return Err(Errno::EINVAL);
    }
    if flags & MSG_COPY != 0 {
        // Linux without checkpoint/restore support.
        return Err(Errno::ENOSYS);
    }
    let q = QUEUES.lock().get(id)?;
    // No message is longer than MSGMAX: no need to look at more of the buffer.
    user::check(at, 8 + (size as u64).min(MSGMAX), true)?;
    loop {
        let seen = q.waitable.count();
        {
            let mut s = q.queue.lock();
            if s.removed {
                return Err(Errno::EIDRM);
            }
            if let Some(i) = pick(&s.messages, wanted, flags & MSG_EXCEPT != 0) {
                let len = s.messages[i].1.len() as u64;
                if len > size as u64 && flags & MSG_NOERROR == 0 {
                    return Err(Errno::E2BIG);
                }
                let (mtype, text) = s.messages.remove(i).ok_or(Errno::EINVAL)?;
                s.bytes -= len;
                s.rtime = now();
                s.lrpid = PID as i32;
                drop(s);
                let n = len.min(size as u64);
                user::write(at, mtype)?;
                user::write_bytes(at + 8, &text[..n as usize])?;
                q.waitable.changed();
                return Ok(n);
            }
        }
        if flags & IPC_NOWAIT != 0 {
            return Err(Errno::ENOMSG);
        }
        q.waitable.wait(seen, u64::MAX)?;
    }
}

pub fn msgctl(a: &Args) -> SysResult {
    let (id, cmd, buf) = (a[0], command(a[1]), a[2]);
    match cmd {
        IPC_RMID => {
            let q = QUEUES.lock().remove(id)?;
            q.queue.lock().removed = true;
            q.waitable.changed();
            Ok(0)
        }
        IPC_STAT => {
            let q = QUEUES.lock().get(id)?;
            let s = q.queue.lock();
            let ds = MsqidDs {
                perm: s.perm,
                stime: s.stime,
                rtime: s.rtime,
                ctime: s.ctime,
                cbytes: s.bytes,
                qnum: s.messages.len() as u64,
                qbytes: s.qbytes,
                lspid: s.lspid,
                lrpid: s.lrpid,
                _unused: [0; 2],
            };
            drop(s);
            user::write(buf, ds).map(|()| 0)
        }
        IPC_SET => {
            let q = QUEUES.lock().get(id)?;
            let new: MsqidDs = user::read(buf)?;
            let mut s = q.queue.lock();
            set_perm(&mut s.perm, &new.perm);
            // The program runs as root, whom Linux lets raise a queue's size past MSGMNB.
            s.qbytes = new.qbytes;
            s.ctime = now();
            drop(s);
            q.waitable.changed();
            Ok(0)
        }
        _ => Err(Errno::EINVAL),
    }
}
