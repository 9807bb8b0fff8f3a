//! User and group ids, supplementary groups, the process group and the session.
//!
//! The program starts as root (uid and gid 0) and may change its ids with Linux's rules: root may take any id;
//! anyone else may only switch among its real, effective and saved ids. The ids are recorded and reported, not
//! enforced: there is one user in the VM, and files are not permission-checked. The process is its own process group
//! and session (pid 1), as a container's first process is.

use super::{this_process, Args, PID};
use crate::errno::{Errno, SysResult};
use crate::sync::SpinLock;
use crate::user;

/// Supplementary groups kept; Linux allows 65,536, programs that drop privileges set zero or a few.
const MAX_GROUPS: usize = 64;
/// `-1` as a 32-bit id argument: leave this id unchanged.
const UNCHANGED: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Ids {
    real: u32,
    effective: u32,
    saved: u32,
}

struct Credentials {
    uid: Ids,
    gid: Ids,
    groups: [u32; MAX_GROUPS],
    group_count: usize,
}

static CREDENTIALS: SpinLock<Credentials> = SpinLock::new(Credentials {
    uid: Ids { real: 0, effective: 0, saved: 0 },
    gid: Ids { real: 0, effective: 0, saved: 0 },
    groups: [0; MAX_GROUPS],
    group_count: 0,
});

fn privileged(c: &Credentials) -> bool {
    c.uid.effective == 0
}

/// Whether the program runs as root (effective uid 0), which stands for every capability.
pub fn is_root() -> bool {
    privileged(&CREDENTIALS.lock())
}

fn id_arg(arg: u64) -> u32 {
    arg as u32
}

/// setresuid/setresgid: each id that changes must be one the caller already has, unless it is root.
fn set_ids(ids: &mut Ids, privileged: bool, real: u32, effective: u32, saved: u32) -> Result<(), Errno> {
    let held = |id: u32| id == UNCHANGED || [ids.real, ids.effective, ids.saved].contains(&id);
    let allowed = privileged || [real, effective, saved].into_iter().all(held);
    if !allowed {
        return Err(Errno::EPERM);
    }
    let keep = |new: u32, old: u32| if new == UNCHANGED { old } else { new };
    *ids = Ids { real: keep(real, ids.real), effective: keep(effective, ids.effective), saved: keep(saved, ids.saved) };
    Ok(())
}

/// setuid/setgid: root sets all three ids; anyone else only the effective one, to its real or saved id.
fn set_one(ids: &mut Ids, privileged: bool, id: u32) -> Result<(), Errno> {
    match id {
        UNCHANGED => Err(Errno::EINVAL),
        _ if privileged => {
            *ids = Ids { real: id, effective: id, saved: id };
            Ok(())
        }
        _ if id == ids.real || id == ids.saved => {
            ids.effective = id;
            Ok(())
        }
        _ => Err(Errno::EPERM),
    }
}

/// setreuid/setregid: as setresuid, and the saved id follows the effective one when the real id is set or the
/// effective id changes to something other than the real id.
fn set_real_effective(ids: &mut Ids, privileged: bool, real: u32, effective: u32) -> Result<(), Errno> {
    if !privileged && real != UNCHANGED && real != ids.real && real != ids.effective {
        return Err(Errno::EPERM);
    }
    let before = *ids;
    set_ids(ids, privileged, real, effective, UNCHANGED)?;
    if real != UNCHANGED || (effective != UNCHANGED && effective != before.real) {
        ids.saved = ids.effective;
    }
    Ok(())
}

/// The effective user and group ids (what SO_PEERCRED and SCM_CREDENTIALS report).
pub fn uid() -> u32 {
    CREDENTIALS.lock().uid.effective
}

pub fn gid() -> u32 {
    CREDENTIALS.lock().gid.effective
}

pub fn getuid(_: &Args) -> SysResult {
    Ok(u64::from(CREDENTIALS.lock().uid.real))
}

pub fn geteuid(_: &Args) -> SysResult {
    Ok(u64::from(CREDENTIALS.lock().uid.effective))
}

pub fn getgid(_: &Args) -> SysResult {
    Ok(u64::from(CREDENTIALS.lock().gid.real))
}

