//! The gdb remote stub (`kiln run --gdb ADDR`), on the `gdbstub` crate: one connection, all-stop. Threads are the
//! program's (`threads`), not vCPUs; memory goes through the guest's page tables (`memory`); breakpoints are `int3`s
//! the VMM writes into the program's code, kept in the [`Session`] so that reads show the program's bytes; a single
//! step is the trap flag on the vCPU running the thread. The VMM's vCPU loop (`vm.rs`) turns the traps into
//! [`StopEvent`]s; this side answers gdb.
//!
//! Code bytes are shown as they are in memory: a `syscall` the VMM rewrote reads as the `jmp` to its stub (or `call
//! *%rax`), which is what runs (docs/debugging.md).

use super::avx::{AvxRegs, X86_64Avx, YmmHigh};
use super::fpu;
use super::memory;
use super::session::{Resume, Session, StopEvent, INT3};
use super::stubs::StubReturns;
use super::threads::{self, GuestThread, RegsAt, ThreadState, VcpuView};
use crate::vm::Shared;
use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};
use gdbstub::target::ext::auxv::{Auxv, AuxvOps};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{Breakpoints, BreakpointsOps, SwBreakpoint, SwBreakpointOps};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::kvm_regs;
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the debugging session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// gdb detached or went away: the program runs on.
    Detached,
    /// gdb killed the program.
    Killed,
    /// The program ended (gdb was told).
    ProgramEnded,
}

#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    #[error("the gdb connection failed")]
    Connection(#[source] std::io::Error),
    #[error("the gdb session failed: {0}")]
    Protocol(String),
}

/// What gdb asked each thread to do at the next resume.
#[derive(Clone, Copy, Debug, Default)]
struct Action {
    step: bool,
    signal: bool,
}

pub(crate) struct KilnTarget {
    shared: Arc<Shared>,
    session: Arc<Session>,
    /// The vCPUs' states at the last stop.
    views: Vec<Option<VcpuView>>,
    /// The threads at the last stop (read once per stop).
    threads: Option<Vec<GuestThread>>,
    actions: BTreeMap<u32, Action>,
    /// gdb's scheduler locking for this resume: threads it did not name stay stopped.
    locked: bool,
    /// Registers gdb changed for threads on vCPUs, applied when they resume.
    vcpu_regs: BTreeMap<usize, kvm_regs>,
    vcpu_fpu: BTreeMap<usize, kvm_bindings::kvm_fpu>,
    vcpu_ymmh: BTreeMap<usize, YmmHigh>,
    stubs: StubReturns,
}

impl KilnTarget {
    fn new(shared: Arc<Shared>, session: Arc<Session>, stubs: StubReturns) -> Self {
        Self {
            shared,
            session,
            views: Vec::new(),
            threads: None,
            actions: BTreeMap::new(),
            locked: false,
            vcpu_regs: BTreeMap::new(),
            vcpu_fpu: BTreeMap::new(),
            vcpu_ymmh: BTreeMap::new(),
            stubs,
        }
    }

    /// Stops every vCPU and waits until none runs guest code.
    fn stop_all(&mut self) {
        let shared = &self.shared;
        self.session.interrupt(|i| shared.kicks.kick(i));
        self.views = self.session.wait_stopped(|i| shared.parkers[i].is_parked());
        self.threads = None;
    }

    fn threads(&mut self) -> &[GuestThread] {
        if self.threads.is_none() {
            let listed = threads::list(&self.shared.ram, self.shared.threads_phys, &self.views, &self.stubs);
            self.threads = Some(listed.unwrap_or_else(|e| {
                tracing::debug!("gdb: no threads to show: {e}");
                Vec::new()
            }));
        }
        self.threads.as_deref().unwrap_or_default()
    }

    fn thread(&mut self, tid: Tid) -> Option<GuestThread> {
        self.threads().iter().find(|t| t.tid as usize == tid.get()).cloned()
    }

    /// The thread running on `vcpu`, else the first one (gdb needs a thread to name in every stop).
    fn tid_on(&mut self, vcpu: usize) -> Tid {
        let threads = self.threads();
        let on = threads.iter().find(|t| t.state == ThreadState::Running { vcpu });
        let tid = on.or(threads.first()).map_or(1, |t| t.tid as usize);
        NonZeroUsize::new(tid).unwrap_or(NonZeroUsize::MIN)
    }

