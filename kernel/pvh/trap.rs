//! Exceptions, all of which come here at CPL 0 on the platform's stack (the TSS's RSP0): the library OS's hypercalls
//! (an `out` to the hypercall port, closed in the I/O bitmap, is a #GP), and the program's faults, which go to the
//! library OS's `kiln_fault_entry` with a `FaultRecord` as Kiln's VMM sends them (the signal from the vector and the
//! error code: this layer decodes no instructions, so a fault report names less than the VMM's).

use crate::cpus::{self, MAX_CPUS};
use crate::{apic, hypercall, power, serial, timer, Shared};
use core::arch::naked_asm;
use core::cell::UnsafeCell;
use kiln_abi::hypercall::{FaultRecord, FaultRegs, FAULT_RECORD_OFFSET, HYPERCALL_PORT};
use kiln_abi::hypercall::{INTERRUPTED, RENEWED};

/// The exceptions, and the interrupts up to the APIC's spurious vector (`apic.rs`).
const VECTORS: usize = apic::SPURIOUS_VECTOR as usize + 1;
const STUB_SIZE: usize = 16;
const SIGTRAP: u64 = 5;
const SIGILL: u64 = 4;
const SIGBUS: u64 = 7;
const SIGFPE: u64 = 8;
const SIGSEGV: u64 = 11;
const SI_KERNEL: i64 = 0x80;

/// The registers a stub saves, lowest address first, then what the CPU pushed.
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

macro_rules! stub {
    (error $v:literal) => {
        concat!(".balign 16\n push ", $v, "\n jmp {common}\n")
    };
    ($v:literal) => {
        concat!(".balign 16\n push 0\n push ", $v, "\n jmp {common}\n")
    };
}

/// [`VECTORS`] stubs of [`STUB_SIZE`] bytes each: push the vector (and a 0 where the CPU pushes no error code).
#[unsafe(naked)]
extern "C" fn stubs() {
    naked_asm!(
        stub!(0), stub!(1), stub!(2), stub!(3), stub!(4), stub!(5), stub!(6), stub!(7),
        stub!(error 8), stub!(9), stub!(error 10), stub!(error 11), stub!(error 12), stub!(error 13),
        stub!(error 14), stub!(15), stub!(16), stub!(error 17), stub!(18), stub!(19), stub!(20), stub!(error 21),
        stub!(22), stub!(23), stub!(24), stub!(25), stub!(26), stub!(27), stub!(28), stub!(error 29),
        stub!(error 30), stub!(31),
        stub!(32), stub!(33), stub!(34), stub!(35), stub!(36), stub!(37), stub!(38), stub!(39),
        stub!(40), stub!(41), stub!(42), stub!(43), stub!(44), stub!(45), stub!(46), stub!(47),
        common = sym common,
    );
}

#[unsafe(naked)]
extern "C" fn common() {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "cld",
        "mov rdi, rsp",
        "call {trap}",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "add rsp, 16",
        "iretq",
        trap = sym trap,
    );
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[[u64; 2]; VECTORS]>);
// SAFETY: written once at boot by the boot vCPU, before the others start, then only read by the CPUs.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([[0; 2]; VECTORS]));

/// Fills the IDT (on the boot vCPU) and loads it.
pub fn load_idt() {
    let base = stubs as *const () as u64;
    // SAFETY: only the boot vCPU writes the table, before loading it and before the other vCPUs start.
    let idt = unsafe { &mut *IDT.0.get() };
    for (v, gate) in idt.iter_mut().enumerate() {
        let at = base + (v * STUB_SIZE) as u64;
        // Present interrupt gates to the kernel code segment; `int3` and `into` may come from CPL 3, as on Linux.
        let dpl = if v == 3 || v == 4 { 3 } else { 0 };
        let attributes = 0x8e | (dpl << 5);
        gate[0] = (at & 0xffff) | (0x08 << 16) | (attributes << 40) | ((at >> 16) & 0xffff) << 48;
        gate[1] = at >> 32;
    }
    load_filled_idt();
}

