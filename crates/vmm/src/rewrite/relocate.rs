//! Moving a site out of line: the site's neighbourhood is replaced by `jmp stub`, and the stub calls the library OS
//! through the entry slot at the start of the stub area. For a red-zone site the stub steps `%rsp` over the red zone
//! around the call, so that the pushed return address lands below the live data.

use std::collections::BTreeSet;
use std::ops::Range;

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, FlowControl, IcedError, Instruction, InstructionBlock,
    InstructionInfoFactory, MemoryOperand, Mnemonic, OpAccess, Register,
};
use kiln_abi::layout::STUB_CALL_LEN;

use super::INT3;

/// The System V red zone, in bytes below `%rsp`.
const RED_ZONE: i64 = 128;
/// `jmp rel32`.
const JMP_LEN: u64 = 5;
/// Instructions considered on each side of the site. The `jmp` needs 3 bytes beyond the 2 of `syscall`, which at
/// most 3 other instructions always provide.
const MAX_SIDE: usize = 3;

/// Inclusive index range of the instructions replaced by the `jmp`; contains the site.
pub(super) struct Window {
    pub(super) first: usize,
    pub(super) last: usize,
}

/// The smallest window of whole, contiguous instructions within `span` around `instrs[site]` that is at least
/// `JMP_LEN` bytes long, where no moved instruction is a branch (nor, for a `red_zone` stub, which moves `%rsp`,
/// touches `%rsp`), and no branch target falls strictly inside (one at the first byte is fine: the `jmp` starts
/// there). Ties prefer moving instructions from before the site, typically the `mov $N,%eax`. None if no such window
/// exists.
pub(super) fn find_window(
    instrs: &[Instruction],
    span: Range<usize>,
    site: usize,
    targets: &BTreeSet<u64>,
    red_zone: bool,
) -> Option<Window> {
    if !span.contains(&site) {
        return None;
    }
    let mut info = InstructionInfoFactory::new();
    let mut movable = |k: usize| is_movable(&mut info, &instrs[k], red_zone);
    let contiguous = |k: usize| instrs[k].next_ip() == instrs[k + 1].ip();

    let mut lowest = site;
    while lowest > span.start && site - lowest < MAX_SIDE && contiguous(lowest - 1) && movable(lowest - 1) {
        lowest -= 1;
    }
    let mut highest = site;
    while highest + 1 < span.end && highest - site < MAX_SIDE && contiguous(highest) && movable(highest + 1) {
        highest += 1;
    }

    let mut best: Option<(u64, usize, Window)> = None;
    for first in lowest..=site {
        for last in site..=highest {
            let (start, end) = (instrs[first].ip(), instrs[last].next_ip());
            let len = end - start;
            if len < JMP_LEN || targets.range(start + 1..end).next().is_some() {
                continue;
            }
            let after = last - site;
            if best.as_ref().is_none_or(|&(l, a, _)| (len, after) < (l, a)) {
                best = Some((len, after, Window { first, last }));
            }
        }
    }
    best.map(|(_, _, window)| window)
}

/// Whether an instruction behaves the same when run from the stub: no control flow (it would leave the stub, and
/// a relative branch would need its own fix-up) and, in a `red_zone` stub, no `%rsp` (which that stub has moved).
/// RIP-relative operands are fine; the block encoder re-targets them.
fn is_movable(info: &mut InstructionInfoFactory, ins: &Instruction, red_zone: bool) -> bool {
    let mut uses_rsp = || {
        ins.is_stack_instruction()
            || info.info(ins).used_registers().iter().any(|r| r.register().full_register() == Register::RSP)
    };
    ins.flow_control() == FlowControl::Next && ins.mnemonic() != Mnemonic::Syscall && !(red_zone && uses_rsp())
}

