//! Turns a dead vCPU into the crash report a user reads: which signal Linux would have sent and why. Our hosts do not
//! tell us the exception vector (see `arch/host.rs`), so the report is derived from the vCPU state: the instruction at
//! %rip is decoded and its memory operands are checked against the page tables.

use crate::memory::GuestRam;
use iced_x86::{Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, Register};
use kiln_abi::layout::{STACK_TOP, SYSCALL_TRAP_VADDR, TRAMPOLINE_SECOND_JUMP};
use kiln_abi::paging;
use kvm_bindings::{kvm_regs, kvm_sregs};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Sigill = 4,
    Sigtrap = 5,
    Sigbus = 7,
    Sigfpe = 8,
    Sigsegv = 11,
    Sigsys = 31,
}

impl Signal {
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
    /// Why, in a few words: "page fault writing 0x10".
    pub reason: String,
    pub rip: u64,
    pub rsp: u64,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}) at rip {:#x}", self.signal.name(), self.reason, self.rip)
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
    /// Addresses of the rewritten `syscall` instructions, sorted.
    pub syscall_sites: &'a [u64],
}

/// Whether the return address on top of the stack follows a rewritten `syscall` (2 bytes long, as is `call *%rax`).
fn called_from_syscall_site(ram: &GuestRam, layout: &GuestLayout, regs: &kvm_regs) -> bool {
    let Some(t) = paging::translate(&Ram(ram), layout.pml4, regs.rsp) else { return false };
    let Ok(ret) = ram.read_obj::<u64>(t.phys) else { return false };
    layout.syscall_sites.binary_search(&ret.wrapping_sub(2)).is_ok()
}

pub fn diagnose(ram: &GuestRam, layout: &GuestLayout, how: &str, regs: &kvm_regs, sregs: &kvm_sregs) -> CrashReport {
    let pml4 = layout.pml4;
    let report = |signal, reason: String, rip| CrashReport { signal, reason, rip, rsp: regs.rsp };
    // An unrewritten `syscall` ends at LSTAR (or runs the trap page there); %rcx holds the address after it.
    let at_trap = (SYSCALL_TRAP_VADDR..SYSCALL_TRAP_VADDR + 16).contains(&regs.rip);
    if how == "unrewritten syscall" || at_trap {
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
    let executable = paging::translate(&pt, pml4, regs.rip).is_some_and(|t| t.user);
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
        return report(Signal::Sigsegv, format!("page fault executing {:#x}", regs.rip), regs.rip);
    }
    let code = code_at(ram, pml4, regs.rip);
    let mut decoder = Decoder::with_ip(64, &code, regs.rip, DecoderOptions::NONE);
    let instr: Instruction = decoder.decode();
    if instr.is_invalid() {
        return report(Signal::Sigill, "invalid instruction".into(), regs.rip);
    }
    match instr.mnemonic() {
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => {
            return report(Signal::Sigill, "ud2: the program aborted".into(), regs.rip)
        }
        Mnemonic::Int3 => return report(Signal::Sigtrap, "breakpoint".into(), regs.rip),
        Mnemonic::Div | Mnemonic::Idiv => return report(Signal::Sigfpe, "integer divide error".into(), regs.rip),
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
        if !paging::is_lower_canonical(addr) && addr < 0xffff_8000_0000_0000 {
            return report(
                Signal::Sigsegv,
                format!("general protection fault: non-canonical address {addr:#x}"),
                regs.rip,
            );
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
                    );
                }
                // Just below the stack pointer, where a thread's stack meets its guard page.
                None if a < regs.rsp && regs.rsp - a <= STACK_NEAR => {
                    return report(
                        Signal::Sigsegv,
                        format!("stack overflow: page fault {verb} {a:#x}, just below the stack pointer"),
                        regs.rip,
                    );
                }
                None => return report(Signal::Sigsegv, format!("page fault {verb} {a:#x}"), regs.rip),
                Some(t) if !t.user => return report(Signal::Sigsegv, format!("page fault {verb} {a:#x}"), regs.rip),
                Some(t) if writes && !t.writable => {
                    return report(Signal::Sigsegv, format!("page fault writing {a:#x}"), regs.rip)
                }
                Some(_) => {}
            }
        }
    }
    if instr.mnemonic() == Mnemonic::Hlt || matches!(instr.mnemonic(), Mnemonic::Cli | Mnemonic::Sti | Mnemonic::In) {
        return report(Signal::Sigsegv, format!("privileged instruction {}", instr.mnemonic_str()), regs.rip);
    }
    report(
        Signal::Sigsegv,
        format!("general protection fault in {} ({how}; cr2 {:#x})", instr.mnemonic_str(), sregs.cr2),
        regs.rip,
    )
}

trait MnemonicStr {
    fn mnemonic_str(&self) -> String;
}

impl MnemonicStr for Instruction {
    fn mnemonic_str(&self) -> String {
        format!("{:?}", self.mnemonic()).to_lowercase()
    }
}
