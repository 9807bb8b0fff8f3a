//! The Linux syscall layer: one table indexed by the syscall number, one file per family. A number without a handler
//! returns -ENOSYS and is counted; the VMM reads the counts (`KILN_SYSCALL_STATS`) when the program has ended.

pub mod attrs;
mod fs;
mod identity;
pub mod lock;
mod mm;
pub mod net;
mod path;
mod priority;
mod process;
mod random;
pub mod sendfile;
pub mod signal;
mod statfs;
mod thread;
mod time;
pub mod timer;

use crate::entry::SyscallFrame;
use crate::errno::{Errno, SysResult};
use crate::hypercall;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kiln_abi::hypercall::{Hypercall, SyscallStats, TraceRecord, SYSCALL_SLOTS};
use kiln_abi::BootInfo;

pub type Args = [u64; 6];
/// The process id: the program is the only process, and its main thread's id is the same.
pub const PID: u64 = 1;

/// A pid argument that names this process (0 means the caller); ESRCH for any other.
pub fn this_process(pid: u64) -> Result<(), Errno> {
    if pid == 0 || pid == PID {
        Ok(())
    } else {
        Err(Errno::ESRCH)
    }
}
const SYS_RT_SIGRETURN: u64 = 15;
const SYS_EXIT: u64 = 60;
const SYS_EXIT_GROUP: u64 = 231;
type Handler = fn(&Args) -> SysResult;

