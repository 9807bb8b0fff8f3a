//! The Linux syscall layer: one table indexed by the syscall number, one file per family. A number without a handler
//! returns -ENOSYS; it and every other -ENOSYS answer (a handler's refusal of what it does not do, such as a clone
//! that would make a process) are counted, and the VMM reads the counts (`KILN_SYSCALL_STATS`) when the program has
//! ended.

mod args;
pub mod attrs;
mod fs;
mod futex_pi;
mod identity;
mod ifreq;
pub mod lock;
mod mm;
pub mod net;
mod netlink;
mod path;
pub mod priority;
mod process;
pub mod random;
mod read_buffer;
pub mod sendfile;
pub mod signal;
mod statfs;
mod sysv;
mod thread;
mod time;
pub mod timer;
mod unix;

use crate::entry::SyscallFrame;
use crate::errno::{Errno, SysResult};
use crate::hypercall;
use args::Arg;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kiln_abi::hypercall::{Hypercall, SyscallStats, TraceRecord, SYSCALL_SLOTS};
use kiln_abi::BootInfo;

/// A syscall's arguments as the handler sees them: narrowed to their C types by `args::decode`.
pub type Args = [u64; 6];
/// The process id: the program is the only process, and its main thread's id is the same.
pub const PID: u64 = 1;
/// The parent's id: none the program can see, as for a process the kernel started.
pub const PPID: u64 = 0;

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

/// Every handler and the C types of its arguments (Linux's prototype), by syscall number. `handlers` comes first so
/// that the table's symbol is also the address of an array of `Option<fn>`, which the docs generator reads.
#[repr(C)]
pub struct SyscallTable {
    handlers: [Option<Handler>; SYSCALL_SLOTS],
    signatures: [&'static [Arg]; SYSCALL_SLOTS],
}

impl SyscallTable {
    /// Registers `handler` for `nr`; a number registered twice or more than six arguments stop the build.
    const fn set(&mut self, nr: u64, handler: Handler, signature: &'static [Arg]) {
        assert!(self.handlers[nr as usize].is_none(), "a syscall number has two handlers");
        assert!(signature.len() <= 6, "a syscall has at most six arguments");
        self.handlers[nr as usize] = Some(handler);
        self.signatures[nr as usize] = signature;
    }

