//! Turns a faulted vCPU into what Linux would have sent: which signal, why, `si_code` and `si_addr`. Our hosts do not
//! tell us the exception vector (see `arch/host.rs`), so it is derived from the vCPU state: the instruction at %rip is
//! decoded and its memory operands are checked against the page tables. The result goes to a handler of the
//! program's if it has one (as a [`FaultRecord`]), else it is the crash report the user reads.

use crate::memory::GuestRam;
use iced_x86::{Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, Register};
use kiln_abi::hypercall::{FaultRecord, FaultRegs};
use kiln_abi::layout::{STACK_TOP, SYSCALL_TRAP_VADDR, TRAMPOLINE_SECOND_JUMP};
use kiln_abi::paging;
use kvm_bindings::{kvm_regs, kvm_sregs};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Sigquit = 3,
    Sigill = 4,
    Sigtrap = 5,
    Sigabrt = 6,
    Sigbus = 7,
    Sigfpe = 8,
    Sigsegv = 11,
    Sigxcpu = 24,
    Sigxfsz = 25,
    Sigsys = 31,
}

impl Signal {
    /// The signals whose default action dumps core, by number.
    pub fn dumping_core(number: u64) -> Option<Self> {
        use Signal::*;
        [Sigquit, Sigill, Sigtrap, Sigabrt, Sigbus, Sigfpe, Sigsegv, Sigxcpu, Sigxfsz, Sigsys]
            .into_iter()
            .find(|&s| s as u64 == number)
    }

    pub fn name(self) -> String {
        crate::signal::signal_name(self as u32)
    }

    /// The exit status a shell reports for a process killed by this signal.
    pub fn exit_code(self) -> i32 {
        128 + self as i32
    }
}

#[derive(Clone, Debug)]
pub struct CrashReport {
    pub signal: Signal,
    /// Why, in a few words: "page fault writing 0x10"; empty for a signal the program raised (`abort()`).
    pub reason: String,
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// Every general register of the crashed thread, `rip` included (for a core file).
    pub regs: FaultRegs,
    /// The shared objects the program's dynamic loader had mapped (the program first), with their files: filled
    /// with the stack.
    pub objects: Vec<crate::link_map::LoadedObject>,
    /// The core file written (its path and length), or why none could be; None when none was asked for.
    pub core_file: Option<Result<(std::path::PathBuf, u64), String>>,
    /// The crashed thread's stack, for a backtrace: filled when the report becomes the VM's outcome (a fault a
    /// handler of the program's takes needs none).
    pub stack: Option<crate::crash_stack::CrashStack>,
    /// What a handler of the program's would be told; None for what no handler may see (SIGSYS from Kiln's
    /// trampoline).
    pub fault: Option<FaultInfo>,
}

/// A fault as Linux describes it to a signal handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultInfo {
    /// `si_code`.
    pub code: i64,
    /// `si_addr`.
    pub addr: u64,
    /// The exception vector and error code (`ucontext`'s `trapno` and `err`).
    pub trapno: u64,
    pub error: u64,
    /// Where the program resumes if the handler returns: the faulting instruction, or the one after a breakpoint.
    pub resume_rip: u64,
}

const SEGV_MAPERR: i64 = 1;
const SEGV_ACCERR: i64 = 2;
const ILL_ILLOPC: i64 = 1;
const ILL_ILLOPN: i64 = 2;
const FPE_INTDIV: i64 = 1;
const SI_KERNEL: i64 = 0x80;
const TRAP_DIVIDE: u64 = 0;
const TRAP_BREAKPOINT: u64 = 3;
const TRAP_INVALID_OPCODE: u64 = 6;
const TRAP_GENERAL_PROTECTION: u64 = 13;
const TRAP_PAGE_FAULT: u64 = 14;
/// Page-fault error code bits.
const PF_PRESENT: u64 = 1;
const PF_WRITE: u64 = 2;
const PF_USER: u64 = 4;
const PF_FETCH: u64 = 16;

impl CrashReport {
    fn with_fault(mut self, code: i64, addr: u64, trapno: u64, error: u64) -> Self {
        self.fault = Some(FaultInfo { code, addr, trapno, error, resume_rip: self.rip });
        self
    }

    fn resuming_at(mut self, rip: u64) -> Self {
        if let Some(f) = &mut self.fault {
            f.resume_rip = rip;
        }
        self
    }

