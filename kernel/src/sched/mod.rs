//! Threads, and the scheduler that runs them on every vCPU without interrupts: a thread runs until it blocks in a
//! syscall (a futex wait, a sleep), yields or exits; then its vCPU runs the next runnable thread. A vCPU with nothing
//! to run waits in the VMM until the earliest deadline or until another vCPU kicks it (after making a thread
//! runnable). When no thread could ever run again (every one waits on a futex without a deadline), the program is
//! deadlocked and the VMM is told, instead of hanging silently.
//!
//! One lock guards the thread table. A context switch happens with it held and the thread switched to releases it,
//! so that a thread's saved stack pointer is complete before any other vCPU can pick it. A thread that computes
//! without syscalls is interrupted by the VMM when a signal is sent to it (`post_signal`), and, with no vCPU idle, at
//! the next moment its vCPU must look again (`next_look`: the end of its slice if others wait, a sleeper's deadline, a
//! timer's expiry), when it yields to the waiting threads (`interrupted`).
//!
//! The table grows on demand up to [`MAX_THREADS`]; `queues` index it (run queue, wait queues, deadlines) so that
//! switching, waking and expiring cost the same with ten threads or ten thousand. Invariants, under the lock: a
//! thread is on the run queue exactly when it is `Runnable`; a `Blocked` thread is on the wait queue of its wait's
//! key (if it has one) and among the deadlines (if it has one), and no other thread is; a `Free` slot is on the free
//! list.

mod pi;
mod queues;
mod switch;

pub use pi::{pi_futexes_waited, robust_list, set_robust_list, wake_pi_waiter, Peek};

use crate::entry::SyscallFrame;
use crate::errno::Errno;
use crate::sync::SpinLock;
use crate::syscalls::signal::{StackT, SS_DISABLE};
use crate::{cpu, hypercall, mm, percpu, time};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kiln_abi::layout::direct_map;
use kiln_abi::threads::{self, ThreadTable};
use kiln_abi::BootInfo;
use queues::{Key, Queues};
use switch::{kiln_switch_stacks, SWITCH_FRAME_WORDS};

/// Threads a program may have at once. A slot costs nothing until used (the table grows) but 8 bytes of pending
/// signals; a thread in use costs its 32 KiB library OS stack and whatever stack the program gives it, which guest
/// RAM backs whole, so memory, not this limit, bounds a program first (16,384 threads would need 512 MiB of library
/// OS stacks alone). Linux's default limit on a machine of a few GiB is of the same order.
pub const MAX_THREADS: usize = 16384;
/// The library OS stack of each thread after the first (which runs on the boot vCPU's stack).
const THREAD_STACK_SIZE: u64 = 32 << 10;
/// Thread ids start at 1, the main thread, which is also the process id.
const MAIN_TID: u32 = 1;

/// The discriminants are the VMM's (`kiln_abi::threads::THREAD_*`, read through [`KILN_THREAD_TABLE`]).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    Free = threads::THREAD_FREE,
    Runnable = threads::THREAD_RUNNABLE,
    Running = threads::THREAD_RUNNING,
    Blocked = threads::THREAD_BLOCKED,
}

/// What a blocked thread waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A `futex` wake on this address matching this bitset.
    Futex { addr: u64, bitset: u32 },
    /// The priority-inheritance futex at this address, handed over by its owner's FUTEX_UNLOCK_PI (or its death).
    PiFutex(u64),
    /// A change of a library OS object (a socket, pipe, eventfd, epoll instance, poll call), named by its address.
    Object(u64),
    /// Only its deadline.
    Sleep,
    /// A signal (pause, sigsuspend): one may come from the host at any time, so such a wait is never a deadlock.
    Signal,
    /// One of these signals, blocked or not (sigwait), or any signal the thread does not block.
    SignalIn(u64),
}

impl Wait {
    fn key(self) -> Option<Key> {
        match self {
            Wait::Futex { addr, .. } => Some(Key::Futex(addr)),
            Wait::PiFutex(addr) => Some(Key::PiFutex(addr)),
            Wait::Object(key) => Some(Key::Object(key)),
            Wait::Sleep | Wait::Signal | Wait::SignalIn(_) => None,
        }
    }
}

/// Why a blocked thread runs again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    Wake,
    Deadline,
    /// A signal arrived for it: the syscall returns EINTR and the signal is delivered on the way out.
    Signal,
}

#[derive(Clone, Copy)]
struct Thread {
    tid: u32,
    state: State,
    /// The vCPU executing on this thread's kernel stack, if any: running it, or still switching away from it (or
    /// idling on it). No other vCPU may run the thread, or reuse its slot, meanwhile.
    on_cpu: Option<usize>,
    /// The kernel stack pointer saved by the last switch away from this thread.
    saved_sp: u64,
    kernel_stack_top: u64,
    fs_base: u64,
    /// `CLONE_CHILD_CLEARTID` / `set_tid_address`: zeroed and woken when the thread exits.
    clear_child_tid: u64,
    wait: Option<Wait>,
    /// Its own stack, unmapped while in use: released when the thread exits.
    free_at_exit: Option<Unmapped>,
    /// Nanoseconds since boot; `u64::MAX` for none.
    deadline: u64,
    woken: Woken,
    /// `prctl(PR_SET_NAME)`, NUL-padded.
    name: [u8; 16],
    /// Signals this thread blocks (rt_sigprocmask).
    blocked: u64,
    /// Its alternate signal stack (sigaltstack).
    altstack: StackT,
    /// The mask to restore after the next signal's handler (sigsuspend's caller's mask).
    saved_blocked: Option<u64>,
    /// `set_robust_list`: the program's list of robust futexes this thread holds, walked when it exits.
    robust_list: u64,
    /// For `/proc`: when it started and, while it runs, since when (ns since boot); how long it ran before; the vCPU
    /// it ran on last.
    started_ns: u64,
    running_since_ns: u64,
    ran_ns: u64,
    last_cpu: usize,
}

