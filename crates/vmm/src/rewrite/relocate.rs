//! Moving a red-zone site out of line: the site's neighbourhood is replaced by `jmp stub`, and the stub steps
//! `%rsp` over the red zone around the `call *%rax`, so the pushed return address lands below the live data.

use std::collections::BTreeSet;
use std::ops::Range;

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, FlowControl, IcedError, Instruction, InstructionBlock,
    InstructionInfoFactory, MemoryOperand, Mnemonic, Register,
};

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
/// `JMP_LEN` bytes long, where every moved instruction is neither a branch nor touches `%rsp`, and no branch
/// target falls strictly inside (one at the first byte is fine: the `jmp` starts there). Ties prefer moving
/// instructions from before the site, typically the `mov $N,%eax`. None if no such window exists.
pub(super) fn find_window(
    instrs: &[Instruction],
    span: Range<usize>,
    site: usize,
    targets: &BTreeSet<u64>,
) -> Option<Window> {
    if !span.contains(&site) {
        return None;
    }
    let mut info = InstructionInfoFactory::new();
    let mut movable = |k: usize| is_movable(&mut info, &instrs[k]);
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
/// a relative branch would need its own fix-up) and no `%rsp` (which the stub has moved). RIP-relative operands are
/// fine; the block encoder re-targets them.
fn is_movable(info: &mut InstructionInfoFactory, ins: &Instruction) -> bool {
    ins.flow_control() == FlowControl::Next
        && ins.mnemonic() != Mnemonic::Syscall
        && !ins.is_stack_instruction()
        && !info.info(ins).used_registers().iter().any(|r| r.register().full_register() == Register::RSP)
}

/// Encodes the stub for `window` at `stub_addr`:
/// `lea -128(%rsp),%rsp; <moved before>; call *%rax; lea 128(%rsp),%rsp; <moved after>; jmp <after window>`.
/// `lea` leaves the flags alone, so flags set before the site still reach the instructions after it.
pub(super) fn build_stub(
    instrs: &[Instruction],
    window: &Window,
    site: usize,
    stub_addr: u64,
) -> Result<Vec<u8>, IcedError> {
    let adjust_rsp = |delta| {
        Instruction::with2(Code::Lea_r64_m, Register::RSP, MemoryOperand::with_base_displ(Register::RSP, delta))
    };
    let mut stub = vec![adjust_rsp(-RED_ZONE)?];
    stub.extend_from_slice(&instrs[window.first..site]);
    stub.push(Instruction::with1(Code::Call_rm64, Register::RAX)?);
    stub.push(adjust_rsp(RED_ZONE)?);
    stub.extend_from_slice(&instrs[site + 1..=window.last]);
    stub.push(Instruction::with_branch(Code::Jmp_rel32_64, instrs[window.last].next_ip())?);
    let encoded = BlockEncoder::encode(64, InstructionBlock::new(&stub, stub_addr), BlockEncoderOptions::NONE)?;
    Ok(encoded.code_buffer)
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
