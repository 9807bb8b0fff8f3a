//! The process and its identity: one process (pid 1, also the main thread's id), root, on a Linux-compatible
//! "kernel".

use super::{this_process, Args, PID};
use crate::errno::{Errno, SysResult};
use crate::{cpu, hypercall, time, user};
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::BootInfo;

const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
const ARCH_GET_GS: u64 = 0x1004;
const RLIMIT_STACK: u64 = 3;
const RLIMIT_NOFILE: u64 = 7;
const RLIM_INFINITY: u64 = u64::MAX;

static VCPUS: AtomicU64 = AtomicU64::new(1);
static STACK_SIZE: AtomicU64 = AtomicU64::new(0);

pub fn init(boot: &BootInfo) {
    VCPUS.store(u64::from(boot.vcpu_count.max(1)), Ordering::Relaxed);
    STACK_SIZE.store(boot.app_stack_top - boot.app_stack_bottom, Ordering::Relaxed);
    if boot.nofile_hard != 0 {
        crate::file::start_nofile_limit(boot.nofile_soft, boot.nofile_hard);
    }
}

pub fn exit(a: &Args) -> SysResult {
    crate::net::linger();
    hypercall::exit(a[0] & 0xff, 0)
}

pub fn getpid(_: &Args) -> SysResult {
    Ok(PID)
}

pub fn getppid(_: &Args) -> SysResult {
    Ok(super::PPID)
}