/// What `/proc/self/task/TID/stat` and `/proc/self/stat` show of a live thread.
pub struct ThreadFacts {
    pub tid: u32,
    pub name: [u8; 16],
    /// Linux's letter: R running or waiting for a vCPU, S asleep.
    pub state: u8,
    pub cpu: usize,
    pub started_ns: u64,
    /// Time it ran so far.
    pub ran_ns: u64,
    pub blocked: u64,
    pub pending: u64,
}

/// Signals sent to the thread in each slot and not yet delivered (bit `n - 1` for signal `n`). Outside the locked
/// table so that every syscall's exit can look without taking the lock.
static PENDING: [AtomicU64; MAX_THREADS] = [const { AtomicU64::new(0) }; MAX_THREADS];

const FREE: Thread = Thread {
    tid: 0,
    state: State::Free,
    on_cpu: None,
    saved_sp: 0,
    kernel_stack_top: 0,
    fs_base: 0,
    clear_child_tid: 0,
    wait: None,
    free_at_exit: None,
    deadline: u64::MAX,
    woken: Woken::Wake,
    name: [0; 16],
    blocked: 0,
    altstack: StackT { sp: 0, flags: SS_DISABLE, _pad: 0, size: 0 },
    saved_blocked: None,
    robust_list: 0,
    started_ns: 0,
    running_since_ns: 0,
    ran_ns: 0,
    last_cpu: 0,
};

struct Scheduler {
    /// Grows by a slot when no free one is left, up to `MAX_THREADS`; never shrinks (a slot keeps its stack).
    threads: Vec<Thread>,
    /// Free slots, most recently freed last.
    free: Vec<usize>,
    /// Threads not `Free`.
    live: usize,
    queues: Queues,
    next_tid: u32,
    /// vCPUs waiting in the VMM for work (bit per vCPU).
    idle: u64,
}

static SCHEDULER: SpinLock<Scheduler> = SpinLock::new(Scheduler {
    threads: Vec::new(),
    free: Vec::new(),
    live: 0,
    queues: Queues::new(),
    next_tid: MAIN_TID + 1,
    idle: 0,
});

/// Where the thread table is, for the VMM's debugger and crash reports (`kiln_abi::threads`): rewritten under the
/// scheduler lock whenever the table moves or grows, and read by the VMM only while no vCPU runs.
#[no_mangle]
static mut KILN_THREAD_TABLE: ThreadTable = ThreadTable {
    magic: 0,
    slots: 0,
    len: 0,
    stride: core::mem::size_of::<Thread>() as u64,
    tid_offset: core::mem::offset_of!(Thread, tid) as u64,
    state_offset: core::mem::offset_of!(Thread, state) as u64,
    cpu_offset: core::mem::offset_of!(Thread, last_cpu) as u64,
    kernel_stack_top_offset: core::mem::offset_of!(Thread, kernel_stack_top) as u64,
    fs_base_offset: core::mem::offset_of!(Thread, fs_base) as u64,
    name_offset: core::mem::offset_of!(Thread, name) as u64,
};

impl Scheduler {
    /// Tells the VMM where the table is now (after it grew). Lock held.
    fn publish(&self) {
        let table = &raw mut KILN_THREAD_TABLE;
        // SAFETY: written only here, under the scheduler lock; the VMM reads it only while every vCPU is stopped. The
        // magic goes last, volatile, so that a reader never sees it before the fields it vouches for.
        unsafe {
            (*table).slots = self.threads.as_ptr() as u64;
            (*table).len = self.threads.len() as u64;
            core::ptr::write_volatile(&raw mut (*table).magic, threads::THREAD_TABLE_MAGIC);
        }
    }

    /// Makes a blocked thread runnable, woken for `woken`, taking it off its wait queue and deadline.
    fn unblock(&mut self, slot: usize, woken: Woken) {
        let t = &mut self.threads[slot];
        self.queues.unblock(slot, t.wait.and_then(Wait::key), t.deadline);
        self.make_runnable(slot, woken);
    }

    /// Makes a thread that is on no wait queue and has no recorded deadline (any more) runnable.
    fn make_runnable(&mut self, slot: usize, woken: Woken) {
        let t = &mut self.threads[slot];
        t.state = State::Runnable;
        t.wait = None;
        t.deadline = u64::MAX;
        t.woken = woken;
        self.queues.push_runnable(slot);
    }

    fn slot_of(&self, tid: u32) -> Option<usize> {
        self.threads.iter().position(|t| t.state != State::Free && t.tid == tid)
    }
}

/// The boot vCPU's main thread, which the program starts on.
pub fn init(boot: &BootInfo) {
    SMP.store(boot.vcpu_count > 1, Ordering::Relaxed);
    VCPUS.store(boot.vcpu_count.min(64) as u64, Ordering::Relaxed);
    let mut s = SCHEDULER.lock();
    s.threads.push(Thread {
        tid: MAIN_TID,
        name: program_name(boot),
        state: State::Running,
        on_cpu: Some(0),
        kernel_stack_top: direct_map(boot.kernel_stack_phys + boot.kernel_stack_size),
        ..FREE
    });
    s.live = 1;
    s.publish();
    percpu::set_thread(0);
}

/// The main thread's name as Linux gives it: the executable's file name, at most 15 bytes.
fn program_name(boot: &BootInfo) -> [u8; 16] {
    let mut name = [0u8; 16];
    if boot.exe_path_len == 0 || boot.exe_path_len > 4096 {
        return name;
    }
    // SAFETY: the VMM put the path in the program's initial stack, which is mapped and not yet the program's.
    let path = unsafe { core::slice::from_raw_parts(boot.exe_path_addr as *const u8, boot.exe_path_len as usize) };
    let file = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let n = file.len().min(15);
    name[..n].copy_from_slice(&file[..n]);
    name
}