    fn stop_reason(&mut self, event: StopEvent) -> MultiThreadStopReason<u64> {
        match event {
            StopEvent::Exited(code) => MultiThreadStopReason::Exited(code as u8),
            StopEvent::Killed(signal) => MultiThreadStopReason::Terminated(Signal(signal)),
            StopEvent::Breakpoint { vcpu, .. } => MultiThreadStopReason::SwBreak(self.tid_on(vcpu)),
            StopEvent::Step { vcpu } | StopEvent::Started { vcpu } => {
                MultiThreadStopReason::SignalWithThread { tid: self.tid_on(vcpu), signal: Signal::SIGTRAP }
            }
            StopEvent::Signal { vcpu, signal } => {
                MultiThreadStopReason::SignalWithThread { tid: self.tid_on(vcpu), signal: Signal(signal) }
            }
        }
    }

    /// The x87/SSE registers of a thread running the program's code on a vCPU (with gdb's changes).
    fn fpu_of(&self, t: &GuestThread) -> Option<kvm_bindings::kvm_fpu> {
        let RegsAt::Vcpu(v) = t.regs_at else { return None };
        self.vcpu_fpu.get(&v).copied().or_else(|| self.views.get(v).copied().flatten()?.fpu)
    }

    /// The upper halves of the AVX registers of a thread running the program's code on a vCPU (with gdb's changes).
    fn ymmh_of(&self, t: &GuestThread) -> Option<YmmHigh> {
        let RegsAt::Vcpu(v) = t.regs_at else { return None };
        self.vcpu_ymmh.get(&v).copied().or_else(|| self.views.get(v).copied().flatten()?.ymmh)
    }

    /// Puts the program's bytes back under every breakpoint (gdb is leaving).
    fn remove_breakpoints(&mut self) {
        for (addr, original) in self.session.breakpoints() {
            if self.session.remove_breakpoint(addr).is_some() {
                memory::write(&self.shared.ram, self.shared.pml4, addr, &[original]);
            }
        }
    }
}

fn to_gdb(r: &kvm_regs) -> X86_64CoreRegs {
    let mut regs = X86_64CoreRegs {
        regs: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ],
        eflags: r.rflags as u32,
        rip: r.rip,
        ..Default::default()
    };
    // The selectors a Linux process sees (the program's are Kiln's own GDT's, which mean nothing to gdb).
    regs.segments.cs = 0x33;
    regs.segments.ss = 0x2b;
    regs.fpu.fctrl = 0x37f;
    regs.mxcsr = 0x1f80;
    regs
}

fn from_gdb(g: &X86_64CoreRegs, old: &kvm_regs) -> kvm_regs {
    let r = &g.regs;
    kvm_regs {
        rax: r[0],
        rbx: r[1],
        rcx: r[2],
        rdx: r[3],
        rsi: r[4],
        rdi: r[5],
        rbp: r[6],
        rsp: r[7],
        r8: r[8],
        r9: r[9],
        r10: r[10],
        r11: r[11],
        r12: r[12],
        r13: r[13],
        r14: r[14],
        r15: r[15],
        rip: g.rip,
        // The upper half of RFLAGS is reserved (zero); the VMM's trap flag is not gdb's to set here.
        rflags: (old.rflags & !0xffff_ffff) | u64::from(g.eflags),
    }
}

type Error = String;

impl Target for KilnTarget {
    type Arch = X86_64Avx;
    type Error = Error;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_auxv(&mut self) -> Option<AuxvOps<'_, Self>> {
        Some(self)
    }
}

/// The program's auxiliary vector, as Linux's gdbserver gives it: gdb finds a PIE's load address there (AT_ENTRY,
/// AT_PHDR), its loader (AT_BASE), and through the program's `DT_DEBUG` the loader's list of shared objects.
impl Auxv for KilnTarget {
    fn get_auxv(&self, offset: u64, length: usize, buf: &mut [u8]) -> TargetResult<usize, Self> {
        let auxv = &self.shared.auxv;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(auxv.len());
        let n = length.min(buf.len()).min(auxv.len() - start);
        buf[..n].copy_from_slice(&auxv[start..start + n]);
        Ok(n)
    }
}

impl MultiThreadBase for KilnTarget {
    fn read_registers(&mut self, regs: &mut AvxRegs, tid: Tid) -> TargetResult<(), Self> {
        let t = self.thread(tid).ok_or(TargetError::NonFatal)?;
        let live = match t.regs_at {
            RegsAt::Vcpu(v) => self.vcpu_regs.get(&v).copied(),
            RegsAt::Frame(_) => None,
        };
        regs.core = to_gdb(&live.unwrap_or(t.regs));
        if let Some(state) = self.fpu_of(&t) {
            fpu::to_gdb(&state, &mut regs.core);
        }
        // Like the x87/SSE registers, none of the program's in the library OS (they read as zero).
        regs.ymmh = self.ymmh_of(&t).unwrap_or_default();
        Ok(())
    }