/// Encodes the stub for `window` at `stub_addr`: `<moved before>; call *entry_slot(%rip); <moved after>; jmp <after
/// window>`, and for a red-zone site `lea -128(%rsp),%rsp` first and `lea 128(%rsp),%rsp` right after the call
/// (`lea` leaves the flags alone, so flags set before the site still reach the instructions after it).
///
/// Only red-zone sites step over it: a `clone` child returns to the stub on the stack it was given, which a `lea`
/// would move, and Go's goroutine stacks promise no 136 bytes below `%rsp` at a syscall.
/// Returns the stub's bytes and the offset in them of the call's return address.
pub(super) fn build_stub(
    instrs: &[Instruction],
    window: &Window,
    site: usize,
    stub_addr: u64,
    entry_slot: u64,
    red_zone: bool,
) -> Result<(Vec<u8>, usize), IcedError> {
    let adjust_rsp = |delta| {
        Instruction::with2(Code::Lea_r64_m, Register::RSP, MemoryOperand::with_base_displ(Register::RSP, delta))
    };
    let mut stub = Vec::new();
    if red_zone {
        stub.push(adjust_rsp(-RED_ZONE)?);
    }
    stub.extend_from_slice(&instrs[window.first..site]);
    let slot = MemoryOperand::with_base_displ(Register::RIP, entry_slot as i64);
    let call = stub.len();
    stub.push(Instruction::with1(Code::Call_rm64, slot)?);
    if red_zone {
        stub.push(adjust_rsp(RED_ZONE)?);
    }
    stub.extend_from_slice(&instrs[site + 1..=window.last]);
    stub.push(Instruction::with_branch(Code::Jmp_rel32_64, instrs[window.last].next_ip())?);
    let block = InstructionBlock::new(&stub, stub_addr);
    let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let ret = encoded.new_instruction_offsets[call] as usize + STUB_CALL_LEN as usize;
    Ok((encoded.code_buffer, ret))
}

/// Whether `moved` (the instructions before the site, in order) can run a second time, from the state the first
/// run left, with the same effect: then a restarted syscall may resume at the window's start, in the program's own
/// code, as Linux resumes at the `syscall` (musl's cancellation points check that address). They can when none reads
/// what it or a later one writes (all memory counting as one place), nor `%rcx`, which the syscall clobbers.
pub(super) fn can_run_again(moved: &[Instruction]) -> bool {
    let mut info = InstructionInfoFactory::new();
    let mut written_regs = vec![Register::RCX];
    let mut writes_memory = false;
    let mut written_flags = 0;
    for ins in moved.iter().rev() {
        let used = info.info(ins);
        let writes = |a: OpAccess| {
            matches!(a, OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
        };
        let reads = |a: OpAccess| {
            matches!(a, OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
        };
        let regs: Vec<_> = used.used_registers().iter().map(|r| (r.register().full_register(), r.access())).collect();
        let memory: Vec<_> = used.used_memory().iter().map(|m| m.access()).collect();
        // What this instruction writes counts as written "at or after" it.
        written_regs.extend(regs.iter().filter(|r| writes(r.1)).map(|r| r.0));
        writes_memory |= memory.iter().any(|&a| writes(a));
        written_flags |= ins.rflags_modified();
        let reads_written_reg = regs.iter().any(|r| reads(r.1) && written_regs.contains(&r.0));
        let reads_written_memory = writes_memory && memory.iter().any(|&a| reads(a));
        if reads_written_reg || reads_written_memory || ins.rflags_read() & written_flags != 0 {
            return false;
        }
    }
    true
}

/// The bytes replacing the window: `jmp stub_addr`, then `int3` up to the window's end (nothing jumps there).
/// None if the stub is out of reach of a rel32.
pub(super) fn jump_patch(instrs: &[Instruction], window: &Window, stub_addr: u64) -> Option<Vec<u8>> {
    let start = instrs[window.first].ip();
    let len = usize::try_from(instrs[window.last].next_ip() - start).ok()?;
    let rel = i32::try_from(stub_addr.wrapping_sub(start.wrapping_add(JMP_LEN)) as i64).ok()?;
    let mut bytes = vec![0xe9];
    bytes.extend_from_slice(&rel.to_le_bytes());
    bytes.resize(len, INT3);
    Some(bytes)
}