/// A secondary vCPU's life: wait for threads to run. Never returns.
pub fn run_secondary() -> ! {
    let guard = SCHEDULER.lock();
    core::mem::forget(guard);
    // This vCPU's boot stack is a context of its own, never switched back to.
    let mut boot_context = 0u64;
    let next = idle_until_runnable();
    // SAFETY: we hold the scheduler lock (forgotten guard above; released by the thread we switch to).
    let s = unsafe { SCHEDULER.get_locked() };
    let load = start_running(s, next);
    // SAFETY: `load` was saved by a switch away from `next` or prepared by `spawn`; the thread releases the lock.
    unsafe { kiln_switch_stacks(&mut boot_context, load) };
    unreachable!("a vCPU's boot context was resumed")
}

/// The ids and names of the live threads, in id order (`/proc/self/task`).
pub fn threads() -> Vec<(u32, [u8; 16])> {
    let s = SCHEDULER.lock();
    let mut all: Vec<(u32, [u8; 16])> =
        s.threads.iter().filter(|t| t.state != State::Free).map(|t| (t.tid, t.name)).collect();
    drop(s);
    all.sort_unstable_by_key(|&(tid, _)| tid);
    all
}

/// The live threads, by id.
pub fn thread_facts() -> Vec<ThreadFacts> {
    let now = time::since_boot_ns();
    let s = SCHEDULER.lock();
    let mut all: Vec<ThreadFacts> = s
        .threads
        .iter()
        .enumerate()
        .filter(|(_, t)| t.state != State::Free)
        .map(|(slot, t)| {
            let running = t.state == State::Running;
            ThreadFacts {
                tid: t.tid,
                name: t.name,
                state: if running || t.state == State::Runnable { b'R' } else { b'S' },
                cpu: t.on_cpu.unwrap_or(t.last_cpu),
                started_ns: t.started_ns,
                ran_ns: t.ran_ns + if running { now.saturating_sub(t.running_since_ns) } else { 0 },
                blocked: t.blocked,
                pending: PENDING[slot].load(Ordering::Relaxed),
            }
        })
        .collect();
    drop(s);
    all.sort_unstable_by_key(|t| t.tid);
    all
}

pub fn current_tid() -> u32 {
    SCHEDULER.lock().threads[percpu::current().thread].tid
}

pub fn set_name(name: [u8; 16]) {
    SCHEDULER.lock().threads[percpu::current().thread].name = name;
}

pub fn name() -> [u8; 16] {
    SCHEDULER.lock().threads[percpu::current().thread].name
}

pub fn set_clear_child_tid(addr: u64) {
    SCHEDULER.lock().threads[percpu::current().thread].clear_child_tid = addr;
}

/// Memory a thread unmapped while running on it.
#[derive(Clone, Copy)]
pub enum Unmapped {
    /// Guest-physical start and size of direct-map memory.
    Direct(u64, u64),
    /// Virtual start and length of chosen-address memory.
    Chosen(u64, u64),
}

impl Unmapped {
    fn release(self) {
        match self {
            Unmapped::Direct(phys, size) => mm::mapping::release(phys, size),
            Unmapped::Chosen(addr, len) => mm::vma::release(addr, len),
        }
    }
}

/// See `Thread::free_at_exit`. A second request releases the first at once (it cannot be the stack in use too).
pub fn free_at_exit(memory: Unmapped) {
    let previous = SCHEDULER.lock().threads[percpu::current().thread].free_at_exit.replace(memory);
    if let Some(previous) = previous {
        previous.release();
    }
}

/// Starts a thread that resumes the program where `parent` made its `clone`, on `stack`, with `clone` returning 0.
/// Its tid is stored at each `set_tid` address before it can run (a bad address is skipped, as Linux does).
pub fn spawn(
    parent: &SyscallFrame,
    stack: u64,
    tls: Option<u64>,
    clear_child_tid: u64,
    set_tid: [Option<u64>; 2],
) -> Result<u32, Errno> {
    // The child returns where its parent does (the return address is in the parent's saved %rcx) with %rsp = `stack`;
    // the way out adds 8 to the saved %rsp.
    let child_rsp = stack.checked_sub(8).ok_or(Errno::EINVAL)?;
    let fs_base = tls.unwrap_or_else(cpu::read_fs_base);

    let mut s = SCHEDULER.lock();
    // A freed slot no vCPU still runs on (an exited thread's vCPU may idle on its stack), else a new one.
    let reusable = s.free.iter().rposition(|&i| s.threads[i].on_cpu.is_none());
    let slot = match reusable {
        Some(at) => s.free.swap_remove(at),
        None if s.threads.len() < MAX_THREADS => {
            // Everything a thread may need room for later is reserved now, when running out can still be answered
            // (clone's EAGAIN, as Linux answers a thread it cannot make): its slot, its place on the free list (its
            // exit, or a failed stack allocation below, puts it there) and on the run queue.
            let slots = s.threads.len() + 1;
            let freed = s.free.len();
            let grown = s.threads.try_reserve(1).is_ok()
                && s.free.try_reserve(slots - freed).is_ok()
                && s.queues.reserve_runnable(slots);
            if !grown {
                return Err(Errno::EAGAIN);
            }
            s.threads.push(FREE);
            s.publish();
            s.threads.len() - 1
        }
        None => return Err(Errno::EAGAIN),
    };
    let kernel_stack_top = match s.threads[slot].kernel_stack_top {
        0 => match mm::memory().frames.alloc(THREAD_STACK_SIZE) {
            Some(phys) => direct_map(phys) + THREAD_STACK_SIZE,
            None => {
                s.free.push(slot);
                return Err(Errno::ENOMEM);
            }
        },
        // A slot keeps the stack of the thread that used it before.
        top => top,
    };
    let frame = SyscallFrame { nr: 0, user_rsp: child_rsp, ..*parent };
    let frame_at = kernel_stack_top - core::mem::size_of::<SyscallFrame>() as u64;
    let switch_at = frame_at - 8 * SWITCH_FRAME_WORDS as u64;
    // SAFETY: the stack is ours (just allocated, or left by an exited thread no vCPU runs on), in the direct map, and
    // large enough.
    unsafe {
        (frame_at as *mut SyscallFrame).write(frame);
        let words = switch_at as *mut u64;
        for i in 0..SWITCH_FRAME_WORDS - 1 {
            words.add(i).write(0);
        }
        words.add(SWITCH_FRAME_WORDS - 1).write(thread_first_run as *const () as u64);
    }
    let tid = s.next_tid;
    s.next_tid += 1;
    for at in set_tid.into_iter().flatten() {
        let _ = crate::user::write(at, tid);
    }
    // A new thread inherits its creator's blocked signals and name, as on Linux.
    let Thread { blocked, name, .. } = s.threads[percpu::current().thread];
    PENDING[slot].store(0, Ordering::SeqCst);
    s.threads[slot] = Thread {
        tid,
        saved_sp: switch_at,
        kernel_stack_top,
        fs_base,
        clear_child_tid,
        blocked,
        name,
        started_ns: time::since_boot_ns(),
        ..FREE
    };
    s.make_runnable(slot, Woken::Wake);
    s.live += 1;
    let slices = slices_to_end(&s);
    let idle = take_idle(&mut s, 1);
    drop(s);
    kick(idle);
    end_slices(slices);
    Ok(tid)
}