    /// A page fault at `addr`: SEGV_ACCERR where a page is mapped but does not allow the access.
    fn page_fault(self, addr: u64, present: bool, error: u64) -> Self {
        let code = if present { SEGV_ACCERR } else { SEGV_MAPERR };
        let present_bit = if present { PF_PRESENT } else { 0 };
        self.with_fault(code, addr, TRAP_PAGE_FAULT, error | present_bit | PF_USER)
    }
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason.is_empty() {
            true => write!(f, "{} at rip {:#x}", self.signal.name(), self.rip),
            false => write!(f, "{} ({}) at rip {:#x}", self.signal.name(), self.reason, self.rip),
        }
    }
}

struct Ram<'a>(&'a GuestRam);

impl paging::PhysMemory for Ram<'_> {
    fn read_u64(&self, phys: u64) -> u64 {
        // A page-table pointer outside RAM reads as "not present".
        self.0.read_obj(phys).unwrap_or(0)
    }
    fn write_u64(&mut self, _: u64, _: u64) {}
}

fn register_value(regs: &kvm_regs, sregs: &kvm_sregs, reg: Register) -> Option<u64> {
    use Register::*;
    Some(match reg.full_register() {
        RAX => regs.rax,
        RBX => regs.rbx,
        RCX => regs.rcx,
        RDX => regs.rdx,
        RSI => regs.rsi,
        RDI => regs.rdi,
        RBP => regs.rbp,
        RSP => regs.rsp,
        R8 => regs.r8,
        R9 => regs.r9,
        R10 => regs.r10,
        R11 => regs.r11,
        R12 => regs.r12,
        R13 => regs.r13,
        R14 => regs.r14,
        R15 => regs.r15,
        RIP => regs.rip,
        FS => sregs.fs.base,
        GS => sregs.gs.base,
        ES | CS | SS | DS => 0,
        _ => return Option::None,
    })
}

/// The 64-bit word at guest-virtual `vaddr` through the page tables at `pml4`, if it is mapped and in RAM.
pub fn read_u64_at(ram: &GuestRam, pml4: u64, vaddr: u64) -> Option<u64> {
    let t = paging::translate(&Ram(ram), pml4, vaddr).filter(|t| t.bytes_left_in_page >= 8)?;
    ram.read_obj(t.phys).ok()
}

/// Reads up to 15 instruction bytes at `rip`, stopping where the mapping ends.
fn code_at(ram: &GuestRam, pml4: u64, rip: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < 15 {
        let Some(t) = paging::translate(&Ram(ram), pml4, rip + bytes.len() as u64) else { break };
        let n = t.bytes_left_in_page.min(15 - bytes.len() as u64);
        match ram.read_vec(t.phys, n) {
            Ok(b) => bytes.extend(b),
            Err(_) => break,
        }
    }
    bytes
}

/// How far below the main thread's stack a fault still counts as running off its end.
const STACK_GUARD: u64 = 1 << 20;
/// How far below the stack pointer an unmapped access counts as a thread's stack overflow (a push, a call, a frame).
const STACK_NEAR: u64 = 64 << 10;

/// What the VMM knows about the guest that helps explain a fault.
pub struct GuestLayout<'a> {
    pub pml4: u64,
    /// Lowest address of the main thread's stack.
    pub stack_bottom: u64,
    /// Addresses of the `syscall` instructions rewritten in place into `call *%rax`, sorted: only these reach page 0.
    pub syscall_sites: &'a [u64],
}

/// Whether the return address on top of the stack follows a `syscall` rewritten in place (2 bytes long, as is
/// `call *%rax`). Relocated sites call the library OS's entry directly, which answers any number.
fn called_from_syscall_site(ram: &GuestRam, layout: &GuestLayout, regs: &kvm_regs) -> bool {
    let Some(t) = paging::translate(&Ram(ram), layout.pml4, regs.rsp) else { return false };
    let Ok(ret) = ram.read_obj::<u64>(t.phys) else { return false };
    layout.syscall_sites.binary_search(&ret.wrapping_sub(2)).is_ok()
}