    fn write_registers(&mut self, all: &AvxRegs, tid: Tid) -> TargetResult<(), Self> {
        let t = self.thread(tid).ok_or(TargetError::NonFatal)?;
        let regs = &all.core;
        let new = from_gdb(regs, &t.regs);
        match t.regs_at {
            RegsAt::Vcpu(v) => {
                self.vcpu_regs.insert(v, new);
                if let Some(old) = self.fpu_of(&t) {
                    let changed = fpu::from_gdb(regs, &old);
                    if changed != old {
                        self.vcpu_fpu.insert(v, changed);
                    }
                }
                // Only where the vCPU has them (its XCR0 enables AVX: the upper halves it read were in use, or
                // the guest's CPU has AVX at all); gdb writes back what it read for the others.
                if let Some(old) = self.ymmh_of(&t) {
                    if all.ymmh != old {
                        self.vcpu_ymmh.insert(v, all.ymmh);
                    }
                }
            }
            RegsAt::Frame(phys) => {
                let ram = &self.shared.ram;
                let frame = threads::read_frame(ram, phys).map_err(|_| TargetError::NonFatal)?;
                // Shown in the program's code, it still resumes in its stub unless gdb moved it.
                let mut new = new;
                let raw = threads::frame_regs(&frame);
                if new.rip == t.regs.rip && raw.rip != t.regs.rip {
                    new.rip = raw.rip;
                    new.rsp = new.rsp.wrapping_sub(t.regs.rsp.wrapping_sub(raw.rsp));
                }
                threads::write_frame(ram, phys, &threads::with_regs(&frame, &new))
                    .map_err(|_| TargetError::NonFatal)?;
            }
        }
        self.threads = None;
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], _tid: Tid) -> TargetResult<usize, Self> {
        let n = memory::read(&self.shared.ram, self.shared.pml4, start, data);
        if n == 0 && !data.is_empty() {
            return Err(TargetError::Errno(14));
        }
        self.session.unpatch(start, &mut data[..n]);
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], _tid: Tid) -> TargetResult<(), Self> {
        let mut bytes = data.to_vec();
        self.session.patch(start, &mut bytes);
        match memory::write(&self.shared.ram, self.shared.pml4, start, &bytes) {
            n if n == bytes.len() => Ok(()),
            _ => Err(TargetError::Errno(14)),
        }
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for t in self.threads() {
            if let Some(tid) = NonZeroUsize::new(t.tid as usize) {
                thread_is_active(tid);
            }
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for KilnTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        let vcpus = self.shared.parkers.len();
        // With scheduler locking, a vCPU whose thread gdb did not name stays held (a vCPU running none, idle in the
        // library OS, runs on: it may pick up a thread that became runnable, which is as close as Kiln gets).
        let mut resume = vec![Resume::default(); vcpus];
        let threads = self.threads().to_vec();
        for t in &threads {
            let named = self.actions.get(&t.tid).copied();
            let action = named.unwrap_or_default();
            match t.regs_at {
                RegsAt::Vcpu(v) if v < vcpus => {
                    let stay = self.locked && named.is_none();
                    let (step, deliver) = (action.step, action.signal);
                    resume[v] = Resume { regs: None, fpu: None, ymmh: None, step, deliver, stay };
                }
                // A thread outside the program's code resumes when the library OS returns to it; a step then is
                // not supported yet: it continues (docs/debugging.md).
                _ if action.step => tracing::debug!(tid = t.tid, "gdb: a step of a thread in the library OS continues"),
                _ => {}
            }
        }
        // The thread that faulted is on its vCPU even if it stopped in the library OS's view: deliver by vCPU.
        for (v, r) in resume.iter_mut().enumerate().filter(|(_, r)| !r.stay) {
            if let Some(regs) = self.vcpu_regs.remove(&v) {
                r.regs = Some(regs);
            }
            r.fpu = self.vcpu_fpu.remove(&v);
            r.ymmh = self.vcpu_ymmh.remove(&v);
            if !threads.iter().any(|t| t.regs_at == RegsAt::Vcpu(v)) {
                // No thread of the program on it: a fault there (none expected) goes on as gdb's default says.
                r.deliver = true;
            }
        }
        self.actions.clear();
        self.locked = false;
        self.threads = None;
        self.session.resume(resume);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.actions.clear();
        self.locked = false;
        Ok(())
    }

    fn set_resume_action_continue(&mut self, tid: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        self.actions.insert(tid.get() as u32, Action { step: false, signal: signal.is_some() });
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for KilnTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl MultiThreadSingleStep for KilnTarget {
    fn set_resume_action_step(&mut self, tid: Tid, signal: Option<Signal>) -> Result<(), Self::Error> {
        self.actions.insert(tid.get() as u32, Action { step: true, signal: signal.is_some() });
        Ok(())
    }
}

impl Breakpoints for KilnTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for KilnTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let (ram, pml4) = (&self.shared.ram, self.shared.pml4);
        let mut original = [0u8];
        if memory::read(ram, pml4, addr, &mut original) != 1 {
            return Ok(false);
        }
        if self.session.add_breakpoint(addr, original[0]) && memory::write(ram, pml4, addr, &[INT3]) != 1 {
            self.session.remove_breakpoint(addr);
            return Ok(false);
        }
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        match self.session.remove_breakpoint(addr) {
            Some(original) => Ok(memory::write(&self.shared.ram, self.shared.pml4, addr, &[original]) == 1),
            None => Ok(false),
        }
    }
}