/// A new thread's first instructions, reached by the switch that picked it: release the lock the switching vCPU
/// holds, then return from `clone` with 0 (see `entry.rs`).
#[unsafe(naked)]
extern "C" fn thread_first_run() {
    core::arch::naked_asm!("call {release}", "jmp kiln_thread_start", release = sym release_after_switch);
}

extern "C" fn release_after_switch() {
    // SAFETY: the vCPU that switched to this thread holds the lock for us (see `schedule`).
    unsafe { SCHEDULER.force_unlock() };
    ask_for_look();
}

/// Blocks the current thread until a wake (for `Wait::Futex`) or `deadline`, whichever comes first. `still` is checked
/// under the scheduler lock first: if it fails the thread does not block (`None`), so that no wake can be lost
/// between a futex's value check and the wait.
pub fn block(wait: Wait, deadline: u64, still: impl FnOnce() -> bool) -> Option<Woken> {
    block_unless(wait, deadline, |_| if still() { Attempt::Block } else { Attempt::Done(()) }).err()
}

/// What a look under the scheduler lock decided: block, or not (with an answer).
pub enum Attempt<R> {
    Done(R),
    Block,
}

/// Blocks the current thread as `block` does unless `attempt`, run under the scheduler lock (so no wake can fall
/// between it and the wait), says it is done: `Ok` with its answer then, else `Err` with why the thread woke.
pub fn block_unless<R>(wait: Wait, deadline: u64, attempt: impl FnOnce(&Peek) -> Attempt<R>) -> Result<R, Woken> {
    let mut s = SCHEDULER.lock();
    if let Attempt::Done(answer) = attempt(&Peek(&s)) {
        return Ok(answer);
    }
    let me = percpu::current().thread;
    // sigwait also takes its signals while blocked, and those pending for the process at the main thread (slot 0).
    let awaited = match wait {
        Wait::SignalIn(set) => set,
        _ => 0,
    };
    let for_process = if me == 0 { 0 } else { PENDING[0].load(Ordering::SeqCst) & s.threads[0].blocked };
    let t = &mut s.threads[me];
    if PENDING[me].load(Ordering::SeqCst) & (!t.blocked | awaited) != 0 || for_process & awaited != 0 {
        return Err(Woken::Signal);
    }
    t.state = State::Blocked;
    t.wait = Some(wait);
    t.deadline = deadline;
    s.queues.block(me, wait.key(), deadline);
    core::mem::forget(s);
    schedule();
    Err(SCHEDULER.lock().threads[me].woken)
}

/// The current thread's blocked-signal mask.
pub fn blocked_signals() -> u64 {
    SCHEDULER.lock().threads[percpu::current().thread].blocked
}

pub fn set_blocked_signals(mask: u64) {
    SCHEDULER.lock().threads[percpu::current().thread].blocked = mask;
}

/// Whether thread `tid` exists.
pub fn thread_exists(tid: u32) -> bool {
    SCHEDULER.lock().slot_of(tid).is_some()
}

/// Marks signal `sig` (1-64) pending for thread `tid`, or for the current thread if `tid` is `None`, and wakes that
/// thread from a blocking syscall if it does not block the signal. Returns false if there is no such thread.
pub fn post_signal(tid: Option<u32>, sig: u32) -> bool {
    let bit = 1u64 << (sig - 1);
    let mut s = SCHEDULER.lock();
    let current = percpu::current().thread;
    let slot = match tid {
        None => Some(current),
        Some(tid) => s.slot_of(tid),
    };
    let Some(slot) = slot else { return false };
    PENDING[slot].fetch_or(bit, Ordering::SeqCst);
    let t = &mut s.threads[slot];
    let awaited = matches!(t.wait, Some(Wait::SignalIn(set)) if set & bit != 0);
    if t.state != State::Blocked || (t.blocked & bit != 0 && !awaited) {
        // Running on another vCPU, perhaps computing without syscalls: the VMM interrupts it there if it is in the
        // program's code (in the library OS it looks at its signals before it returns).
        let elsewhere = t.on_cpu.filter(|&c| t.state == State::Running && t.blocked & bit == 0 && c != percpu::id());
        drop(s);
        if let Some(cpu_id) = elsewhere {
            hypercall::call(kiln_abi::Hypercall::Preempt, &[1 << cpu_id, 0]);
        }
        return true;
    }
    let on_cpu = t.on_cpu;
    s.unblock(slot, Woken::Signal);
    let slices = slices_to_end(&s);
    // Its vCPU idles on its stack (only that one can run it), or any idle vCPU can.
    let cpus = match on_cpu {
        Some(c) => s.idle & (1 << c) & !(1 << percpu::id()),
        None => take_idle(&mut s, 1),
    };
    drop(s);
    kick(cpus);
    end_slices(slices);
    true
}