pub fn getegid(_: &Args) -> SysResult {
    Ok(u64::from(CREDENTIALS.lock().gid.effective))
}

fn write_ids(ids: Ids, a: &Args) -> SysResult {
    for (addr, id) in a[..3].iter().zip([ids.real, ids.effective, ids.saved]) {
        user::write::<u32>(*addr, id)?;
    }
    Ok(0)
}

pub fn getresuid(a: &Args) -> SysResult {
    let ids = CREDENTIALS.lock().uid;
    write_ids(ids, a)
}

pub fn getresgid(a: &Args) -> SysResult {
    let ids = CREDENTIALS.lock().gid;
    write_ids(ids, a)
}

pub fn setuid(a: &Args) -> SysResult {
    let mut c = CREDENTIALS.lock();
    let p = privileged(&c);
    set_one(&mut c.uid, p, id_arg(a[0])).map(|()| 0)
}

pub fn setgid(a: &Args) -> SysResult {
    let mut c = CREDENTIALS.lock();
    let p = privileged(&c);
    set_one(&mut c.gid, p, id_arg(a[0])).map(|()| 0)
}

pub fn setreuid(a: &Args) -> SysResult {
    let mut c = CREDENTIALS.lock();
    let p = privileged(&c);
    set_real_effective(&mut c.uid, p, id_arg(a[0]), id_arg(a[1])).map(|()| 0)
}

pub fn setregid(a: &Args) -> SysResult {
    let mut c = CREDENTIALS.lock();
    let p = privileged(&c);
    set_real_effective(&mut c.gid, p, id_arg(a[0]), id_arg(a[1])).map(|()| 0)
}

pub fn setresuid(a: &Args) -> SysResult {
    let mut c = CREDENTIALS.lock();
    let p = privileged(&c);
    set_ids(&mut c.uid, p, id_arg(a[0]), id_arg(a[1]), id_arg(a[2])).map(|()| 0)
}

pub fn setresgid(a: &Args) -> SysResult {
    let mut c = CREDENTIALS.lock();
    let p = privileged(&c);
    set_ids(&mut c.gid, p, id_arg(a[0]), id_arg(a[1]), id_arg(a[2])).map(|()| 0)
}

pub fn getgroups(a: &Args) -> SysResult {
    let (size, list) = (a[0] as i32, a[1]);
    let (groups, count) = {
        let c = CREDENTIALS.lock();
        (c.groups, c.group_count)
    };
    match size {
        0 => Ok(count as u64),
        s if s < 0 || (s as usize) < count => Err(Errno::EINVAL),
        _ => {
            let bytes: alloc::vec::Vec<u8> = groups[..count].iter().flat_map(|g| g.to_ne_bytes()).collect();
            user::write_bytes(list, &bytes).map(|()| count as u64)
        }
    }
}

pub fn setgroups(a: &Args) -> SysResult {
    let count = usize::try_from(a[0]).ok().filter(|&n| n <= MAX_GROUPS).ok_or(Errno::EINVAL)?;
    let mut bytes = [0u8; 4 * MAX_GROUPS];
    user::read_bytes(a[1], &mut bytes[..4 * count])?;
    let mut groups = [0u32; MAX_GROUPS];
    for (g, b) in groups.iter_mut().zip(bytes.chunks_exact(4)) {
        *g = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    }
    let mut c = CREDENTIALS.lock();
    if !privileged(&c) {
        return Err(Errno::EPERM);
    }
    c.groups = groups;
    c.group_count = count;
    Ok(0)
}

/// getpgid and getsid: only this process (0 or its pid) exists.
pub fn getpgid(a: &Args) -> SysResult {
    this_process(a[0]).map(|()| PID)
}

pub fn getpgrp(_: &Args) -> SysResult {
    Ok(PID)
}

/// setpgid: the process already leads its own group; moving it anywhere else is not possible.
pub fn setpgid(a: &Args) -> SysResult {
    this_process(a[0])?;
    match a[1] {
        0 | PID => Ok(0),
        _ => Err(Errno::EPERM),
    }
}

/// setsid: EPERM, as for any process group leader.
pub fn setsid(_: &Args) -> SysResult {
    Err(Errno::EPERM)
}