    fn get(&self, nr: u64) -> Option<(Handler, &'static [Arg])> {
        let nr = usize::try_from(nr).ok().filter(|&nr| nr < SYSCALL_SLOTS)?;
        Some((self.handlers[nr]?, self.signatures[nr]))
    }
}

const fn table() -> SyscallTable {
    use Arg::{Int, Long, Mode, Ptr, UInt};
    let mut t = SyscallTable { handlers: [None; SYSCALL_SLOTS], signatures: [&[]; SYSCALL_SLOTS] };
    t.set(0, fs::read, &[UInt, Ptr, Long]);
    t.set(1, fs::write, &[UInt, Ptr, Long]);
    t.set(2, fs::open, &[Ptr, Int, Mode]);
    t.set(3, fs::close, &[UInt]);
    t.set(4, path::stat, &[Ptr, Ptr]);
    t.set(5, fs::fstat, &[UInt, Ptr]);
    t.set(6, path::lstat, &[Ptr, Ptr]);
    t.set(7, fs::poll, &[Ptr, UInt, Int]);
    t.set(8, fs::lseek, &[UInt, Long, UInt]);
    t.set(9, mm::mmap, &[Long, Long, Long, Long, UInt, Long]);
    t.set(10, mm::mprotect, &[Long, Long, Long]);
    t.set(11, mm::munmap, &[Long, Long]);
    t.set(12, mm::brk, &[Long]);
    t.set(13, signal::rt_sigaction, &[Int, Ptr, Ptr, Long]);
    t.set(14, signal::rt_sigprocmask, &[Int, Ptr, Ptr, Long]);
    t.set(SYS_RT_SIGRETURN, signal::rt_sigreturn_marker, &[]);
    t.set(16, fs::ioctl, &[UInt, UInt, Long]);
    t.set(17, fs::pread64, &[UInt, Ptr, Long, Long]);
    t.set(18, fs::pwrite64, &[UInt, Ptr, Long, Long]);
    t.set(19, fs::readv, &[UInt, Ptr, Long]);
    t.set(20, fs::writev, &[UInt, Ptr, Long]);
    t.set(21, path::access, &[Ptr, Int]);
    t.set(22, fs::pipe, &[Ptr]);
    t.set(23, fs::select, &[Int, Ptr, Ptr, Ptr, Ptr]);
    t.set(24, thread::sched_yield, &[]);
    t.set(25, mm::mremap, &[Long, Long, Long, Long, Long]);
    t.set(34, signal::pause, &[]);
    t.set(35, time::nanosleep, &[Ptr, Ptr]);
    t.set(26, mm::msync, &[Long, Long, Int]);
    t.set(27, mm::mincore, &[Long, Long, Ptr]);
    t.set(28, mm::madvise, &[Long, Long, Int]);
    t.set(32, fs::dup, &[UInt]);
    t.set(33, fs::dup2, &[UInt, UInt]);
    t.set(36, timer::getitimer, &[Int, Ptr]);
    t.set(37, timer::alarm, &[UInt]);
    t.set(38, timer::setitimer, &[Int, Ptr, Ptr]);
    t.set(39, process::getpid, &[]);
    t.set(40, sendfile::sendfile, &[Int, Int, Ptr, Long]);
    t.set(61, process::wait, &[Int, Ptr, Int, Ptr]);
    t.set(73, lock::flock, &[UInt, UInt]);
    t.set(92, attrs::chown, &[Ptr, UInt, UInt]);
    t.set(93, attrs::fchown, &[UInt, UInt, UInt]);
    t.set(94, attrs::lchown, &[Ptr, UInt, UInt]);
    t.set(132, attrs::utime, &[Ptr, Ptr]);
    t.set(203, process::sched_setaffinity, &[Int, UInt, Ptr]);
    t.set(235, attrs::utimes, &[Ptr, Ptr]);
    t.set(247, process::wait, &[Int, Int, Ptr, Int, Ptr]);
    t.set(260, attrs::fchownat, &[Int, Ptr, UInt, UInt, Int]);
    t.set(261, attrs::futimesat, &[Int, Ptr, Ptr]);
    t.set(280, attrs::utimensat, &[Int, Ptr, Ptr, Int]);
    t.set(41, net::socket_syscall, &[Int, Int, Int]);
    t.set(42, net::connect, &[Int, Ptr, Int]);
    t.set(43, net::accept, &[Int, Ptr, Ptr]);
    t.set(44, net::sendto, &[Int, Ptr, Long, UInt, Ptr, Int]);
    t.set(45, net::recvfrom, &[Int, Ptr, Long, UInt, Ptr, Ptr]);
    t.set(46, net::sendmsg, &[Int, Ptr, UInt]);
    t.set(47, net::recvmsg, &[Int, Ptr, UInt]);
    t.set(48, net::shutdown, &[Int, Int]);
    t.set(49, net::bind, &[Int, Ptr, Int]);
    t.set(50, net::listen, &[Int, Int]);
    t.set(51, net::getsockname, &[Int, Ptr, Ptr]);
    t.set(52, net::getpeername, &[Int, Ptr, Ptr]);
    t.set(53, net::socketpair, &[Int, Int, Int, Ptr]);
    t.set(54, net::setsockopt, &[Int, Int, Int, Ptr, Int]);
    t.set(55, net::getsockopt, &[Int, Int, Int, Ptr, Ptr]);
    t.set(56, thread::clone, &[Long, Long, Ptr, Ptr, Long]);
    t.set(SYS_EXIT, thread::exit, &[Int]);
    t.set(62, signal::kill, &[Int, Int]);
    t.set(63, process::uname, &[Ptr]);
    t.set(72, fs::fcntl, &[UInt, UInt, Long]);
    t.set(74, fs::fsync, &[UInt]);
    t.set(75, fs::fsync, &[UInt]);
    t.set(76, path::truncate, &[Ptr, Long]);
    t.set(77, fs::ftruncate, &[UInt, Long]);
    t.set(79, path::getcwd, &[Ptr, Long]);
    t.set(80, path::chdir, &[Ptr]);
    t.set(81, path::fchdir, &[UInt]);
    t.set(82, path::rename, &[Ptr, Ptr]);
    t.set(83, path::mkdir, &[Ptr, Mode]);
    t.set(84, path::rmdir, &[Ptr]);
    t.set(85, fs::creat, &[Ptr, Mode]);
    t.set(86, path::link, &[Ptr, Ptr]);
    t.set(87, path::unlink, &[Ptr]);
    t.set(133, path::mknod, &[Ptr, Mode, UInt]);
    t.set(88, path::symlink, &[Ptr, Ptr]);
    t.set(95, process::umask, &[Int]);
    t.set(89, fs::readlink, &[Ptr, Ptr, Int]);
    t.set(90, path::chmod, &[Ptr, Mode]);
    t.set(91, path::fchmod, &[UInt, Mode]);
    t.set(96, time::gettimeofday, &[Ptr, Ptr]);
    t.set(97, process::getrlimit, &[UInt, Ptr]);
    t.set(98, process::getrusage, &[Int, Ptr]);
    t.set(100, process::times, &[Ptr]);
    t.set(99, process::sysinfo, &[Ptr]);
    t.set(102, identity::getuid, &[]);
    t.set(104, identity::getgid, &[]);
    t.set(105, identity::setuid, &[UInt]);
    t.set(106, identity::setgid, &[UInt]);
    t.set(107, identity::geteuid, &[]);
    t.set(108, identity::getegid, &[]);
    t.set(109, identity::setpgid, &[Int, Int]);
    t.set(110, process::getppid, &[]);
    t.set(111, identity::getpgrp, &[]);
    t.set(112, identity::setsid, &[]);
    t.set(113, identity::setreuid, &[UInt, UInt]);
    t.set(114, identity::setregid, &[UInt, UInt]);
    t.set(115, identity::getgroups, &[Int, Ptr]);
    t.set(116, identity::setgroups, &[Int, Ptr]);
    t.set(117, identity::setresuid, &[UInt, UInt, UInt]);
    t.set(118, identity::getresuid, &[Ptr, Ptr, Ptr]);
    t.set(119, identity::setresgid, &[UInt, UInt, UInt]);
    t.set(120, identity::getresgid, &[Ptr, Ptr, Ptr]);
    t.set(121, identity::getpgid, &[Int]);
    t.set(124, identity::getpgid, &[Int]);
    t.set(128, signal::rt_sigtimedwait, &[Ptr, Ptr, Ptr, Long]);
    t.set(130, signal::rt_sigsuspend, &[Ptr, Long]);
    t.set(127, signal::rt_sigpending, &[Ptr, Long]);
    t.set(131, signal::sigaltstack, &[Ptr, Ptr]);
    t.set(137, statfs::statfs, &[Ptr, Ptr]);
    t.set(138, statfs::fstatfs, &[UInt, Ptr]);
    t.set(140, priority::getpriority, &[Int, Int]);
    t.set(141, priority::setpriority, &[Int, Int, Int]);
    t.set(142, priority::sched_setparam, &[Int, Ptr]);
    t.set(143, priority::sched_getparam, &[Int, Ptr]);
    t.set(144, priority::sched_setscheduler, &[Int, Int, Ptr]);
    t.set(145, priority::sched_getscheduler, &[Int]);
    t.set(146, priority::sched_get_priority_max, &[Int]);
    t.set(147, priority::sched_get_priority_min, &[Int]);
    t.set(149, mm::mlock, &[Long, Long]);
    t.set(150, mm::mlock, &[Long, Long]);
    t.set(151, mm::mlockall, &[Int]);
    t.set(152, mm::munlockall, &[]);
    t.set(157, process::prctl, &[Int, Long, Long, Long, Long]);
    t.set(162, fs::sync, &[]);
    t.set(158, process::arch_prctl, &[Int, Long]);
    t.set(160, process::setrlimit, &[UInt, Ptr]);
    t.set(186, thread::gettid, &[]);
    t.set(200, signal::tkill, &[Int, Int]);
    t.set(201, time::time, &[Ptr]);
    t.set(204, process::sched_getaffinity, &[Int, UInt, Ptr]);
    t.set(202, thread::futex, &[Ptr, Int, UInt, Ptr, Ptr, UInt]);
    t.set(213, fs::epoll_create, &[Int]);
    t.set(217, fs::getdents64, &[UInt, Ptr, UInt]);
    t.set(218, thread::set_tid_address, &[Ptr]);
    t.set(221, fs::fadvise64, &[Int, Long, Long, Int]);
    t.set(228, time::clock_gettime, &[Int, Ptr]);
    t.set(229, time::clock_getres, &[Int, Ptr]);
    t.set(230, time::clock_nanosleep, &[Int, Int, Ptr, Ptr]);
    t.set(441, fs::epoll_pwait2, &[Int, Ptr, Int, Ptr, Ptr, Long]);
    t.set(288, net::accept4, &[Int, Ptr, Ptr, Int]);
    t.set(299, net::recvmmsg, &[Int, Ptr, UInt, UInt, Ptr]);
    t.set(307, net::sendmmsg, &[Int, Ptr, UInt, UInt]);
    t.set(222, timer::timer_create, &[Int, Ptr, Ptr]);
    t.set(223, timer::timer_settime, &[Int, Int, Ptr, Ptr]);
    t.set(224, timer::timer_gettime, &[Int, Ptr]);
    t.set(225, timer::timer_getoverrun, &[Int]);
    t.set(226, timer::timer_delete, &[Int]);
    t.set(SYS_EXIT_GROUP, process::exit, &[Int]);
    t.set(232, fs::epoll_wait, &[Int, Ptr, Int, Int]);
    t.set(233, fs::epoll_ctl, &[Int, Int, Int, Ptr]);
    t.set(234, signal::tgkill, &[Int, Int, Int]);
    t.set(257, fs::openat, &[Int, Ptr, Int, Mode]);
    t.set(258, path::mkdirat, &[Int, Ptr, Mode]);
    t.set(262, path::newfstatat, &[Int, Ptr, Ptr, Int]);
    t.set(263, path::unlinkat, &[Int, Ptr, Int]);
    t.set(265, path::linkat, &[Int, Ptr, Int, Ptr, Int]);
    t.set(264, path::renameat, &[Int, Ptr, Int, Ptr]);
    t.set(259, path::mknodat, &[Int, Ptr, Mode, UInt]);
    t.set(266, path::symlinkat, &[Ptr, Int, Ptr]);
    t.set(267, fs::readlinkat, &[Int, Ptr, Ptr, Int]);
    t.set(268, path::fchmodat, &[Int, Ptr, Mode]);
    t.set(269, path::faccessat, &[Int, Ptr, Int]);
    t.set(270, fs::pselect6, &[Int, Ptr, Ptr, Ptr, Ptr, Ptr]);
    t.set(271, fs::ppoll, &[Ptr, UInt, Ptr, Ptr, Long]);
    t.set(29, sysv::shm::shmget, &[Int, Long, Int]);
    t.set(30, sysv::shm::shmat, &[Int, Ptr, Int]);
    t.set(31, sysv::shm::shmctl, &[Int, Int, Ptr]);
    t.set(64, sysv::sem::semget, &[Int, Int, Int]);
    t.set(65, sysv::sem::semop, &[Int, Ptr, UInt]);
    t.set(66, sysv::sem::semctl, &[Int, Int, Int, Long]);
    t.set(67, sysv::shm::shmdt, &[Ptr]);
    t.set(68, sysv::msg::msgget, &[Int, Int]);
    t.set(69, sysv::msg::msgsnd, &[Int, Ptr, Long, Int]);
    t.set(70, sysv::msg::msgrcv, &[Int, Ptr, Long, Long, Int]);
    t.set(71, sysv::msg::msgctl, &[Int, Int, Ptr]);
    t.set(220, sysv::sem::semtimedop, &[Int, Ptr, UInt, Ptr]);
    t.set(273, futex_pi::set_robust_list, &[Ptr, Long]);
    t.set(274, futex_pi::get_robust_list, &[Int, Ptr, Ptr]);
    t.set(281, fs::epoll_pwait, &[Int, Ptr, Int, Int, Ptr, Long]);
    t.set(284, fs::eventfd, &[UInt]);
    t.set(290, fs::eventfd2, &[UInt, Int]);
    t.set(291, fs::epoll_create1, &[Int]);
    t.set(292, fs::dup3, &[UInt, UInt, Int]);
    t.set(293, fs::pipe2, &[Ptr, Int]);
    t.set(295, fs::preadv, &[UInt, Ptr, Long, Long, Long]);
    t.set(296, fs::pwritev, &[UInt, Ptr, Long, Long, Long]);
    t.set(302, process::prlimit64, &[Int, UInt, Ptr, Ptr]);
    t.set(306, fs::fsync, &[Int]);
    t.set(309, process::getcpu, &[Ptr, Ptr, Ptr]);
    t.set(316, path::renameat2, &[Int, Ptr, Int, Ptr, UInt]);
    t.set(327, fs::preadv2, &[UInt, Ptr, Long, Long, Long, Int]);
    t.set(328, fs::pwritev2, &[UInt, Ptr, Long, Long, Long, Int]);
    t.set(332, path::statx, &[Int, Ptr, UInt, UInt, Ptr]);
    t.set(439, path::faccessat, &[Int, Ptr, Int, Int]);
    t.set(318, random::getrandom, &[Ptr, Long, UInt]);
    t
}

/// Exported so that the host can read which numbers have a handler (docs/syscalls.md is generated from it).
#[no_mangle]
static KILN_SYSCALL_TABLE: SyscallTable = table();

/// The VMM finds the counters by this symbol and reads them however the program ends (exit, signal or crash). The
/// layout is `kiln_abi::hypercall::SyscallStats`: calls per number, then -ENOSYS answers per number (unknown numbers
/// and handlers' refusals alike).
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
        let rax = signal::rt_sigreturn(frame);
        // A signal the handler's mask held back runs now, as on Linux: the program may compute from here on.
        return match crate::sched::take_signal() {
            Some(sig) => signal::deliver(frame, sig, rax),
            None => rax,
        };
    }
    let handler = KILN_SYSCALL_TABLE.get(nr);
    let slot = SyscallStats::slot(nr);
    KILN_SYSCALL_STATS[slot].fetch_add(1, Ordering::Relaxed);
    // An unknown number is traced with its registers as they are.
    let args = handler.map_or(frame.args, |(_, signature)| args::decode(&frame.args, signature));
    let tracing = TRACING.load(Ordering::Relaxed);
    if tracing && (nr == SYS_EXIT || nr == SYS_EXIT_GROUP) {
        // These do not return: trace them on the way in.
        trace(nr, &args, 0);
    }
    let ret = match handler {
        Some((h, _)) => match h(&args) {
            Ok(v) => v as i64,
            Err(Errno(e)) => -e,
        },
        None => -Errno::ENOSYS.0,
    };
    if ret == -Errno::ENOSYS.0 {
        KILN_SYSCALL_STATS[SYSCALL_SLOTS + slot].fetch_add(1, Ordering::Relaxed);
    }
    if tracing {
        trace(nr, &args, ret);
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