const fn table() -> [Option<Handler>; SYSCALL_SLOTS] {
    let mut t: [Option<Handler>; SYSCALL_SLOTS] = [None; SYSCALL_SLOTS];
    t[0] = Some(fs::read);
    t[1] = Some(fs::write);
    t[2] = Some(fs::open);
    t[3] = Some(fs::close);
    t[4] = Some(path::stat);
    t[5] = Some(fs::fstat);
    t[6] = Some(path::stat);
    t[7] = Some(fs::poll);
    t[8] = Some(fs::lseek);
    t[9] = Some(mm::mmap);
    t[10] = Some(mm::mprotect);
    t[11] = Some(mm::munmap);
    t[12] = Some(mm::brk);
    t[13] = Some(signal::rt_sigaction);
    t[14] = Some(signal::rt_sigprocmask);
    t[SYS_RT_SIGRETURN as usize] = Some(signal::rt_sigreturn_marker);
    t[16] = Some(fs::ioctl);
    t[17] = Some(fs::pread64);
    t[18] = Some(fs::pwrite64);
    t[19] = Some(fs::readv);
    t[20] = Some(fs::writev);
    t[21] = Some(path::access);
    t[22] = Some(fs::pipe);
    t[23] = Some(fs::select);
    t[24] = Some(thread::sched_yield);
    t[25] = Some(mm::mremap);
    t[34] = Some(signal::pause);
    t[35] = Some(time::nanosleep);
    t[26] = Some(mm::msync);
    t[27] = Some(mm::mincore);
    t[28] = Some(mm::madvise);
    t[32] = Some(fs::dup);
    t[33] = Some(fs::dup2);
    t[36] = Some(timer::getitimer);
    t[37] = Some(timer::alarm);
    t[38] = Some(timer::setitimer);
    t[39] = Some(process::getpid);
    t[40] = Some(sendfile::sendfile);
    t[61] = Some(process::wait);
    t[73] = Some(lock::flock);
    t[92] = Some(attrs::chown);
    t[93] = Some(attrs::fchown);
    t[94] = Some(attrs::chown);
    t[132] = Some(attrs::utime);
    t[203] = Some(process::sched_setaffinity);
    t[235] = Some(attrs::utimes);
    t[247] = Some(process::wait);
    t[260] = Some(attrs::fchownat);
    t[261] = Some(attrs::futimesat);
    t[280] = Some(attrs::utimensat);
    t[41] = Some(net::socket_syscall);
    t[42] = Some(net::connect);
    t[43] = Some(net::accept);
    t[44] = Some(net::sendto);
    t[45] = Some(net::recvfrom);
    t[46] = Some(net::sendmsg);
    t[47] = Some(net::recvmsg);
    t[48] = Some(net::shutdown);
    t[49] = Some(net::bind);
    t[50] = Some(net::listen);
    t[51] = Some(net::getsockname);
    t[52] = Some(net::getpeername);
    t[53] = Some(net::socketpair);
    t[54] = Some(net::setsockopt);
    t[55] = Some(net::getsockopt);
    t[56] = Some(thread::clone);
    t[SYS_EXIT as usize] = Some(thread::exit);
    t[62] = Some(signal::kill);
    t[63] = Some(process::uname);
    t[72] = Some(fs::fcntl);
    t[74] = Some(fs::fsync);
    t[75] = Some(fs::fsync);
    t[76] = Some(path::truncate);
    t[77] = Some(fs::ftruncate);
    t[79] = Some(path::getcwd);
    t[80] = Some(path::chdir);
    t[81] = Some(path::fchdir);
    t[82] = Some(path::rename);
    t[83] = Some(path::mkdir);
    t[84] = Some(path::rmdir);
    t[85] = Some(fs::creat);
    t[87] = Some(path::unlink);
    t[95] = Some(process::umask);
    t[89] = Some(fs::readlink);
    t[90] = Some(path::chmod);
    t[91] = Some(path::fchmod);
    t[96] = Some(time::gettimeofday);
    t[97] = Some(process::getrlimit);
    t[98] = Some(process::getrusage);
    t[100] = Some(process::times);
    t[99] = Some(process::sysinfo);
    t[102] = Some(identity::getuid);
    t[104] = Some(identity::getgid);
    t[105] = Some(identity::setuid);
    t[106] = Some(identity::setgid);
    t[107] = Some(identity::geteuid);
    t[108] = Some(identity::getegid);
    t[109] = Some(identity::setpgid);
    t[110] = Some(process::getppid);
    t[111] = Some(identity::getpgrp);
    t[112] = Some(identity::setsid);
    t[113] = Some(identity::setreuid);
    t[114] = Some(identity::setregid);
    t[115] = Some(identity::getgroups);
    t[116] = Some(identity::setgroups);
    t[117] = Some(identity::setresuid);
    t[118] = Some(identity::getresuid);
    t[119] = Some(identity::setresgid);
    t[120] = Some(identity::getresgid);
    t[121] = Some(identity::getpgid);
    t[124] = Some(identity::getpgid);
    t[128] = Some(signal::rt_sigtimedwait);
    t[130] = Some(signal::rt_sigsuspend);
    t[127] = Some(signal::rt_sigpending);
    t[131] = Some(signal::sigaltstack);
    t[137] = Some(statfs::statfs);
    t[138] = Some(statfs::fstatfs);
    t[140] = Some(priority::getpriority);
    t[141] = Some(priority::setpriority);
    t[142] = Some(priority::sched_setparam);
    t[143] = Some(priority::sched_getparam);
    t[144] = Some(priority::sched_setscheduler);
    t[145] = Some(priority::sched_getscheduler);
    t[146] = Some(priority::sched_get_priority_max);
    t[147] = Some(priority::sched_get_priority_min);
    t[149] = Some(mm::mlock);
    t[150] = Some(mm::mlock);
    t[151] = Some(mm::mlockall);
    t[152] = Some(mm::munlockall);
    t[157] = Some(process::prctl);
    t[162] = Some(fs::sync);
    t[158] = Some(process::arch_prctl);
    t[160] = Some(process::setrlimit);
    t[186] = Some(thread::gettid);
    t[200] = Some(signal::tkill);
    t[201] = Some(time::time);
    t[204] = Some(process::sched_getaffinity);
    t[202] = Some(thread::futex);
    t[213] = Some(fs::epoll_create);
    t[217] = Some(fs::getdents64);
    t[218] = Some(thread::set_tid_address);
    t[221] = Some(fs::fadvise64);
    t[228] = Some(time::clock_gettime);
    t[229] = Some(time::clock_getres);
    t[230] = Some(time::clock_nanosleep);
    t[441] = Some(fs::epoll_pwait2);
    t[288] = Some(net::accept4);
    t[299] = Some(net::recvmmsg);
    t[307] = Some(net::sendmmsg);
    t[222] = Some(timer::timer_create);
    t[223] = Some(timer::timer_settime);
    t[224] = Some(timer::timer_gettime);
    t[225] = Some(timer::timer_getoverrun);
    t[226] = Some(timer::timer_delete);
    t[SYS_EXIT_GROUP as usize] = Some(process::exit);
    t[232] = Some(fs::epoll_wait);
    t[233] = Some(fs::epoll_ctl);
    t[234] = Some(signal::tgkill);
    t[257] = Some(fs::openat);
    t[258] = Some(path::mkdirat);
    t[262] = Some(path::newfstatat);
    t[263] = Some(path::unlinkat);
    t[264] = Some(path::renameat);
    t[267] = Some(fs::readlinkat);
    t[268] = Some(path::fchmodat);
    t[269] = Some(path::faccessat);
    t[270] = Some(fs::pselect6);
    t[271] = Some(fs::ppoll);
    t[273] = Some(process::set_robust_list);
    t[281] = Some(fs::epoll_pwait);
    t[284] = Some(fs::eventfd);
    t[290] = Some(fs::eventfd2);
    t[291] = Some(fs::epoll_create1);
    t[292] = Some(fs::dup3);
    t[293] = Some(fs::pipe2);
    t[295] = Some(fs::preadv);
    t[296] = Some(fs::pwritev);
    t[302] = Some(process::prlimit64);
    t[306] = Some(fs::fsync);
    t[309] = Some(process::getcpu);
    t[316] = Some(path::renameat2);
    t[327] = Some(fs::preadv2);
    t[328] = Some(fs::pwritev2);
    t[332] = Some(path::statx);
    t[439] = Some(path::faccessat);
    t[318] = Some(random::getrandom);
    t
}