impl ThreadExtraInfo for KilnTarget {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let Some(t) = self.threads.as_deref().unwrap_or_default().iter().find(|t| t.tid as usize == tid.get()) else {
            return Ok(0);
        };
        let state = match t.state {
            ThreadState::Running { vcpu } => format!("running on vCPU {vcpu}"),
            ThreadState::Runnable => "runnable".into(),
            ThreadState::Blocked => "blocked".into(),
        };
        let info = if t.name.is_empty() { state } else { format!("{}, {state}", t.name) };
        let n = info.len().min(buf.len());
        buf[..n].copy_from_slice(&info.as_bytes()[..n]);
        Ok(n)
    }
}

struct EventLoop;

/// How often the stub looks for a byte from gdb (a Ctrl-C) while the program runs.
const POLL: Duration = Duration::from_millis(20);

impl BlockingEventLoop for EventLoop {
    type Target = KilnTarget;
    type Connection = TcpStream;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut KilnTarget,
        conn: &mut TcpStream,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<Error, std::io::Error>> {
        loop {
            if let Some(event) = target.session.next_event(Instant::now() + POLL) {
                if !matches!(event, StopEvent::Exited(_) | StopEvent::Killed(_)) {
                    target.stop_all();
                }
                return Ok(Event::TargetStopped(target.stop_reason(event)));
            }
            if conn.peek().map_err(WaitForStopReasonError::Connection)?.is_some() {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
        }
    }

    fn on_interrupt(target: &mut KilnTarget) -> Result<Option<Self::StopReason>, Error> {
        target.stop_all();
        let tid = target.tid_on(0);
        Ok(Some(MultiThreadStopReason::SignalWithThread { tid, signal: Signal::SIGINT }))
    }
}

/// Serves gdb on `conn` until it detaches, kills the program or the program ends. The VM is stopped first (at its
/// first instruction with `wait_for_start`, else wherever it is).
pub(crate) fn serve(
    shared: Arc<Shared>,
    session: Arc<Session>,
    conn: TcpStream,
    wait_for_start: bool,
    stubs: StubReturns,
) -> Result<Ended, GdbError> {
    let _ = conn.set_nodelay(true);
    let mut target = KilnTarget::new(shared, session, stubs);
    // The first stop: the program's first instruction (or, attaching to a running VM, wherever it is now).
    if wait_for_start {
        loop {
            match target.session.next_event(Instant::now() + POLL) {
                Some(StopEvent::Exited(_) | StopEvent::Killed(_)) => return Ok(Ended::ProgramEnded),
                Some(_) => break,
                None => {}
            }
        }
    }
    target.stop_all();
    let result = GdbStub::new(conn).run_blocking::<EventLoop>(&mut target);
    let ended = match result {
        Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => Ended::ProgramEnded,
        Ok(DisconnectReason::Kill) => Ended::Killed,
        Ok(DisconnectReason::Disconnect) => Ended::Detached,
        Err(e) if e.is_connection_error() => Ended::Detached,
        Err(e) => {
            // The program must not stay stopped, nor meet the breakpoints' `int3`s, once nobody serves them.
            target.remove_breakpoints();
            target.session.detach();
            return Err(GdbError::Protocol(e.to_string()));
        }
    };
    if ended == Ended::Detached {
        target.remove_breakpoints();
    }
    target.session.detach();
    Ok(ended)
}

/// Accepts one gdb connection on `listener`.
pub fn accept(listener: &std::net::TcpListener) -> Result<TcpStream, GdbError> {
    listener.accept().map(|(conn, _)| conn).map_err(GdbError::Connection)
}