/// A thread waiting in sigwait for `sig`, which a signal for the whole process goes to first.
pub fn sigwaiter_for(sig: u32) -> Option<u32> {
    let bit = 1u64 << (sig - 1);
    let s = SCHEDULER.lock();
    s.threads
        .iter()
        .find(|t| t.state == State::Blocked && matches!(t.wait, Some(Wait::SignalIn(set)) if set & bit != 0))
        .map(|t| t.tid)
}

/// Whether thread `tid` blocks `sig`.
pub fn blocks(tid: u32, sig: u32) -> bool {
    let s = SCHEDULER.lock();
    s.threads.iter().any(|t| t.state != State::Free && t.tid == tid && t.blocked & (1 << (sig - 1)) != 0)
}

/// sigwait: takes the lowest pending signal of `set` for the current thread, or one pending for the process (at the
/// main thread, which blocks it).
pub fn take_signal_in(set: u64) -> Option<u32> {
    let me = percpu::current().thread;
    let s = SCHEDULER.lock();
    let main = s.slot_of(MAIN_TID);
    let from_main = main.filter(|&m| m != me).map_or(0, |m| PENDING[m].load(Ordering::SeqCst) & s.threads[m].blocked);
    let (slot, pending) = match PENDING[me].load(Ordering::SeqCst) & set {
        0 => (main?, from_main & set),
        own => (me, own),
    };
    if pending == 0 {
        return None;
    }
    let sig = pending.trailing_zeros();
    PENDING[slot].fetch_and(!(1 << sig), Ordering::SeqCst);
    Some(sig + 1)
}

/// Takes the lowest pending signal the current thread does not block, if any. Cheap when none is pending.
pub fn take_signal() -> Option<u32> {
    let me = percpu::current().thread;
    if PENDING[me].load(Ordering::Relaxed) == 0 {
        return None;
    }
    let s = SCHEDULER.lock();
    let deliverable = PENDING[me].load(Ordering::SeqCst) & !s.threads[me].blocked;
    if deliverable == 0 {
        return None;
    }
    let sig = deliverable.trailing_zeros();
    PENDING[me].fetch_and(!(1 << sig), Ordering::SeqCst);
    Some(sig + 1)
}

/// The current thread's pending signals.
pub fn pending_signals() -> u64 {
    PENDING[percpu::current().thread].load(Ordering::SeqCst)
}

/// Whether the current thread has a pending signal it does not block.
pub fn signal_deliverable() -> bool {
    let me = percpu::current().thread;
    PENDING[me].load(Ordering::SeqCst) & !SCHEDULER.lock().threads[me].blocked != 0
}

/// sigsuspend: the mask to give back once the signal's handler returns.
pub fn set_saved_blocked(mask: Option<u64>) {
    SCHEDULER.lock().threads[percpu::current().thread].saved_blocked = mask;
}

pub fn take_saved_blocked() -> Option<u64> {
    SCHEDULER.lock().threads[percpu::current().thread].saved_blocked.take()
}

pub fn altstack() -> StackT {
    SCHEDULER.lock().threads[percpu::current().thread].altstack
}

pub fn set_altstack(stack: StackT) {
    SCHEDULER.lock().threads[percpu::current().thread].altstack = stack;
}

/// Lets other runnable threads run first.
pub fn yield_now() {
    let mut s = SCHEDULER.lock();
    // A sleeper whose time has come is runnable too: a program may spin on sched_yield until it has run, and on a
    // busy vCPU nothing else looks at the deadlines (only idle vCPUs do).
    expire_deadlines(&mut s);
    // Nothing else to run: carry on without touching the thread table.
    if !s.queues.any_runnable() {
        return;
    }
    s.make_runnable(percpu::current().thread, Woken::Wake);
    core::mem::forget(s);
    schedule();
}

/// Wakes up to `count` threads waiting on futex `addr` whose bitset meets `bitset`, first come first woken; returns
/// how many.
pub fn wake(addr: u64, bitset: u32, count: usize) -> usize {
    let mut guard = SCHEDULER.lock();
    let s = &mut *guard;
    let threads = &s.threads;
    let meets = |slot: usize| matches!(threads[slot].wait, Some(Wait::Futex { bitset: b, .. }) if b & bitset != 0);
    let woken = s.queues.take_waiters(Key::Futex(addr), count, meets);
    make_woken_run(guard, woken)
}

/// Wakes every thread waiting for a change of the library OS object `key` (see `file::wait`).
pub fn wake_object(key: u64) {
    let mut s = SCHEDULER.lock();
    let woken = s.queues.take_waiters(Key::Object(key), usize::MAX, |_| true);
    make_woken_run(s, woken);
}

/// Makes the threads just taken off a wait queue runnable and kicks idle vCPUs to run them; returns how many.
fn make_woken_run(mut s: crate::sync::SpinGuard<'_, Scheduler>, woken: alloc::collections::VecDeque<usize>) -> usize {
    if woken.is_empty() {
        return 0;
    }
    // A woken thread whose stack a vCPU still idles on can only run there: kick that one; others can run anywhere.
    let mut pinned = 0u64;
    for &slot in &woken {
        let deadline = s.threads[slot].deadline;
        s.queues.unblock(slot, None, deadline);
        s.make_runnable(slot, Woken::Wake);
        pinned |= s.threads[slot].on_cpu.map_or(0, |c| 1 << c);
    }
    let free = woken.len() - pinned.count_ones() as usize;
    let slices = slices_to_end(&s);
    let pinned = pinned & s.idle & !(1 << percpu::id());
    s.idle &= !pinned;
    let idle = pinned | take_idle(&mut s, free);
    drop(s);
    kick(idle);
    end_slices(slices);
    woken.len()
}

/// Moves up to `count` waiters from futex `from` to futex `to` without waking them; returns how many.
pub fn requeue(from: u64, to: u64, count: usize) -> usize {
    let mut s = SCHEDULER.lock();
    let moved = s.queues.requeue(Key::Futex(from), Key::Futex(to), count);
    for &slot in &moved {
        if let Some(Wait::Futex { addr, .. }) = &mut s.threads[slot].wait {
            *addr = to;
        }
    }
    moved.len()
}

