//! Which function a site belongs to, and whether that function keeps data in the red zone.
//!
//! The hazard: `call *%rax` pushes its return address at `-8(%rsp)`, inside the 128 bytes below `%rsp` that the
//! System V ABI lets a leaf function use without moving `%rsp`. The check is deliberately simple and errs towards
//! flagging, since a flagged site is only relocated, never refused.

use std::ops::Range;

use iced_x86::{Code, FlowControl, Instruction, Mnemonic, OpKind, Register};

use super::FunctionSymbol;

/// Index range into `instrs` of the function containing `instrs[site]`.
///
/// With symbols, the smallest `STT_FUNC` covering the site. Without (stripped binaries), a window: back to just after
/// the previous `ret`, `jmp` or `int3` padding, forward through the next `ret`; gaps of undecodable bytes end it too.
pub(super) fn function_span(instrs: &[Instruction], site: usize, functions: &[FunctionSymbol]) -> Range<usize> {
    let ip = instrs[site].ip();
    let symbol = functions.iter().filter(|f| f.vaddr <= ip && ip - f.vaddr < f.size).min_by_key(|f| f.size);
    if let Some(f) = symbol {
        let end = f.vaddr.saturating_add(f.size);
        let lo = instrs.partition_point(|i| i.ip() < f.vaddr);
        let hi = instrs.partition_point(|i| i.ip() < end);
        return lo..hi;
    }

    let contiguous = |k: usize| instrs[k].next_ip() == instrs[k + 1].ip();
    let mut start = site;
    while start > 0 && contiguous(start - 1) && !ends_code_run(&instrs[start - 1]) {
        start -= 1;
    }
    let mut end = site + 1;
    while end < instrs.len() && contiguous(end - 1) && instrs[end - 1].flow_control() != FlowControl::Return {
        if instrs[end].mnemonic() == Mnemonic::Int3 {
            break;
        }
        end += 1;
    }
    start..end
}

/// An instruction after which, in a stripped binary, a new function probably starts.
fn ends_code_run(ins: &Instruction) -> bool {
    matches!(ins.flow_control(), FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch)
        || ins.mnemonic() == Mnemonic::Int3
}

/// Whether the function may keep live data below `%rsp`, where the pushed return address would land:
/// - it addresses memory at `%rsp` minus something (also `lea`, since the address may be used through another
///   register), or
/// - it addresses memory at `%rbp` minus something while never moving `%rsp` down (no `push` other than the
///   frame's `push %rbp`, no `call`, no `sub`/`and`/`lea`/negative `add` on `%rsp`): a leaf with `%rbp == %rsp`,
///   as `-O0` code builds it, whose locals all live in the red zone, or
/// - it addresses memory at `%rsp` or `%rbp` plus an index register (whose sign we cannot know) while never moving
///   `%rsp` down: hand-written leaves walk the red zone that way.
pub(super) fn uses_red_zone(function: &[Instruction]) -> bool {
    let below = |base| function.iter().any(|ins| addresses_below(ins, base));
    let indexed = |base| function.iter().any(|ins| indexes_from(ins, base));
    let leaf_without_frame = || !function.iter().any(lowers_rsp);
    below(Register::RSP)
        || ((below(Register::RBP) || indexed(Register::RSP) || indexed(Register::RBP)) && leaf_without_frame())
}

fn indexes_from(ins: &Instruction, base: Register) -> bool {
    let has_memory = (0..ins.op_count()).any(|n| ins.op_kind(n) == OpKind::Memory);
    has_memory && ins.memory_base() == base && ins.memory_index() != Register::None
}

fn addresses_below(ins: &Instruction, base: Register) -> bool {
    let has_memory = (0..ins.op_count()).any(|n| ins.op_kind(n) == OpKind::Memory);
    // `lea -N(%rsp),%rsp` allocates a frame; it does not point into the red zone.
    let allocates = ins.mnemonic() == Mnemonic::Lea && writes_rsp(ins);
    has_memory && !allocates && ins.memory_base() == base && (ins.memory_displacement64() as i64) < 0
}

fn lowers_rsp(ins: &Instruction) -> bool {
    // Covers push, pushf, call and enter.
    let implicit = ins.stack_pointer_increment() < 0;
    let frame_push = ins.code() == Code::Push_r64 && ins.op0_register() == Register::RBP;
    let explicit = writes_rsp(ins)
        && match ins.mnemonic() {
            Mnemonic::Sub | Mnemonic::And => true,
            Mnemonic::Lea => (ins.memory_displacement64() as i64) < 0,
            Mnemonic::Add => ins.try_immediate(1).is_ok_and(|imm| (imm as i64) < 0),
            _ => false,
        };
    (implicit && !frame_push) || explicit
}

fn writes_rsp(ins: &Instruction) -> bool {
    ins.op0_kind() == OpKind::Register && ins.op0_register() == Register::RSP
}
