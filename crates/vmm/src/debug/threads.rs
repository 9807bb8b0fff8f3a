//! The program's threads as the library OS keeps them, read from the host while no vCPU runs: their ids, names and
//! states from its thread table (`kiln_abi::threads`, published at `KILN_THREAD_TABLE`), and their registers: a
//! thread running the program's code on a vCPU has them in the vCPU, every other one in the [`SyscallFrame`] at the
//! top of its library OS stack (saved when it entered the library OS by a syscall, a fault or an interruption).
//! Threads are the program's, not vCPUs: the library OS runs any of them on any vCPU.
//!
//! Everything read from the guest is bounded: a broken table gives an error or fewer threads, never a host panic.

use super::stubs::StubReturns;
use crate::memory::GuestRam;
use kiln_abi::layout::DIRECT_MAP_BASE;
use kiln_abi::threads::{
    SyscallFrame, ThreadTable, THREAD_BLOCKED, THREAD_RUNNABLE, THREAD_RUNNING, THREAD_TABLE_MAGIC,
};
use kvm_bindings::kvm_regs;

/// At most this many slots are looked at (the library OS's limit is 16,384).
pub const MAX_SLOTS: u64 = 1 << 16;
/// A slot larger than this is not the library OS's.
const MAX_STRIDE: u64 = 4096;
const FRAME_WORDS: usize = std::mem::size_of::<SyscallFrame>() / 8;
const FRAME_SIZE: u64 = std::mem::size_of::<SyscallFrame>() as u64;
/// A syscall frame's `nr` when the library OS was entered by a fault or an interruption.
const NO_SYSCALL: u64 = u64::MAX;
const RFLAGS_RESERVED: u64 = 0x2;
const RFLAGS_IF: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("the library OS publishes no thread table (an image made by an older kiln)")]
    NoTable,
    #[error("the library OS has not set up its thread table yet")]
    NotReady,
    #[error("the library OS's thread table is not readable ({0})")]
    Broken(&'static str),
}

/// What a thread is doing, as the library OS's scheduler says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    /// Waiting for a vCPU.
    Runnable,
    /// On this vCPU.
    Running { vcpu: usize },
    /// Blocked in a syscall (a futex, a sleep, a read...).
    Blocked,
}

/// Where a thread's registers are, so that a debugger's changes go back to the same place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegsAt {
    /// In this vCPU: the thread runs the program's code there.
    Vcpu(usize),
    /// In the syscall frame at this guest-physical address.
    Frame(u64),
}

/// One of the program's threads.
#[derive(Clone, Debug)]
pub struct GuestThread {
    pub tid: u32,
    pub name: String,
    pub state: ThreadState,
    /// The program's registers (a thread in the library OS: where it will resume, with the registers the program
    /// sees then). `rax` of a thread in a syscall is the syscall's number (its result is not known yet); of one
    /// interrupted or faulted into the library OS, 0 (not kept).
    pub regs: kvm_regs,
    pub fs_base: u64,
    pub regs_at: RegsAt,
}

/// What the VMM knows of a stopped vCPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuView {
    pub regs: kvm_regs,
    pub fs_base: u64,
    /// Whether it stopped in the program's code (else in the library OS, and its thread's registers are in the
    /// thread's frame).
    pub in_program: bool,
    /// Its x87/SSE registers, read where it stopped in the program's code.
    pub fpu: Option<kvm_bindings::kvm_fpu>,
    /// The upper halves of its AVX registers, read with them.
    pub ymmh: Option<super::avx::YmmHigh>,
}

fn read_u64(ram: &GuestRam, phys: u64) -> Result<u64, ThreadsError> {
    ram.read_obj::<u64>(phys).map_err(|_| ThreadsError::Broken("an address outside guest RAM"))
}

fn direct_to_phys(vaddr: u64) -> Option<u64> {
    vaddr.checked_sub(DIRECT_MAP_BASE)
}