pub fn diagnose(ram: &GuestRam, layout: &GuestLayout, how: &str, regs: &kvm_regs, sregs: &kvm_sregs) -> CrashReport {
    let pml4 = layout.pml4;
    let report = |signal, reason: String, rip| CrashReport {
        signal,
        reason,
        rip,
        rsp: regs.rsp,
        rbp: regs.rbp,
        regs: FaultRegs { rip, ..registers(regs) },
        objects: Vec::new(),
        core_file: None,
        stack: None,
        fault: None,
    };
    // On kvm_pvm an unrewritten `syscall` ends at LSTAR; %rcx holds the address after it. (On hardware KVM the code
    // there hands it to the library OS.)
    if regs.rip == SYSCALL_TRAP_VADDR {
        let site = regs.rcx.wrapping_sub(2);
        return report(
            Signal::Sigsys,
            format!(
                "a syscall instruction at {site:#x} was not rewritten: code made at run time, or missed by the decoder"
            ),
            site,
        );
    }
    let pt = Ram(ram);
    let fetched = paging::translate(&pt, pml4, regs.rip);
    let executable = fetched.is_some_and(|t| t.user);
    if !executable && called_from_syscall_site(ram, layout, regs) {
        // `call *%rax` with a number past the trampoline page: Linux would answer -ENOSYS.
        return report(
            Signal::Sigsys,
            format!(
                "syscall number {:#x} is outside what Kiln can dispatch (below {TRAMPOLINE_SECOND_JUMP:#x})",
                regs.rax
            ),
            regs.rip,
        );
    }
    if !executable {
        return report(Signal::Sigsegv, format!("page fault executing {:#x}", regs.rip), regs.rip).page_fault(
            regs.rip,
            fetched.is_some(),
            PF_FETCH,
        );
    }
    let code = code_at(ram, pml4, regs.rip);
    let mut decoder = Decoder::with_ip(64, &code, regs.rip, DecoderOptions::NONE);
    let instr: Instruction = decoder.decode();
    if instr.is_invalid() {
        let r = report(Signal::Sigill, "invalid instruction".into(), regs.rip);
        return r.with_fault(ILL_ILLOPC, regs.rip, TRAP_INVALID_OPCODE, 0);
    }
    match instr.mnemonic() {
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => {
            let r = report(Signal::Sigill, "ud2: the program aborted".into(), regs.rip);
            return r.with_fault(ILL_ILLOPN, regs.rip, TRAP_INVALID_OPCODE, 0);
        }
        Mnemonic::Int3 => {
            // A trap, not a fault: the program resumes after the instruction.
            let r = report(Signal::Sigtrap, "breakpoint".into(), regs.rip);
            return r.with_fault(SI_KERNEL, 0, TRAP_BREAKPOINT, 0).resuming_at(instr.next_ip());
        }
        Mnemonic::Div | Mnemonic::Idiv => {
            let r = report(Signal::Sigfpe, "integer divide error".into(), regs.rip);
            return r.with_fault(FPE_INTDIV, regs.rip, TRAP_DIVIDE, 0);
        }
        _ => {}
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instr);
    for mem in info.used_memory() {
        let Some(addr) = mem.virtual_address(0, |reg, _, _| register_value(regs, sregs, reg)) else { continue };
        let writes = matches!(
            mem.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        let verb = if writes { "writing" } else { "reading" };
        let error = if writes { PF_WRITE } else { 0 };
        if !paging::is_lower_canonical(addr) && addr < 0xffff_8000_0000_0000 {
            return report(
                Signal::Sigsegv,
                format!("general protection fault: non-canonical address {addr:#x}"),
                regs.rip,
            )
            .with_fault(SI_KERNEL, 0, TRAP_GENERAL_PROTECTION, 0);
        }
        let end = addr.saturating_add(u64::from(mem.memory_size().size().max(1) as u32) - 1);
        for a in [addr, end] {
            match paging::translate(&pt, pml4, a) {
                None if (layout.stack_bottom.saturating_sub(STACK_GUARD)..layout.stack_bottom).contains(&a) => {
                    let size = STACK_TOP - layout.stack_bottom;
                    return report(
                        Signal::Sigsegv,
                        format!("stack overflow: page fault {verb} {a:#x}, below the {} KiB main stack", size >> 10),
                        regs.rip,
                    )
                    .page_fault(a, false, error);
                }
                // Just below the stack pointer, where a thread's stack meets its guard page.
                None if a < regs.rsp && regs.rsp - a <= STACK_NEAR => {
                    return report(
                        Signal::Sigsegv,
                        format!("stack overflow: page fault {verb} {a:#x}, just below the stack pointer"),
                        regs.rip,
                    )
                    .page_fault(a, false, error);
                }
                None => {
                    let r = report(Signal::Sigsegv, format!("page fault {verb} {a:#x}"), regs.rip);
                    return r.page_fault(a, false, error);
                }
                Some(t) if !t.user => {
                    let r = report(Signal::Sigsegv, format!("page fault {verb} {a:#x}"), regs.rip);
                    return r.page_fault(a, true, error);
                }
                Some(t) if writes && !t.writable => {
                    let r = report(Signal::Sigsegv, format!("page fault writing {a:#x}"), regs.rip);
                    return r.page_fault(a, true, error);
                }
                Some(_) => {}
            }
        }
    }
    if instr.mnemonic() == Mnemonic::Hlt || matches!(instr.mnemonic(), Mnemonic::Cli | Mnemonic::Sti | Mnemonic::In) {
        let r = report(Signal::Sigsegv, format!("privileged instruction {}", instr.mnemonic_str()), regs.rip);
        return r.with_fault(SI_KERNEL, 0, TRAP_GENERAL_PROTECTION, 0);
    }
    // Nothing at %rip faults: a trap ended the instruction before it, and `int3` is the one a program uses.
    let before = regs.rip.checked_sub(1).map(|at| code_at(ram, pml4, at));
    if before.is_some_and(|code| code.first() == Some(&INT3)) {
        let r = report(Signal::Sigtrap, "breakpoint".into(), regs.rip - 1);
        return r.with_fault(SI_KERNEL, 0, TRAP_BREAKPOINT, 0).resuming_at(regs.rip);
    }
    report(
        Signal::Sigsegv,
        format!("general protection fault in {} ({how}; cr2 {:#x})", instr.mnemonic_str(), sregs.cr2),
        regs.rip,
    )
    .with_fault(SI_KERNEL, 0, TRAP_GENERAL_PROTECTION, 0)
}

const INT3: u8 = 0xcc;

/// A breakpoint trap the CPU reported as such (hardware KVM): %rip is already past the `int3`.
pub fn breakpoint(regs: &kvm_regs) -> CrashReport {
    let at = regs.rip.wrapping_sub(1);
    let reason = "breakpoint".into();
    let report = CrashReport {
        signal: Signal::Sigtrap,
        reason,
        rip: at,
        rsp: regs.rsp,
        rbp: regs.rbp,
        regs: FaultRegs { rip: at, ..registers(regs) },
        objects: Vec::new(),
        core_file: None,
        stack: None,
        fault: None,
    };
    report.with_fault(SI_KERNEL, 0, TRAP_BREAKPOINT, 0).resuming_at(regs.rip)
}

/// The record the library OS's `kiln_fault_entry` reads: the fault and the registers it happened with.
pub fn record(signal: Signal, fault: &FaultInfo, regs: &kvm_regs) -> FaultRecord {
    FaultRecord {
        signal: signal as u64,
        code: fault.code,
        addr: fault.addr,
        trapno: fault.trapno,
        error: fault.error,
        regs: FaultRegs { rip: fault.resume_rip, ..registers(regs) },
    }
}

/// The crash report of a signal that dumps core, which the program raised (`abort()`) or took, from the library OS's
/// `record` of it (see `Hypercall::Exit`); None for a signal that does not dump core.
pub fn raised(record: &FaultRecord) -> Option<CrashReport> {
    let r = record.regs;
    let signal = Signal::dumping_core(record.signal)?;
    Some(CrashReport {
        signal,
        reason: String::new(),
        rip: r.rip,
        rsp: r.rsp,
        rbp: r.rbp,
        regs: r,
        objects: Vec::new(),
        core_file: None,
        stack: None,
        fault: None,
    })
}

/// The vCPU's general registers, as a [`FaultRecord`] holds them.
pub fn registers(r: &kvm_regs) -> FaultRegs {
    FaultRegs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rbp: r.rbp,
        rsp: r.rsp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

trait MnemonicStr {
    fn mnemonic_str(&self) -> String;
}

impl MnemonicStr for Instruction {
    fn mnemonic_str(&self) -> String {
        format!("{:?}", self.mnemonic()).to_lowercase()
    }
}
