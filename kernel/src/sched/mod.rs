//! Threads, and the scheduler that runs them without interrupts: a thread runs until it blocks in a syscall (a futex
//! wait, a sleep) or exits; then the next runnable thread runs. When none can run, the vCPU waits in the VMM until the
//! earliest deadline; when none ever could (every thread waits on a futex without a deadline), the program is
//! deadlocked and the VMM is told instead of hanging silently.
//!
//! One vCPU for now: the scheduler is never entered twice at once (no interrupts, no preemption). A thread that
//! computes without syscalls keeps the vCPU until it makes one.

mod switch;

use crate::entry::{kiln_thread_start, SyscallFrame};
use crate::errno::Errno;
use crate::{cpu, hypercall, mm, percpu, time};
use core::cell::UnsafeCell;
use kiln_abi::layout::direct_map;
use kiln_abi::BootInfo;
use switch::{kiln_switch_stacks, SWITCH_FRAME_WORDS};

pub const MAX_THREADS: usize = 512;
/// The library OS stack of each thread after the first (which runs on the boot stack).
const THREAD_STACK_SIZE: u64 = 32 << 10;
/// Thread ids start at 1, the main thread, which is also the process id.
const MAIN_TID: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Runnable,
    Running,
    Blocked,
}

/// What a blocked thread waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A `futex` wake on this address matching this bitset.
    Futex { addr: u64, bitset: u32 },
    /// Only its deadline.
    Sleep,
}

/// Why a blocked thread runs again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    ByWake,
    ByDeadline,
}

#[derive(Clone, Copy)]
struct Thread {
    tid: u32,
    state: State,
    /// The kernel stack pointer saved by the last switch away from this thread.
    saved_sp: u64,
    kernel_stack_top: u64,
    fs_base: u64,
    /// `CLONE_CHILD_CLEARTID` / `set_tid_address`: zeroed and woken when the thread exits.
    clear_child_tid: u64,
    wait: Option<Wait>,
    /// Memory (guest-physical start, size) to release when the thread exits: its own stack, unmapped while in use.
    free_at_exit: Option<(u64, u64)>,
    /// Nanoseconds since boot; `u64::MAX` for none.
    deadline: u64,
    woken: Woken,
}

const FREE: Thread = Thread {
    tid: 0,
    state: State::Free,
    saved_sp: 0,
    kernel_stack_top: 0,
    fs_base: 0,
    clear_child_tid: 0,
    wait: None,
    free_at_exit: None,
    deadline: u64::MAX,
    woken: Woken::ByWake,
};

struct Scheduler {
    threads: [Thread; MAX_THREADS],
    current: usize,
    next_tid: u32,
}

struct Global(UnsafeCell<Scheduler>);
// SAFETY: one vCPU, no interrupts: the scheduler is only ever used by the one thread running the library OS.
unsafe impl Sync for Global {}

static SCHEDULER: Global =
    Global(UnsafeCell::new(Scheduler { threads: [FREE; MAX_THREADS], current: 0, next_tid: MAIN_TID + 1 }));

fn scheduler() -> &'static mut Scheduler {
    // SAFETY: see `Global`; callers do not keep the reference across a context switch.
    unsafe { &mut *SCHEDULER.0.get() }
}

pub fn init(boot: &BootInfo) {
    let s = scheduler();
    s.threads[0] = Thread {
        tid: MAIN_TID,
        state: State::Running,
        kernel_stack_top: direct_map(boot.kernel_stack_phys + boot.kernel_stack_size),
        ..FREE
    };
}

pub fn current_tid() -> u32 {
    let s = scheduler();
    s.threads[s.current].tid
}

/// See `Thread::free_at_exit`. A second request releases the first at once (it cannot be the stack in use too).
pub fn free_at_exit(phys: u64, size: u64) {
    let s = scheduler();
    if let Some((p, n)) = s.threads[s.current].free_at_exit.replace((phys, size)) {
        mm::mapping::release(p, n);
    }
}

pub fn set_clear_child_tid(addr: u64) {
    let s = scheduler();
    s.threads[s.current].clear_child_tid = addr;
}

/// How many threads exist (for `/proc`-like answers and the deadlock report).
pub fn live_threads() -> usize {
    scheduler().threads.iter().filter(|t| t.state != State::Free).count()
}

/// Starts a thread that resumes the program where `parent` made its `clone`, on `stack`, with `clone` returning 0.
pub fn spawn(parent: &SyscallFrame, stack: u64, tls: Option<u64>, clear_child_tid: u64) -> Result<u32, Errno> {
    let s = scheduler();
    let slot = s.threads.iter().position(|t| t.state == State::Free).ok_or(Errno::EAGAIN)?;
    let kernel_stack_top = match s.threads[slot].kernel_stack_top {
        0 => direct_map(mm::memory().frames.alloc(THREAD_STACK_SIZE).ok_or(Errno::ENOMEM)?) + THREAD_STACK_SIZE,
        // A slot keeps the stack of the thread that used it before.
        top => top,
    };
    // The child returns like its parent would, through `ret`, so its return address goes just below its stack.
    let return_address: u64 = crate::user::read(parent.user_rsp)?;
    let child_rsp = stack.checked_sub(8).ok_or(Errno::EINVAL)?;
    crate::user::write(child_rsp, return_address)?;

    let frame = SyscallFrame { nr: 0, user_rsp: child_rsp, ..*parent };
    let frame_at = kernel_stack_top - core::mem::size_of::<SyscallFrame>() as u64;
    let switch_at = frame_at - 8 * SWITCH_FRAME_WORDS as u64;
    // SAFETY: the stack is ours (just allocated, or left by an exited thread), in the direct map, and large enough.
    unsafe {
        (frame_at as *mut SyscallFrame).write(frame);
        let words = switch_at as *mut u64;
        for i in 0..SWITCH_FRAME_WORDS - 1 {
            words.add(i).write(0);
        }
        words.add(SWITCH_FRAME_WORDS - 1).write(kiln_thread_start as *const () as u64);
    }
    let tid = s.next_tid;
    s.next_tid += 1;
    s.threads[slot] = Thread {
        tid,
        state: State::Runnable,
        saved_sp: switch_at,
        kernel_stack_top,
        fs_base: tls.unwrap_or_else(cpu::read_fs_base),
        clear_child_tid,
        ..FREE
    };
    Ok(tid)
}