/// Reads the table's description at guest-physical `table_phys` (0: the library OS has none) and checks it.
pub fn table(ram: &GuestRam, table_phys: u64) -> Result<ThreadTable, ThreadsError> {
    if table_phys == 0 {
        return Err(ThreadsError::NoTable);
    }
    let mut words = [0u64; std::mem::size_of::<ThreadTable>() / 8];
    for (i, w) in words.iter_mut().enumerate() {
        *w = read_u64(ram, table_phys + 8 * i as u64)?;
    }
    let [magic, slots, len, stride, tid_offset, state_offset, cpu_offset, kernel_stack_top_offset, fs_base_offset, name_offset] =
        words;
    let t = ThreadTable {
        magic,
        slots,
        len,
        stride,
        tid_offset,
        state_offset,
        cpu_offset,
        kernel_stack_top_offset,
        fs_base_offset,
        name_offset,
    };
    if t.magic != THREAD_TABLE_MAGIC {
        return Err(ThreadsError::NotReady);
    }
    let fields = [(t.tid_offset, 4), (t.state_offset, 1), (t.cpu_offset, 8), (t.kernel_stack_top_offset, 8)];
    let fields = fields.into_iter().chain([(t.fs_base_offset, 8), (t.name_offset, 16)]);
    if t.stride == 0 || t.stride > MAX_STRIDE || fields.into_iter().any(|(at, size)| at + size > t.stride) {
        return Err(ThreadsError::Broken("a slot's layout does not fit its size"));
    }
    if t.len > MAX_SLOTS || direct_to_phys(t.slots).is_none() {
        return Err(ThreadsError::Broken("its slots are not in the direct map"));
    }
    Ok(t)
}

