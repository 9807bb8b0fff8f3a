//! System V shared memory: shmget, shmat, shmdt, shmctl. A segment is zeroed frames of guest memory that every
//! attachment maps (`mm::vma::map_borrowed`), so all attachments see the same bytes; its frames go back to the
//! allocator once it is removed (IPC_RMID) and no longer attached. munmap of an attachment detaches it, as on Linux.

use super::{command, now, set_perm, Perm, Table, IPC_RMID, IPC_SET, IPC_STAT};
use crate::errno::{Errno, SysResult};
use crate::mm::{self, vma};
use crate::sync::SpinLock;
use crate::syscalls::{Args, PID};
use crate::user;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use kiln_abi::layout::{direct_map, page_align_up, PAGE_SIZE};

/// Linux's defaults: the largest segment (ULONG_MAX - 2^24), the number of segments.
const SHMMAX: u64 = u64::MAX - (1 << 24);
const SHMMNI: usize = 4096;
const SHM_RDONLY: u64 = 0o10000;
const SHM_RND: u64 = 0o20000;
const SHM_REMAP: u64 = 0o40000;
const SHM_LOCK: u64 = 11;
const SHM_UNLOCK: u64 = 12;

struct State {
    perm: Perm,
    atime: i64,
    dtime: i64,
    ctime: i64,
    lpid: i32,
    attached: u64,
    removed: bool,
}

pub struct Segment {
    id: u64,
    size: u64,
    frames: Vec<u64>,
    state: SpinLock<State>,
}

impl Segment {
    /// Once removed and no longer attached: the id goes, and the frames go back to the allocator.
    /// The table's lock is held from the check to the removal, and `shmat` counts an attachment under it too, so
    /// no attachment can start on frames being freed (another vCPU's `shmat` racing the last `shmdt`).
    fn free_if_unused(&self) {
        {
            let mut segments = SEGMENTS.lock();
            let s = self.state.lock();
            if !(s.removed && s.attached == 0) {
                return;
            }
            drop(s);
            if segments.remove(self.id).is_err() {
                // Freed already.
                return;
            }
        }
        for &frame in &self.frames {
            // SAFETY: the segment's own frame, reached through the direct map; no attachment maps it any more.
            unsafe { core::ptr::write_bytes(direct_map(frame) as *mut u8, 0, PAGE_SIZE as usize) };
        }
        let mut m = mm::memory();
        for &frame in &self.frames {
            m.frames.free_zeroed(frame, PAGE_SIZE);
        }
    }
}

static SEGMENTS: SpinLock<Table<Segment>> = SpinLock::new(Table::new(SHMMNI));
/// Attachments by address: the segment and the length mapped.
static ATTACHED: SpinLock<BTreeMap<u64, (Arc<Segment>, u64)>> = SpinLock::new(BTreeMap::new());

/// `struct shmid64_ds` (112 bytes on x86-64).
#[repr(C)]
#[derive(Clone, Copy)]
struct ShmidDs {
    perm: Perm,
    segsz: u64,
    atime: i64,
    dtime: i64,
    ctime: i64,
    cpid: i32,
    lpid: i32,
    nattch: u64,
    _unused: [u64; 2],
}

pub fn shmget(a: &Args) -> SysResult {
    let (key, size, flags) = (a[0] as i32, a[1], a[2]);
    let fits = |s: &Segment| if size > s.size { Err(Errno::EINVAL) } else { Ok(()) };
    let make = |perm, id: i32| {
        if size == 0 || size > SHMMAX {
            return Err(Errno::EINVAL);
        }
        let pages = page_align_up(size) / PAGE_SIZE;
        if pages > mm::memory().frames.free_bytes() / PAGE_SIZE {
            return Err(Errno::ENOMEM);
        }
        let mut frames = Vec::new();
        frames.try_reserve_exact(pages as usize).map_err(|_| Errno::ENOMEM)?;
        {
            let mut m = mm::memory();
            for _ in 0..pages {
                match m.frames.alloc(PAGE_SIZE) {
                    Some(frame) => frames.push(frame),
                    None => {
                        for &frame in &frames {
                            m.frames.free_zeroed(frame, PAGE_SIZE);
                        }
                        return Err(Errno::ENOMEM);
                    }
                }
            }
        }
        let state = State { perm, atime: 0, dtime: 0, ctime: now(), lpid: 0, attached: 0, removed: false };
        Ok(Segment { id: id as u64, size, frames, state: SpinLock::new(state) })
    };
    SEGMENTS.lock().get_or_create(key, flags, fits, make).map(|id| id as u64)
}