/// Ends the current thread: clears and wakes its `clear_child_tid` (how `pthread_join` learns of it), then runs
/// another thread. The last thread's exit ends the program.
pub fn exit_current(code: u64) -> ! {
    let me = percpu::current().thread;
    let (clear, free, last) = {
        let mut s = SCHEDULER.lock();
        let last = s.live == 1;
        let t = &mut s.threads[me];
        (t.clear_child_tid, t.free_at_exit.take(), last)
    };
    if last {
        crate::net::linger();
        hypercall::exit(code, 0);
    }
    if clear != 0 && crate::user::write(clear, 0u32).is_ok() {
        wake(clear, u32::MAX, 1);
    }
    // We run on our kernel stack: the program's stack can go now.
    if let Some(memory) = free {
        memory.release();
    }
    let mut s = SCHEDULER.lock();
    // The slot (and the kernel stack we still run on) is not reused while `on_cpu` names us.
    s.threads[me].state = State::Free;
    s.threads[me].wait = None;
    s.free.push(me);
    s.live -= 1;
    core::mem::forget(s);
    schedule();
    unreachable!("an exited thread was scheduled again")
}

/// With the scheduler lock held (guard forgotten): runs the next runnable thread, waiting for one if need be. Returns
/// when the current thread runs again, with the lock released.
fn schedule() {
    let me = percpu::current().thread;
    {
        // SAFETY: the caller holds the lock (its guard forgotten); this reference ends before anything else uses it.
        let t = unsafe { &mut SCHEDULER.get_locked().threads[me] };
        t.ran_ns += time::since_boot_ns().saturating_sub(t.running_since_ns);
    }
    let next = idle_until_runnable();
    // SAFETY: we hold the lock (the caller forgot its guard; `idle_until_runnable` returns with it held).
    let s = unsafe { SCHEDULER.get_locked() };
    if next == me {
        s.threads[me].state = State::Running;
        s.threads[me].running_since_ns = time::since_boot_ns();
        // SAFETY: held since the caller's forgotten guard; nothing obtained under it is used after this.
        unsafe { SCHEDULER.force_unlock() };
        ask_for_look();
        return;
    }
    s.threads[me].fs_base = cpu::read_fs_base();
    let save = &mut s.threads[me].saved_sp as *mut u64;
    let load = start_running(s, next);
    // Another vCPU may run `me` (once it is runnable) only after the switch has saved its stack pointer: the lock,
    // which the next thread releases, keeps it from looking before then.
    s.threads[me].on_cpu = None;
    // SAFETY: `load` was saved by a switch away from `next` or prepared by `spawn`; `save` is in the static table.
    unsafe { kiln_switch_stacks(save, load) };
    // We run again: whoever switched to us holds the lock for us.
    release_after_switch();
}

/// Makes `next` this vCPU's running thread and returns the stack pointer to switch to. Lock held.
fn start_running(s: &mut Scheduler, next: usize) -> u64 {
    let cpu_id = percpu::id();
    // When to look again (the VMM is asked once the lock is released: `ask_for_look`).
    if let Some(at) = next_look(s) {
        want_look(at);
    }
    let t = &mut s.threads[next];
    t.state = State::Running;
    t.on_cpu = Some(cpu_id);
    t.last_cpu = cpu_id;
    t.running_since_ns = time::since_boot_ns();
    cpu::write_fs_base(t.fs_base);
    percpu::set_kernel_stack_top(t.kernel_stack_top);
    percpu::set_thread(next);
    t.saved_sp
}

/// With the lock held: the slot of a runnable thread this vCPU may run, waiting in the VMM (lock released meanwhile)
/// until there is one. Returns with the lock held.
fn idle_until_runnable() -> usize {
    let cpu_id = percpu::id();
    loop {
        // SAFETY: the lock is held on entry and at the top of every round.
        let s = unsafe { SCHEDULER.get_locked() };
        expire_deadlines(s);
        let threads = &s.threads;
        if let Some(next) = s.queues.take_runnable(|slot| threads[slot].on_cpu.is_none_or(|c| c == cpu_id)) {
            s.idle &= !(1 << cpu_id);
            return next;
        }
        // Nothing for this vCPU: it is about to wait in the VMM (tens of microseconds), so a look at every thread
        // costs little here.
        let runnable_elsewhere = s.queues.any_runnable()
            || s.threads
                .iter()
                .any(|t| t.state == State::Running || matches!(t.wait, Some(Wait::Signal | Wait::SignalIn(_))));
        let blocked = s.queues.next_deadline();
        // A timer that will expire can wake a thread (its signal), and so can the network stack's next timer (a
        // retransmission): deadlines too.
        let net = crate::net::next_deadline();
        let deadline = [blocked, crate::timers::next_expiry(), net].into_iter().flatten().min();
        // Packets from the network card can come at any time: no deadline then is no deadlock.
        // And so can input on stdin.
        let net_wakes = crate::net::can_wake() || crate::file::stdin::can_wake();
        if !runnable_elsewhere && !net_wakes && deadline.is_none_or(|d| d == u64::MAX) {
            hypercall::deadlock(s.live as u64, &waits(s));
        }
        s.idle |= 1 << cpu_id;
        // The VMM forgets this vCPU's slice as it waits (see `Hypercall::Preempt`).
        LOOK_AT[cpu_id].store(u64::MAX, Ordering::SeqCst);
        UNWANTED[cpu_id].store(false, Ordering::SeqCst);
        // SAFETY: nothing obtained under the lock is used while it is released.
        unsafe { SCHEDULER.force_unlock() };
        if idle_wait(cpu_id, deadline.unwrap_or(u64::MAX)) {
            // The VMM looks a slice after the wait ended (asked with the wait: a `Preempt` after each wake-up was an
            // exit of its own, one per request of a server that idles between them); no later than now + a slice.
            LOOK_AT[cpu_id].store(time::since_boot_ns().saturating_add(SLICE_NS), Ordering::SeqCst);
        }
        // A signal from the host, a timer or the network may be what woke us.
        crate::syscalls::signal::poll_host_signals();
        crate::timers::fire_due();
        if net.is_some() || (net_wakes && crate::net::has_frames()) {
            crate::net::poll();
        }
        core::mem::forget(SCHEDULER.lock());
    }
}