/// Loads the IDT the boot vCPU filled (on the other vCPUs).
pub fn load_filled_idt() {
    let mut pointer = [0u8; 10];
    pointer[..2].copy_from_slice(&((VECTORS * 16 - 1) as u16).to_le_bytes());
    pointer[2..].copy_from_slice(&(IDT.0.get() as u64).to_le_bytes());
    // SAFETY: the table is filled and static.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(nostack)) };
}

/// Per vCPU, the last fault handed to the library OS: the crash report if it has no handler for it.
static LAST_FAULT: [Shared<FaultRecord>; MAX_CPUS] = [const {
    Shared(UnsafeCell::new(FaultRecord {
        signal: 0,
        code: 0,
        addr: 0,
        trapno: 0,
        error: 0,
        regs: FaultRegs {
            rax: 0,
            rbx: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            rbp: 0,
            rsp: 0,
            r8: 0,
            r9: 0,
            r10: 0,
            r11: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
            rip: 0,
            rflags: 0,
        },
    }))
}; MAX_CPUS];

pub fn last_fault() -> FaultRecord {
    LAST_FAULT[cpus::current()].get()
}

extern "C" fn trap(frame: &mut TrapFrame) {
    match frame.vector {
        v if v == u64::from(apic::TIMER_VECTOR) || v == u64::from(apic::KICK_VECTOR) => return timer::interrupt(frame),
        v if v == u64::from(apic::DEVICE_VECTOR) => return crate::virtio::interrupt(),
        // Acknowledged by nothing, as the APIC wants.
        v if v == u64::from(apic::SPURIOUS_VECTOR) => return,
        // Every other source is masked (`apic.rs`); one that comes anyway is acknowledged and dropped.
        32.. => return apic::eoi(),
        _ => {}
    }
    if frame.cs & 3 != 3 {
        serial::write_str("kiln: the platform layer faulted: vector ");
        serial::write_dec(frame.vector);
        serial::write_str(" at rip ");
        serial::write_hex(frame.rip);
        serial::write_str("\n");
        power::exit(70);
    }
    let handoff = crate::handoff();
    let in_kernel = (handoff.kernel_start..handoff.kernel_end).contains(&frame.rip);
    if frame.vector == 13 && in_kernel && frame.rdx & 0xffff == u64::from(HYPERCALL_PORT) && at_out(frame.rip) {
        hypercall::handle(frame.rax as u32);
        frame.rip += 1;
        return;
    }
    let record = record(frame);
    LAST_FAULT[cpus::current()].set(record);
    let in_vdso = (handoff.vdso_start..handoff.vdso_end).contains(&frame.rip);
    if (in_kernel && !in_vdso) || handoff.fault_entry == 0 {
        report(&record, in_kernel && !in_vdso);
    }
    to_library_os(frame, &record);
}

/// Writes `record` where the library OS reads it and resumes the vCPU at its fault entry on the program's stack, as
/// the VMM does (interrupts on: the timer may interrupt the library OS, which then only moves its deadline).
fn to_library_os(frame: &mut TrapFrame, record: &FaultRecord) {
    let at = cpus::hypercall_block(cpus::current()) + FAULT_RECORD_OFFSET;
    // SAFETY: the record's place is inside this vCPU's hypercall block page, in the direct map.
    unsafe { core::ptr::write_volatile(at as *mut FaultRecord, *record) };
    frame.rip = crate::handoff().fault_entry;
    frame.rflags = crate::cpu::USER_RFLAGS;
}

/// Whether the vCPU was interrupted in the program's code (the vDSO's functions count as the program's), where the
/// library OS may be entered: not in the library OS, which is not reentrant.
pub fn in_program(frame: &TrapFrame) -> bool {
    let handoff = crate::handoff();
    let in_library_os = (handoff.kernel_start..handoff.kernel_end).contains(&frame.rip)
        && !(handoff.vdso_start..handoff.vdso_end).contains(&frame.rip);
    frame.cs & 3 == 3 && !in_library_os && handoff.fault_entry != 0
}

