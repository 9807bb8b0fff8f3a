//! The supervisor page at `SYSCALL_TRAP_VADDR`: the only code Kiln ever runs at CPL 0, and only on hosts where CPL 0
//! runs natively (hardware KVM, see `host.rs`). On `kvm_pvm` none of it runs: a `syscall` there ends at LSTAR before
//! the first instruction, and the vCPU has no IDT.
//!
//! - At LSTAR (offset 0): an unrewritten `syscall` (code made at run time) is handed to the library OS like a
//!   rewritten one, for the price of two ring switches and no VM exit: the return address goes to the vCPU's
//!   per-vCPU area, and `sysretq` enters `kiln_unrewritten_syscall_entry` at CPL 3 with the program's stack, flags and
//!   argument registers as they were.
//! - Exception stubs and the IDT that points at them: each stub pushes its vector (and a 0 where the CPU pushes no
//!   error code) on the vCPU's CPL 0 stack (RSP0 of its TSS), saves `%rdx` and reports to the VMM through
//!   [`EXCEPTION_PORT`]. The VMM reads the [`ExceptionFrame`] and puts the vCPU back in the faulting state, which is
//!   what `kvm_pvm` leaves after its shutdown, so one fault path serves both host kinds.

use super::gdt;
use kiln_abi::layout::{PAGE_SIZE, SYSCALL_TRAP_VADDR};

/// Port the exception stubs write at CPL 0 (closed to CPL 3 in the TSS I/O bitmap).
pub const EXCEPTION_PORT: u16 = 0x4b8;
/// Port the host-kind probe's LSTAR target writes at CPL 0 (`host.rs`).
pub const PROBE_PORT: u16 = 0x4b9;