/// Every live thread, in slot order, with its registers: `vcpus[i]` is vCPU `i`'s state where it is known. A thread
/// in a relocated syscall site is shown where it stands in the program's code (`stubs`).
pub fn list(
    ram: &GuestRam,
    table_phys: u64,
    vcpus: &[Option<VcpuView>],
    stubs: &StubReturns,
) -> Result<Vec<GuestThread>, ThreadsError> {
    let t = table(ram, table_phys)?;
    let base = direct_to_phys(t.slots).ok_or(ThreadsError::Broken("its slots are not in the direct map"))?;
    let mut threads = Vec::new();
    for slot in 0..t.len {
        let at = base + slot * t.stride;
        let state = ram.read_obj::<u8>(at + t.state_offset).map_err(|_| ThreadsError::Broken("a slot outside RAM"))?;
        let state = match state {
            THREAD_RUNNABLE => ThreadState::Runnable,
            THREAD_BLOCKED => ThreadState::Blocked,
            THREAD_RUNNING => ThreadState::Running { vcpu: read_u64(ram, at + t.cpu_offset)? as usize },
            _ => continue,
        };
        let tid = ram.read_obj::<u32>(at + t.tid_offset).map_err(|_| ThreadsError::Broken("a slot outside RAM"))?;
        let mut name = [0u8; 16];
        ram.read(at + t.name_offset, &mut name).map_err(|_| ThreadsError::Broken("a slot outside RAM"))?;
        let name = String::from_utf8_lossy(name.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
        let on_vcpu = match state {
            ThreadState::Running { vcpu } => vcpus.get(vcpu).copied().flatten().filter(|v| v.in_program),
            _ => None,
        };
        let (regs, fs_base, regs_at) = match (on_vcpu, state) {
            (Some(view), ThreadState::Running { vcpu }) => (view.regs, view.fs_base, RegsAt::Vcpu(vcpu)),
            _ => {
                let top = read_u64(ram, at + t.kernel_stack_top_offset)?;
                let frame_phys = direct_to_phys(top)
                    .and_then(|p| p.checked_sub(FRAME_SIZE))
                    .ok_or(ThreadsError::Broken("a thread's stack is not in the direct map"))?;
                let frame = read_frame(ram, frame_phys)?;
                // A running thread's FS base is its vCPU's; the slot keeps it only once it stops running.
                let running_on = match state {
                    ThreadState::Running { vcpu } => vcpus.get(vcpu).copied().flatten(),
                    _ => None,
                };
                let fs_base = match running_on {
                    Some(view) => view.fs_base,
                    None => read_u64(ram, at + t.fs_base_offset)?,
                };
                let mut regs = frame_regs(&frame);
                if let Some((rip, rsp)) = stubs.in_program(regs.rip, regs.rsp) {
                    (regs.rip, regs.rsp) = (rip, rsp);
                }
                (regs, fs_base, RegsAt::Frame(frame_phys))
            }
        };
        threads.push(GuestThread { tid, name, state, regs, fs_base, regs_at });
    }
    Ok(threads)
}

/// The syscall frame at guest-physical `phys`.
pub fn read_frame(ram: &GuestRam, phys: u64) -> Result<SyscallFrame, ThreadsError> {
    let mut w = [0u64; FRAME_WORDS];
    for (i, word) in w.iter_mut().enumerate() {
        *word = read_u64(ram, phys + 8 * i as u64)?;
    }
    Ok(SyscallFrame {
        nr: w[0],
        args: [w[1], w[2], w[3], w[4], w[5], w[6]],
        r11: w[7],
        rcx: w[8],
        user_rcx: w[9],
        rbx: w[10],
        rbp: w[11],
        r12: w[12],
        r13: w[13],
        r14: w[14],
        r15: w[15],
        rflags: w[16],
        user_rsp: w[17],
    })
}

/// Writes `frame` at guest-physical `phys`.
pub fn write_frame(ram: &GuestRam, phys: u64, f: &SyscallFrame) -> Result<(), ThreadsError> {
    let words = [
        f.nr, f.args[0], f.args[1], f.args[2], f.args[3], f.args[4], f.args[5], f.r11, f.rcx, f.user_rcx, f.rbx, f.rbp,
        f.r12, f.r13, f.r14, f.r15, f.rflags, f.user_rsp,
    ];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    ram.write(phys, &bytes).map_err(|_| ThreadsError::Broken("a thread's frame is outside guest RAM"))
}

const _: () = assert!(FRAME_WORDS == 18);

/// The registers the program will resume with from `f`.
pub fn frame_regs(f: &SyscallFrame) -> kvm_regs {
    kvm_regs {
        rax: if f.nr == NO_SYSCALL { 0 } else { f.nr },
        rbx: f.rbx,
        rcx: f.user_rcx,
        rdx: f.args[2],
        rsi: f.args[1],
        rdi: f.args[0],
        rsp: f.user_rsp.wrapping_add(8),
        rbp: f.rbp,
        r8: f.args[4],
        r9: f.args[5],
        r10: f.args[3],
        r11: f.r11,
        r12: f.r12,
        r13: f.r13,
        r14: f.r14,
        r15: f.r15,
        rip: f.rcx,
        rflags: if f.rflags == 0 { RFLAGS_RESERVED | RFLAGS_IF } else { f.rflags },
    }
}

/// `f` changed to resume with `regs` (as a debugger set them). `rax` is left alone: a syscall's result replaces it.
/// The flags are written only when they differ from what [`frame_regs`] reported, since a frame's flags are
/// restored (`popfq`) only when set.
pub fn with_regs(f: &SyscallFrame, regs: &kvm_regs) -> SyscallFrame {
    let rflags = if regs.rflags == frame_regs(f).rflags { f.rflags } else { regs.rflags | RFLAGS_RESERVED };
    SyscallFrame {
        nr: f.nr,
        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
        r11: regs.r11,
        rcx: regs.rip,
        user_rcx: regs.rcx,
        rbx: regs.rbx,
        rbp: regs.rbp,
        r12: regs.r12,
        r13: regs.r13,
        r14: regs.r14,
        r15: regs.r15,
        rflags,
        user_rsp: regs.rsp.wrapping_sub(8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_the_registers_it_resumes_with() {
        let f = SyscallFrame {
            nr: 202,
            args: [1, 2, 3, 4, 5, 6],
            r11: 11,
            rcx: 0x401000,
            user_rcx: 0x401000,
            rbx: 7,
            rbp: 8,
            r12: 12,
            r13: 13,
            r14: 14,
            r15: 15,
            rflags: 0,
            user_rsp: 0x7fff_0000,
        };
        let r = frame_regs(&f);
        assert_eq!((r.rip, r.rsp, r.rax, r.rdi, r.r10, r.rflags), (0x401000, 0x7fff_0008, 202, 1, 4, 0x202));
        assert_eq!(with_regs(&f, &r), f, "unchanged registers leave the frame as it was");
        let moved = with_regs(&f, &kvm_regs { rip: 0x402000, rflags: 0x302, ..r });
        assert_eq!((moved.rcx, moved.rflags, moved.nr), (0x402000, 0x302, 202));
        assert_eq!(frame_regs(&SyscallFrame { nr: u64::MAX, ..f }).rax, 0);
    }
}