pub fn arch_prctl(a: &Args) -> SysResult {
    match a[0] {
        ARCH_SET_FS => {
            if a[1] >= 1 << 47 {
                return Err(Errno::EPERM);
            }
            cpu::write_fs_base(a[1]);
            Ok(0)
        }
        ARCH_GET_FS => user::write(a[1], cpu::read_fs_base()).map(|()| 0),
        ARCH_GET_GS => user::write(a[1], 0u64).map(|()| 0),
        // GS belongs to the library OS (it finds its per-vCPU data there).
        ARCH_SET_GS => Err(Errno::EPERM),
        _ => Err(Errno::EINVAL),
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Utsname {
    fields: [[u8; 65]; 6],
}

pub fn uname(a: &Args) -> SysResult {
    let mut u = Utsname { fields: [[0; 65]; 6] };
    let values: [&[u8]; 6] = [b"Linux", b"kiln", b"6.1.0-kiln", b"#1 SMP Kiln", b"x86_64", b"(none)"];
    for (field, value) in u.fields.iter_mut().zip(values) {
        field[..value.len()].copy_from_slice(value);
    }
    user::write(a[0], u).map(|()| 0)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Rlimit {
    cur: u64,
    max: u64,
}

fn limit(resource: u64) -> Rlimit {
    match resource {
        RLIMIT_STACK => {
            let s = STACK_SIZE.load(Ordering::Relaxed);
            Rlimit { cur: s, max: s }
        }
        RLIMIT_NOFILE => {
            let (soft, hard) = crate::file::nofile_limit();
            Rlimit { cur: soft as u64, max: hard as u64 }
        }
        _ => Rlimit { cur: RLIM_INFINITY, max: RLIM_INFINITY },
    }
}

pub fn getrlimit(a: &Args) -> SysResult {
    if a[0] >= 16 {
        return Err(Errno::EINVAL);
    }
    user::write(a[1], limit(a[0])).map(|()| 0)
}

/// Sets `resource`, as Linux validates it (soft <= hard). RLIMIT_NOFILE is kept and enforced (`file`); other new
/// limits are accepted and not kept: nothing here grows with them.
fn set_limit(resource: u64, new: Rlimit) -> Result<(), Errno> {
    if new.cur > new.max {
        return Err(Errno::EINVAL);
    }
    match resource {
        RLIMIT_NOFILE => crate::file::set_nofile_limit(new.cur, new.max, super::identity::is_root()),
        _ => Ok(()),
    }
}

pub fn prlimit64(a: &Args) -> SysResult {
    let (pid, resource, new, old) = (a[0], a[1], a[2], a[3]);
    this_process(pid)?;
    if resource >= 16 {
        return Err(Errno::EINVAL);
    }
    let previous = limit(resource);
    if new != 0 {
        set_limit(resource, user::read(new)?)?;
    }
    if old != 0 {
        user::write(old, previous)?;
    }
    Ok(0)
}

pub fn sched_getaffinity(a: &Args) -> SysResult {
    let (pid, len, mask) = (a[0], a[1], a[2]);
    this_process(pid)?;
    if len < 8 || len % 8 != 0 {
        return Err(Errno::EINVAL);
    }
    let vcpus = VCPUS.load(Ordering::Relaxed).min(64);
    let bits = if vcpus == 64 { u64::MAX } else { (1u64 << vcpus) - 1 };
    user::write(mask, bits)?;
    Ok(8)
}

/// The program's threads run on every vCPU: a mask that names at least one of them is accepted and changes nothing.
pub fn sched_setaffinity(a: &Args) -> SysResult {
    let (pid, len, mask) = (a[0], a[1], a[2]);
    if pid != 0 && !crate::sched::thread_exists(pid as u32) {
        return Err(Errno::ESRCH);
    }
    if len < 8 {
        return Err(Errno::EINVAL);
    }
    let vcpus = VCPUS.load(Ordering::Relaxed).min(64);
    let bits = if vcpus == 64 { u64::MAX } else { (1u64 << vcpus) - 1 };
    let wanted: u64 = user::read(mask)?;
    if wanted & bits == 0 {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

/// wait4 and waitid: the program never has children (no fork), as Linux answers a process without any.
pub fn wait(_: &Args) -> SysResult {
    Err(Errno::ECHILD)
}

pub fn setrlimit(a: &Args) -> SysResult {
    if a[0] >= 16 {
        return Err(Errno::EINVAL);
    }
    set_limit(a[0], user::read(a[1])?).map(|()| 0)
}

static UMASK: AtomicU64 = AtomicU64::new(0o022);

pub fn umask(a: &Args) -> SysResult {
    Ok(UMASK.swap(a[0] & 0o777, Ordering::Relaxed))
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Sysinfo {
    uptime: i64,
    loads: [u64; 3],
    totalram: u64,
    freeram: u64,
    sharedram: u64,
    bufferram: u64,
    totalswap: u64,
    freeswap: u64,
    procs: u16,
    _pad: [u16; 3],
    totalhigh: u64,
    freehigh: u64,
    mem_unit: u32,
    _pad2: u32,
}

pub fn sysinfo(a: &Args) -> SysResult {
    let info = Sysinfo {
        uptime: (time::since_boot_ns() / 1_000_000_000) as i64,
        totalram: crate::mm::ram_size(),
        freeram: crate::mm::memory().frames.free_bytes(),
        procs: 1,
        mem_unit: 1,
        ..Default::default()
    };
    user::write(a[0], info).map(|()| 0)
}

const RUSAGE_SELF: i64 = 0;
const RUSAGE_CHILDREN: i64 = -1;
const RUSAGE_THREAD: i64 = 1;

/// CPU time is approximated by the time since boot (the program has the vCPUs to itself); the other counters are 0.
pub fn getrusage(a: &Args) -> SysResult {
    let ns = match a[0] as i64 {
        RUSAGE_SELF | RUSAGE_THREAD => time::cputime_ns(),
        RUSAGE_CHILDREN => 0,
        _ => return Err(Errno::EINVAL),
    };
    let mut usage = [0i64; 18];
    usage[0] = (ns / 1_000_000_000) as i64;
    usage[1] = ((ns % 1_000_000_000) / 1000) as i64;
    user::write(a[1], usage).map(|()| 0)
}

/// times: clock ticks (USER_HZ, 100 a second) of CPU time, counted as for getrusage, and since boot.
pub fn times(a: &Args) -> SysResult {
    const NS_PER_TICK: u64 = 10_000_000;
    if a[0] != 0 {
        user::write(a[0], [time::cputime_ns() / NS_PER_TICK, 0, 0, 0])?;
    }
    Ok(time::since_boot_ns() / NS_PER_TICK)
}

pub fn getcpu(a: &Args) -> SysResult {
    if a[0] != 0 {
        user::write(a[0], crate::percpu::id() as u32)?;
    }
    if a[1] != 0 {
        user::write(a[1], 0u32)?;
    }
    Ok(0)
}

const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: u64 = 4;
const PR_SET_NAME: u64 = 15;
const PR_GET_NAME: u64 = 16;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_GET_NO_NEW_PRIVS: u64 = 39;

pub fn prctl(a: &Args) -> SysResult {
    match a[0] {
        PR_SET_NAME => {
            let mut name = [0u8; 16];
            match user::read_c_string(a[1], &mut name) {
                Ok(_) | Err(Errno::ENAMETOOLONG) => {}
                Err(e) => return Err(e),
            }
            name[15] = 0;
            crate::sched::set_name(name);
            Ok(0)
        }
        PR_GET_NAME => user::write(a[1], crate::sched::name()).map(|()| 0),
        // No parent to die, nothing to dump, no privileges to gain: accepted.
        PR_SET_PDEATHSIG | PR_SET_DUMPABLE | PR_SET_NO_NEW_PRIVS => Ok(0),
        PR_GET_DUMPABLE => Ok(1),
        PR_GET_NO_NEW_PRIVS => Ok(0),
        _ => Err(Errno::EINVAL),
    }
}