/// What each live thread waits on, for a deadlock report: "thread 1 on futex 0x404a20, thread 2 on I/O".
fn waits(s: &Scheduler) -> alloc::string::String {
    use core::fmt::Write;
    let mut out = alloc::string::String::new();
    for t in s.threads.iter().filter(|t| t.state != State::Free) {
        let sep = if out.is_empty() { "" } else { ", " };
        let _ = match t.wait {
            Some(Wait::Object(_)) => write!(out, "{sep}thread {} on I/O", t.tid),
            Some(Wait::Futex { addr, .. }) => write!(out, "{sep}thread {} on futex {addr:#x}", t.tid),
            Some(Wait::PiFutex(addr)) => write!(out, "{sep}thread {} on PI futex {addr:#x}", t.tid),
            _ => write!(out, "{sep}thread {} waiting", t.tid),
        };
    }
    out
}

fn expire_deadlines(s: &mut Scheduler) {
    let now = time::since_boot_ns();
    while let Some(slot) = s.queues.expired(now) {
        s.unblock(slot, Woken::Deadline);
    }
}

/// How long a thread runs while others wait for a vCPU before it makes room for them (the order of Linux CFS's
/// slices). Without it, a thread spinning on a flag that a waiting thread must set would never let it run.
const SLICE_NS: u64 = kiln_abi::hypercall::TIME_SLICE_NS;
/// Per vCPU: when (ns since boot) the VMM was asked to interrupt it, `u64::MAX` for not at all; until it does (in the
/// program's code, see `crate::fault`), or forgets it because the vCPU waits.
static LOOK_AT: [AtomicU64; 64] = [const { AtomicU64::new(u64::MAX) }; 64];
/// Per vCPU: a time to ask the VMM for once the scheduler lock is released, `u64::MAX` for none.
static LOOK_WANTED: [AtomicU64; 64] = [const { AtomicU64::new(u64::MAX) }; 64];
static VCPUS: AtomicU64 = AtomicU64::new(1);

/// With the lock held, on a vCPU about to run a thread: when it must look at the scheduler and the clock again, if no
/// other vCPU is idle to do it (an idle vCPU waits until the earliest deadline): the end of the thread's slice if
/// others wait for a vCPU, a sleeper's deadline, a timer's expiry; but not before the end of a slice.
fn next_look(s: &Scheduler) -> Option<u64> {
    if s.idle & !(1 << percpu::id()) != 0 {
        return None;
    }
    let slice_end = time::since_boot_ns().saturating_add(SLICE_NS);
    let slice = s.queues.any_runnable().then_some(slice_end);
    let soonest = [slice, s.queues.next_deadline(), crate::timers::next_expiry()].into_iter().flatten().min()?;
    // Never sooner than a slice from now: a thread that blocks or yields meanwhile has the scheduler look anyway, so a
    // busy vCPU asks at most once a slice (sleepers and timers may be late by up to a slice then, as with a tick).
    (soonest != u64::MAX).then_some(soonest.max(slice_end))
}

/// Notes that this vCPU is to be interrupted at `at` (unless it already will be by then).
fn want_look(at: u64) {
    let me = percpu::id();
    if LOOK_AT[me].fetch_min(at, Ordering::SeqCst) > at {
        LOOK_WANTED[me].fetch_min(at, Ordering::SeqCst);
    }
}

/// Asks the VMM for what `want_look` noted (with the scheduler lock released: a hypercall is an exit).
fn ask_for_look() {
    let me = percpu::id();
    let at = LOOK_WANTED[me].swap(u64::MAX, Ordering::SeqCst);
    if at != u64::MAX {
        // At least 1 ns: 0 would mean "now, for a signal".
        let after = at.saturating_sub(time::since_boot_ns()).max(1);
        hypercall::call(kiln_abi::Hypercall::Preempt, &[1 << me, after]);
    }
}

/// With the lock held, a thread just queued: if no vCPU is idle to run it, the busy vCPUs whose slices do not end
/// sooner already (marked now; `end_slices` asks the VMM once the lock is released).
fn slices_to_end(s: &Scheduler) -> u64 {
    if s.idle & !(1 << percpu::id()) != 0 || !s.queues.any_runnable() {
        return 0;
    }
    let end = time::since_boot_ns().saturating_add(SLICE_NS);
    (0..VCPUS.load(Ordering::Relaxed) as usize)
        .filter(|&c| LOOK_AT[c].fetch_min(end, Ordering::SeqCst) > end)
        .fold(0, |mask, c| mask | 1 << c)
}

fn end_slices(cpus: u64) {
    if cpus != 0 {
        hypercall::call(kiln_abi::Hypercall::Preempt, &[cpus, SLICE_NS]);
    }
}

/// The VMM interrupted this vCPU in the program's code (`crate::fault`): for its thread's signals, or because it had
/// to look again, in which case it `renewed` the deadline a slice on. Sleepers whose time came wake, and if others
/// wait for a vCPU the thread makes room for them (it resumes later, as from `sched_yield`); then the next look is
/// asked for, or the renewed one replaced if it is not the one wanted.
pub fn interrupted(renewed: bool) {
    let me = percpu::id();
    let now = time::since_boot_ns();
    let at = LOOK_AT[me].load(Ordering::SeqCst);
    if renewed {
        LOOK_AT[me].store(now.saturating_add(SLICE_NS), Ordering::SeqCst);
    } else if at <= now {
        let _ = LOOK_AT[me].compare_exchange(at, u64::MAX, Ordering::SeqCst, Ordering::SeqCst);
    }
    crate::syscalls::signal::poll_host_signals();
    crate::timers::fire_due();
    // The thread was interrupted anywhere in its code, with live x87/SSE/AVX registers, which a switch does not keep
    // (at a syscall, the C calling convention leaves none live): they stay on its kernel stack meanwhile.
    let mut fpu = crate::fpu::Area::new();
    fpu.save();
    yield_now();
    fpu.restore();
    let s = SCHEDULER.lock();
    let want = next_look(&s);
    if let Some(at) = want {
        want_look(at);
    }
    // Under the lock: a thread queued meanwhile by another vCPU would have its slice end asked for after this.
    replace_unwanted_look(want);
    drop(s);
    ask_for_look();
}