/// Interrupts the program (checked with [`in_program`]): the library OS takes the vCPU with the program's registers,
/// delivers what is pending (or yields to the threads that wait for it) and resumes the program as it was.
pub fn interrupt_program(frame: &mut TrapFrame, renewed: bool) {
    let mut record = record(frame);
    record.signal = INTERRUPTED;
    record.code = if renewed { RENEWED } else { 0 };
    record.addr = 0;
    record.trapno = 0;
    record.error = 0;
    to_library_os(frame, &record);
}

/// Whether the instruction at `rip` is `out dx, eax` (the hypercall's).
fn at_out(rip: u64) -> bool {
    // SAFETY: `rip` lies in the library OS's code (checked by the caller), mapped in the direct map.
    unsafe { core::ptr::read_volatile(rip as *const u8) == 0xef }
}

fn record(f: &TrapFrame) -> FaultRecord {
    let (signal, code, addr) = match f.vector {
        14 => (SIGSEGV, if f.error & 1 != 0 { 2 } else { 1 }, crate::io::read_cr2()),
        0 => (SIGFPE, 1, f.rip),          // FPE_INTDIV
        16 | 19 => (SIGFPE, 0, f.rip),    // x87 and SIMD floating point
        6 | 7 => (SIGILL, 2, f.rip),      // ILL_ILLOPN
        1 | 3 => (SIGTRAP, SI_KERNEL, 0), // the breakpoint's rip is already past the `int3`
        17 => (SIGBUS, 1, f.rip),         // BUS_ADRALN
        _ => (SIGSEGV, SI_KERNEL, 0),     // #GP, #SS, #NP, #TS, #BR, #OF: Linux's SI_KERNEL with no address
    };
    FaultRecord {
        signal,
        code,
        addr,
        trapno: f.vector,
        error: f.error,
        regs: FaultRegs {
            rax: f.rax,
            rbx: f.rbx,
            rcx: f.rcx,
            rdx: f.rdx,
            rsi: f.rsi,
            rdi: f.rdi,
            rbp: f.rbp,
            rsp: f.rsp,
            r8: f.r8,
            r9: f.r9,
            r10: f.r10,
            r11: f.r11,
            r12: f.r12,
            r13: f.r13,
            r14: f.r14,
            r15: f.r15,
            rip: f.rip,
            rflags: f.rflags,
        },
    }
}

/// The crash report's lines, as `kiln run` prints its first one, and the VM's end with the shell's code 128 + n.
pub fn report(r: &FaultRecord, in_library_os: bool) -> ! {
    serial::write_str(if in_library_os { "kiln: the library OS crashed: " } else { "kiln: program crashed: " });
    serial::write_str(crate::hypercall::signal_name(r.signal));
    serial::write_str(" (");
    match r.trapno {
        14 => {
            serial::write_str(match r.error {
                e if e & 0x10 != 0 => "page fault fetching ",
                e if e & 0x2 != 0 => "page fault writing ",
                _ => "page fault reading ",
            });
            serial::write_hex(r.addr);
        }
        0 => serial::write_str("divide error"),
        3 => serial::write_str("breakpoint"),
        6 => serial::write_str("invalid opcode"),
        13 => serial::write_str("general protection fault"),
        v => {
            serial::write_str("exception ");
            serial::write_dec(v);
        }
    }
    serial::write_str(") at rip ");
    serial::write_hex(r.regs.rip);
    serial::write_str("\n  rsp ");
    serial::write_hex(r.regs.rsp);
    serial::write_str(" rbp ");
    serial::write_hex(r.regs.rbp);
    serial::write_str(" (name it with `addr2line -f -e PROGRAM ADDRESS`)\n");
    power::exit((128 + r.signal) as u8)
}