/// Exported so that the host can read which numbers have a handler (docs/syscalls.md is generated from it).
#[no_mangle]
static KILN_SYSCALL_TABLE: [Option<Handler>; SYSCALL_SLOTS] = table();

/// The VMM finds the counters by this symbol and reads them however the program ends (exit, signal or crash). The
/// layout is `kiln_abi::hypercall::SyscallStats`: calls per number, then -ENOSYS answers per number.
#[no_mangle]
static KILN_SYSCALL_STATS: [AtomicU32; 2 * SYSCALL_SLOTS] = [const { AtomicU32::new(0) }; 2 * SYSCALL_SLOTS];
static TRACING: AtomicBool = AtomicBool::new(false);

pub fn init(boot: &BootInfo) {
    TRACING.store(boot.traces_syscalls(), Ordering::Relaxed);
    random::init(boot);
    signal::init(boot);
    fs::init(boot);
    process::init(boot);
}

/// Called by `kiln_syscall_entry` with the program's registers; the return value goes to the program's %rax.
pub extern "C" fn dispatch(frame: &mut SyscallFrame) -> i64 {
    let nr = frame.nr;
    crate::percpu::set_syscall_frame(frame);
    if nr == SYS_RT_SIGRETURN {
        KILN_SYSCALL_STATS[nr as usize].fetch_add(1, Ordering::Relaxed);
        return signal::rt_sigreturn(frame);
    }
    let handler = if nr < SYSCALL_SLOTS as u64 { KILN_SYSCALL_TABLE[nr as usize] } else { None };
    let slot = SyscallStats::slot(nr);
    KILN_SYSCALL_STATS[slot].fetch_add(1, Ordering::Relaxed);
    if handler.is_none() {
        KILN_SYSCALL_STATS[SYSCALL_SLOTS + slot].fetch_add(1, Ordering::Relaxed);
    }
    let tracing = TRACING.load(Ordering::Relaxed);
    if tracing && (nr == SYS_EXIT || nr == SYS_EXIT_GROUP) {
        // These do not return: trace them on the way in.
        trace(nr, &frame.args, 0);
    }
    let ret = match handler {
        Some(h) => match h(&frame.args) {
            Ok(v) => v as i64,
            Err(Errno(e)) => -e,
        },
        None => -Errno::ENOSYS.0,
    };
    if tracing {
        trace(nr, &frame.args, ret);
    }
    // A signal for this thread runs its handler now, on the way out.
    signal::poll_host_signals();
    crate::timers::fire_due();
    crate::net::poll_if_due();
    crate::net::pay_late_kick();
    match crate::sched::take_signal() {
        Some(sig) => signal::deliver(frame, sig, ret),
        None => ret,
    }
}

fn trace(nr: u64, args: &Args, ret: i64) {
    let record = TraceRecord { nr, args: *args, ret };
    let phys = crate::mm::virt_to_phys(&record as *const TraceRecord as u64).unwrap_or(0);
    hypercall::call(Hypercall::Trace, &[phys]);
}