/// Exceptions the IDT covers: the architectural ones. Anything else (no interrupt is ever enabled) is past the IDT's
/// limit and raises #GP, which is covered.
pub const VECTORS: usize = 32;
/// Vectors for which the CPU pushes an error code.
const WITH_ERROR_CODE: [usize; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
/// Vectors a program may raise itself with `int3`/`into` from CPL 3, as on Linux.
const USER_VECTORS: [usize; 2] = [3, 4];

const LSTAR_OFFSET: u64 = 0;
const STUBS_OFFSET: u64 = 0x100;
const STUB_SIZE: u64 = 16;
const COMMON_OFFSET: u64 = STUBS_OFFSET + VECTORS as u64 * STUB_SIZE;
const IDT_OFFSET: u64 = 0x800;
const IDT_ENTRY_SIZE: u64 = 16;
const _: () = assert!(COMMON_OFFSET + 16 <= IDT_OFFSET && IDT_OFFSET + VECTORS as u64 * IDT_ENTRY_SIZE <= PAGE_SIZE);

/// The address LSTAR holds while the VM runs.
pub const LSTAR: u64 = SYSCALL_TRAP_VADDR + LSTAR_OFFSET;
/// The IDT (linear address and limit) for `sregs.idt`.
pub const IDT_BASE: u64 = SYSCALL_TRAP_VADDR + IDT_OFFSET;
pub const IDT_LIMIT: u16 = (VECTORS as u64 * IDT_ENTRY_SIZE - 1) as u16;
/// The CPL 0 code's addresses: an exception with %rip in here is Kiln's, not the program's.
pub const CODE: std::ops::Range<u64> = SYSCALL_TRAP_VADDR..SYSCALL_TRAP_VADDR + IDT_OFFSET;

/// What an exception stub leaves at the top of the CPL 0 stack, lowest address first: `%rdx` as it was, the vector,
/// the error code, then the CPU's interrupt frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionFrame {
    pub rdx: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl ExceptionFrame {
    pub const WORDS: usize = 8;

    pub fn from_words(w: [u64; Self::WORDS]) -> Self {
        let [rdx, vector, error, rip, cs, rflags, rsp, ss] = w;
        ExceptionFrame { rdx, vector, error, rip, cs, rflags, rsp, ss }
    }

    /// Whether the exception interrupted CPL 3 (the program or the library OS), not Kiln's own CPL 0 code.
    pub fn from_user_mode(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// The page's bytes. `unrewritten_entry` is the library OS's `kiln_unrewritten_syscall_entry`.
pub fn build(unrewritten_entry: u64) -> Vec<u8> {
    let mut page = vec![0xccu8; PAGE_SIZE as usize];
    let mut put = |offset: u64, bytes: &[u8]| {
        let at = offset as usize;
        page[at..at + bytes.len()].copy_from_slice(bytes);
    };

    // mov %rcx, %gs:PERCPU_UNREWRITTEN_RETURN; movabs $entry, %rcx; sysretq (flags from %r11, as `syscall` saved them)
    let slot = (kiln_abi::layout::PERCPU_UNREWRITTEN_RETURN as u32).to_le_bytes();
    let mut lstar = vec![0x65, 0x48, 0x89, 0x0c, 0x25];
    lstar.extend_from_slice(&slot);
    lstar.extend_from_slice(&[0x48, 0xb9]);
    lstar.extend_from_slice(&unrewritten_entry.to_le_bytes());
    lstar.extend_from_slice(&[0x48, 0x0f, 0x07]);
    put(LSTAR_OFFSET, &lstar);

    for vector in 0..VECTORS {
        let at = STUBS_OFFSET + vector as u64 * STUB_SIZE;
        let mut stub = Vec::new();
        if !WITH_ERROR_CODE.contains(&vector) {
            stub.extend_from_slice(&[0x6a, 0x00]); // push $0
        }
        stub.extend_from_slice(&[0x6a, vector as u8]); // push $vector
        let rel = COMMON_OFFSET as i64 - (at as i64 + stub.len() as i64 + 5);
        stub.push(0xe9); // jmp rel32
        stub.extend_from_slice(&(rel as i32).to_le_bytes());
        put(at, &stub);
    }
    let mut common = vec![0x52]; // push %rdx
    common.extend_from_slice(&report_through(EXCEPTION_PORT));
    put(COMMON_OFFSET, &common);

    for vector in 0..VECTORS {
        let handler = SYSCALL_TRAP_VADDR + STUBS_OFFSET + vector as u64 * STUB_SIZE;
        let dpl: u8 = if USER_VECTORS.contains(&vector) { 3 } else { 0 };
        put(IDT_OFFSET + vector as u64 * IDT_ENTRY_SIZE, &gate(handler, dpl));
    }
    page
}

/// `mov $port, %dx; out %al, %dx; hlt; jmp .-1`: the VMM never resumes it.
pub fn report_through(port: u16) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![0x66, 0xba, p[0], p[1], 0xee, 0xf4, 0xeb, 0xfd]
}

/// A 64-bit interrupt gate to `handler` in the kernel code segment, on the TSS's RSP0 stack (no IST).
fn gate(handler: u64, dpl: u8) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&gdt::KERNEL_CODE.to_le_bytes());
    g[5] = 0x80 | (dpl << 5) | 0xe; // present, DPL, type 14: 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};

    fn decode(page: &[u8], offset: u64, count: usize) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(64, &page[offset as usize..], SYSCALL_TRAP_VADDR + offset, DecoderOptions::NONE);
        (0..count).map(|_| d.decode()).collect()
    }

    #[test]
    fn lstar_hands_the_syscall_to_the_library_os_at_cpl_3() {
        let page = build(0x4000_0012_3456);
        let i = decode(&page, LSTAR_OFFSET, 3);
        assert_eq!(i[0].code(), Code::Mov_rm64_r64);
        assert_eq!(i[0].segment_prefix(), Register::GS);
        assert_eq!(i[0].memory_displacement64(), kiln_abi::layout::PERCPU_UNREWRITTEN_RETURN);
        assert_eq!(i[0].op1_register(), Register::RCX);
        assert_eq!(
            (i[1].code(), i[1].op0_register(), i[1].immediate64()),
            (Code::Mov_r64_imm64, Register::RCX, 0x4000_0012_3456)
        );
        assert_eq!(i[2].code(), Code::Sysretq);
    }

    #[test]
    fn every_stub_reports_its_vector_with_an_error_code_slot() {
        let page = build(0);
        for vector in 0..VECTORS {
            let i = decode(&page, STUBS_OFFSET + vector as u64 * STUB_SIZE, 3);
            let (pushes, jmp) = if WITH_ERROR_CODE.contains(&vector) { (&i[..1], &i[1]) } else { (&i[..2], &i[2]) };
            assert_eq!(pushes.last().unwrap().immediate32() as usize, vector);
            assert!(pushes.iter().all(|p| p.code() == Code::Pushq_imm8));
            assert_eq!(jmp.near_branch_target(), SYSCALL_TRAP_VADDR + COMMON_OFFSET, "vector {vector}");
        }
        let common = decode(&page, COMMON_OFFSET, 3);
        assert_eq!(common[0].code(), Code::Push_r64);
        assert_eq!(common[1].immediate16(), EXCEPTION_PORT);
        assert_eq!(common[2].code(), Code::Out_DX_AL);
    }

    #[test]
    fn gates_point_at_their_stubs_with_the_right_privilege() {
        let page = build(0);
        for vector in 0..VECTORS {
            let g = &page[(IDT_OFFSET + vector as u64 * IDT_ENTRY_SIZE) as usize..][..16];
            let target = u64::from(u16::from_le_bytes([g[0], g[1]]))
                | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
                | u64::from(u32::from_le_bytes(g[8..12].try_into().unwrap())) << 32;
            assert_eq!(target, SYSCALL_TRAP_VADDR + STUBS_OFFSET + vector as u64 * STUB_SIZE);
            assert_eq!(u16::from_le_bytes([g[2], g[3]]), gdt::KERNEL_CODE);
            let dpl = (g[5] >> 5) & 3;
            assert_eq!(dpl, if vector == 3 || vector == 4 { 3 } else { 0 });
            assert_eq!(g[5] & 0x8f, 0x8e);
        }
    }
}