pub fn shmat(a: &Args) -> SysResult {
    let (id, mut addr, flags) = (a[0], a[1], a[2]);
    if addr != 0 {
        if flags & SHM_RND != 0 {
            addr &= !(PAGE_SIZE - 1);
        } else if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
    } else if flags & SHM_REMAP != 0 {
        return Err(Errno::EINVAL);
    }
    // Counted as attached before it is mapped, under the table's lock (see `free_if_unused`); a failed map detaches.
    let segment = {
        let segments = SEGMENTS.lock();
        let segment = segments.get(id)?;
        segment.state.lock().attached += 1;
        segment
    };
    let len = segment.frames.len() as u64 * PAGE_SIZE;
    if addr != 0 && flags & SHM_REMAP != 0 && vma::owns(addr) {
        // Over memory at a chosen address: it goes, as munmap would take it.
        unmapped(addr, len);
        vma::release(addr, len);
    }
    // An address given is where it must go (EINVAL if taken, as Linux).
    let at = match vma::map_borrowed(addr, addr != 0, len, &segment.frames, flags & SHM_RDONLY == 0, None) {
        Ok(at) => at,
        Err(e) => {
            segment.state.lock().attached -= 1;
            segment.free_if_unused();
            return Err(if e == Errno::EEXIST { Errno::EINVAL } else { e });
        }
    };
    {
        let mut s = segment.state.lock();
        s.atime = now();
        s.lpid = PID as i32;
    }
    ATTACHED.lock().insert(at, (segment, len));
    Ok(at)
}

pub fn shmdt(a: &Args) -> SysResult {
    let addr = a[0];
    if !addr.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let (segment, len) = ATTACHED.lock().remove(&addr).ok_or(Errno::EINVAL)?;
    vma::unmap_borrowed(addr, len);
    detached(&segment);
    Ok(0)
}

fn detached(segment: &Segment) {
    {
        let mut s = segment.state.lock();
        s.attached -= 1;
        s.dtime = now();
        s.lpid = PID as i32;
    }
    segment.free_if_unused();
}

/// munmap of `[addr, addr+len)`: attachments that start there are detached.
pub fn unmapped(addr: u64, len: u64) {
    let end = addr.saturating_add(page_align_up(len));
    let gone: Vec<_> = {
        let mut attached = ATTACHED.lock();
        let starts: Vec<u64> = attached.range(addr..end).map(|(&at, _)| at).collect();
        starts.into_iter().filter_map(|at| attached.remove(&at)).collect()
    };
    for (segment, _) in gone {
        detached(&segment);
    }
}

pub fn shmctl(a: &Args) -> SysResult {
    let (id, cmd, buf) = (a[0], command(a[1]), a[2]);
    match cmd {
        IPC_RMID => {
            // As Linux: the key is free at once; the id stays (attachable, as Linux allows) until the last detach.
            let segment = {
                let mut segments = SEGMENTS.lock();
                let segment = segments.get(id)?;
                segments.forget_key(id);
                segment
            };
            let mut s = segment.state.lock();
            s.removed = true;
            s.perm.key = super::IPC_PRIVATE;
            drop(s);
            segment.free_if_unused();
            Ok(0)
        }
        IPC_STAT => {
            let segment = SEGMENTS.lock().get(id)?;
            let s = segment.state.lock();
            let ds = ShmidDs {
                perm: s.perm,
                segsz: segment.size,
                atime: s.atime,
                dtime: s.dtime,
                ctime: s.ctime,
                cpid: PID as i32,
                lpid: s.lpid,
                nattch: s.attached,
                _unused: [0; 2],
            };
            drop(s);
            user::write(buf, ds).map(|()| 0)
        }
        IPC_SET => {
            let segment = SEGMENTS.lock().get(id)?;
            let new: Perm = user::read(buf)?;
            let mut s = segment.state.lock();
            set_perm(&mut s.perm, &new);
            s.ctime = now();
            Ok(0)
        }
        // Guest memory is never swapped out.
        SHM_LOCK | SHM_UNLOCK => SEGMENTS.lock().get(id).map(|_| 0),
        _ => Err(Errno::EINVAL),
    }
}