/// Per vCPU: whether its last interruption found its deadline (renewed a slice on) not wanted.
static UNWANTED: [AtomicBool; 64] = [const { AtomicBool::new(false) }; 64];

/// With the lock held, after an interruption: this vCPU's deadline (renewed by the VMM a slice on) replaced by the
/// look wanted if that is none (no thread waits for a vCPU here) or much later (a sleeper's deadline) twice in a row,
/// so that the VMM does not interrupt the vCPU every slice for nothing. While threads wait, the renewal is the next
/// slice's end and nothing is asked; and a thread that only blocks for a moment (a server thread waiting for its
/// reply, a signal's sender) is often queued again before the renewal comes, which then serves it: replacing at once
/// would cost an exit there, on the way to the program, and another to ask for the slice again.
fn replace_unwanted_look(want: Option<u64>) {
    let me = percpu::id();
    let at = LOOK_AT[me].load(Ordering::SeqCst);
    let wanted = want.unwrap_or(u64::MAX);
    if at == u64::MAX || wanted <= at.saturating_add(SLICE_NS / 2) {
        UNWANTED[me].store(false, Ordering::SeqCst);
        return;
    }
    if !UNWANTED[me].swap(true, Ordering::SeqCst) {
        return;
    }
    UNWANTED[me].store(false, Ordering::SeqCst);
    LOOK_AT[me].store(wanted, Ordering::SeqCst);
    LOOK_WANTED[me].store(u64::MAX, Ordering::SeqCst);
    let after = match wanted {
        u64::MAX => kiln_abi::hypercall::WAIT_FOREVER,
        _ => wanted.saturating_sub(time::since_boot_ns()).max(1),
    };
    hypercall::call(kiln_abi::Hypercall::Preempt, &[1 << me, after, 1]);
}

/// A timer now expires at `at`: with no vCPU idle to wait for it, the VMM interrupts this one then (its thread may
/// compute without syscalls until then). `sooner` (than any timer did): an idle vCPU looks again at how long to wait
/// (other than this one: an idle vCPU waits for it itself).
pub fn timer_due_at(at: u64, sooner: bool) {
    let me = percpu::id();
    let mut s = SCHEDULER.lock();
    if s.idle & (1 << me) != 0 {
        return;
    }
    let idle = if sooner { take_idle(&mut s, 1) } else { 0 };
    if idle == 0 && s.idle & !(1 << me) == 0 {
        want_look(at.max(time::since_boot_ns().saturating_add(SLICE_NS)));
    }
    drop(s);
    kick(idle);
    ask_for_look();
}

/// Takes up to `count` idle vCPUs (other than this one) off the idle set, to be kicked once the lock is released.
fn take_idle(s: &mut Scheduler, count: usize) -> u64 {
    let mut picked = 0u64;
    let others = s.idle & !(1 << percpu::id());
    for cpu_id in 0..64 {
        if picked.count_ones() as usize == count {
            break;
        }
        if others & (1 << cpu_id) != 0 {
            picked |= 1 << cpu_id;
        }
    }
    s.idle &= !picked;
    picked
}

/// How long an idle vCPU spins, watching for work another vCPU hands it, before it parks in the VMM. A hand-over
/// within it costs no VM exit on either side (each costs 35-77 us on our hosts). Like KVM's halt polling, it trades a
/// little host CPU after each idle moment for latency; a VM with one vCPU never spins, as nothing could hand it work.
const IDLE_SPIN_NS: u64 = 50_000;
/// Per vCPU: spinning in `idle_wait` (a kick needs no hypercall), and kicked since it last looked.
static SPINNING: [AtomicBool; 64] = [const { AtomicBool::new(false) }; 64];
static KICKED: [AtomicBool; 64] = [const { AtomicBool::new(false) }; 64];
static SMP: AtomicBool = AtomicBool::new(false);

/// An idle vCPU waits for work or `deadline`: spinning a moment, then parked in the VMM. Returns whether it waited in
/// the VMM (rather than being kicked while it spun, or finding `deadline` passed): the VMM then interrupts it a slice
/// after the wait ended, unless it waits again first.
fn idle_wait(cpu_id: usize, deadline: u64) -> bool {
    if SMP.load(Ordering::Relaxed) {
        SPINNING[cpu_id].store(true, Ordering::SeqCst);
        let until = time::since_boot_ns().saturating_add(IDLE_SPIN_NS).min(deadline);
        while !KICKED[cpu_id].load(Ordering::SeqCst) && time::since_boot_ns() < until {
            core::hint::spin_loop();
        }
        // Stop spinning, then look: a kicker that saw us spinning set KICKED before it looked (see `kick`).
        SPINNING[cpu_id].store(false, Ordering::SeqCst);
        if KICKED[cpu_id].swap(false, Ordering::SeqCst) || time::since_boot_ns() >= deadline {
            return false;
        }
    }
    time::wait_then_look(deadline, SLICE_NS)
}

fn kick(cpus: u64) {
    for cpu_id in 0..64 {
        if cpus & (1 << cpu_id) != 0 {
            KICKED[cpu_id].store(true, Ordering::SeqCst);
            if !SPINNING[cpu_id].load(Ordering::SeqCst) {
                hypercall::call(kiln_abi::Hypercall::Kick, &[cpu_id as u64]);
            }
        }
    }
}