/// Blocks the current thread until a wake (for `Wait::Futex`) or `deadline`, whichever comes first.
pub fn block(wait: Wait, deadline: u64) -> Woken {
    {
        let s = scheduler();
        let me = &mut s.threads[s.current];
        me.state = State::Blocked;
        me.wait = Some(wait);
        me.deadline = deadline;
    }
    schedule();
    let s = scheduler();
    s.threads[s.current].woken
}

/// Lets other runnable threads run first.
pub fn yield_now() {
    let s = scheduler();
    s.threads[s.current].state = State::Runnable;
    schedule();
}

/// Wakes up to `count` threads waiting on `addr` whose bitset meets `bitset`; returns how many.
pub fn wake(addr: u64, bitset: u32, count: usize) -> usize {
    let s = scheduler();
    let mut woken = 0;
    for t in s.threads.iter_mut() {
        if woken == count {
            break;
        }
        if let (State::Blocked, Some(Wait::Futex { addr: a, bitset: b })) = (t.state, t.wait) {
            if a == addr && b & bitset != 0 {
                t.state = State::Runnable;
                t.wait = None;
                t.woken = Woken::ByWake;
                woken += 1;
            }
        }
    }
    woken
}

/// Moves up to `count` waiters from `from` to `to` without waking them; returns how many.
pub fn requeue(from: u64, to: u64, count: usize) -> usize {
    let s = scheduler();
    let mut moved = 0;
    for t in s.threads.iter_mut() {
        if moved == count {
            break;
        }
        if let (State::Blocked, Some(Wait::Futex { addr, bitset })) = (t.state, t.wait) {
            if addr == from {
                t.wait = Some(Wait::Futex { addr: to, bitset });
                moved += 1;
            }
        }
    }
    moved
}

/// Ends the current thread: clears and wakes its `clear_child_tid` (how `pthread_join` learns of it), then runs
/// another thread. The last thread's exit ends the program.
pub fn exit_current(code: u64) -> ! {
    let (clear, free) = {
        let s = scheduler();
        let me = &mut s.threads[s.current];
        (me.clear_child_tid, me.free_at_exit.take())
    };
    if live_threads() == 1 {
        hypercall::exit(code, 0);
    }
    if clear != 0 && crate::user::write(clear, 0u32).is_ok() {
        wake(clear, u32::MAX, 1);
    }
    // We run on our kernel stack: the program's stack can go now.
    if let Some((phys, size)) = free {
        mm::mapping::release(phys, size);
    }
    {
        let s = scheduler();
        let me = &mut s.threads[s.current];
        // The slot (and its kernel stack, which we are still running on) is reused only by a later `spawn`, which
        // cannot happen before we have switched away.
        me.state = State::Free;
        me.wait = None;
    }
    schedule();
    unreachable!("an exited thread was scheduled again")
}

/// Picks the next thread to run and switches to it; returns when the current thread runs again.
fn schedule() {
    let next = loop {
        if let Some(next) = pick_runnable() {
            break next;
        }
        let s = scheduler();
        let earliest = s.threads.iter().filter(|t| t.state == State::Blocked).map(|t| t.deadline).min();
        match earliest {
            Some(deadline) if deadline != u64::MAX => {
                time::wait_until(deadline);
                expire_deadlines();
            }
            _ => hypercall::deadlock(live_threads() as u64),
        }
    };
    let s = scheduler();
    let prev = s.current;
    if next == prev {
        s.threads[prev].state = State::Running;
        return;
    }
    s.threads[prev].fs_base = cpu::read_fs_base();
    s.current = next;
    let t = &mut s.threads[next];
    t.state = State::Running;
    cpu::write_fs_base(t.fs_base);
    percpu::set_kernel_stack_top(t.kernel_stack_top);
    let load = t.saved_sp;
    let save = &mut s.threads[prev].saved_sp as *mut u64;
    // SAFETY: `load` was saved by a switch away from `next` (or prepared by `spawn`); `save` outlives the switch
    // (the thread table is static). An exited `prev` never runs again, so its saved pointer is never used.
    unsafe { kiln_switch_stacks(save, load) };
}

/// The next runnable thread after the current one (round robin), the current one last; expired deadlines count.
fn pick_runnable() -> Option<usize> {
    expire_deadlines();
    let s = scheduler();
    (1..=MAX_THREADS).map(|i| (s.current + i) % MAX_THREADS).find(|&i| s.threads[i].state == State::Runnable)
}

fn expire_deadlines() {
    let now = time::since_boot_ns();
    for t in scheduler().threads.iter_mut() {
        if t.state == State::Blocked && t.deadline <= now {
            t.state = State::Runnable;
            t.wait = None;
            t.woken = Woken::ByDeadline;
        }
    }
}
