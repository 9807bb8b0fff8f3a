//! The walk up the crashed thread's stack. At each frame the program's call-frame information (`.eh_frame`) says
//! where the caller's return address and `%rbp` are, exactly, at any instruction (a frame pointer is only right once
//! the prologue has run); where no FDE covers the address, or its rule needs a DWARF expression, the function's
//! prologue is read (`prologue`), and failing that the frame pointer chain is followed. Only the stack copy is
//! read: a value outside it, a stack that does not grow towards the caller, a zero return address or
//! [`MAX_FRAMES`] frames end the walk.

use crate::program::{AddressSpace, Program};
use crate::prologue;
use crate::stack::{Registers, StackCopy};
use gimli::{CfaRule, RegisterRule, UnwindContext, UnwindSection, X86_64};

/// At most this many frames are listed.
pub const MAX_FRAMES: usize = 64;

/// The addresses of the thread's frames, innermost first: the faulting `%rip`, then return addresses.
pub(crate) fn walk(space: &AddressSpace, registers: Registers, stack: &StackCopy) -> Vec<u64> {
    let mut frames = vec![registers.rip];
    let mut context = Box::new(UnwindContext::new());
    let mut now = registers;
    while frames.len() < MAX_FRAMES {
        // A return address is just past its call, which may be the last instruction of a function: look up the call.
        let probe = if frames.len() == 1 { now.rip } else { now.rip.wrapping_sub(1) };
        let step = space.object_at(probe).map(|program| (program, cfi_step(program, &mut context, probe, now, stack)));
        let caller = match step {
            Some((_, Step::Caller(caller))) => Some(caller),
            Some((_, Step::Outermost)) => None,
            Some((program, Step::Unknown)) => {
                prologue_step(program, now, probe, stack).or_else(|| frame_pointer_step(now, stack))
            }
            None => frame_pointer_step(now, stack),
        };
        let Some(caller) = caller.filter(|c| c.rip != 0 && c.rsp > now.rsp) else { break };
        frames.push(caller.rip);
        now = caller;
    }
    frames
}

enum Step {
    Caller(Registers),
    /// The CFI says there is no caller (the return address is undefined: `_start`, a thread's first function).
    Outermost,
    /// No CFI covers the address, or it cannot be followed on this copy.
    Unknown,
}

fn cfi_step(
    program: &Program,
    context: &mut UnwindContext<usize>,
    probe: u64,
    now: Registers,
    stack: &StackCopy,
) -> Step {
    let (Some((eh_frame, bases)), Some(link)) = (program.eh_frame(), program.link_address(probe)) else {
        return Step::Unknown;
    };
    let Ok(row) = eh_frame.unwind_info_for_address(bases, context, link, gimli::EhFrame::cie_from_offset) else {
        return Step::Unknown;
    };
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let base = match *register {
                X86_64::RSP => now.rsp,
                X86_64::RBP => now.rbp,
                _ => return Step::Unknown,
            };
            base.wrapping_add_signed(*offset)
        }
        CfaRule::Expression(_) => return Step::Unknown,
    };
    let saved = |register| match row.register(register) {
        None | Some(RegisterRule::SameValue) => Some(None),
        Some(RegisterRule::Offset(offset)) => stack.word(cfa.wrapping_add_signed(offset)).map(Some),
        Some(RegisterRule::ValOffset(offset)) => Some(Some(cfa.wrapping_add_signed(offset))),
        Some(RegisterRule::Undefined) => Some(Some(0)),
        Some(_) => None,
    };
    let rip = match saved(X86_64::RA) {
        Some(Some(0)) => return Step::Outermost,
        Some(Some(rip)) => rip,
        _ => return Step::Unknown,
    };
    let Some(rbp) = saved(X86_64::RBP) else { return Step::Unknown };
    Step::Caller(Registers { rip, rsp: cfa, rbp: rbp.unwrap_or(now.rbp) })
}

/// The caller of a function that no CFI covers, from what its prologue did (see `prologue`).
fn prologue_step(program: &Program, now: Registers, probe: u64, stack: &StackCopy) -> Option<Registers> {
    let (_, start) = program.symbol(program.link_address(probe)?)?;
    let code = program.code_from(start)?;
    let at = program.link_address(now.rip)?;
    match prologue::analyze(code, start, at)? {
        prologue::Frame::FramePointer => frame_pointer_step(now, stack),
        prologue::Frame::Depth { depth, rbp_at } => {
            let slot = now.rsp.checked_add(depth)?;
            let rbp = match rbp_at {
                Some(below) => stack.word(slot.checked_sub(below)?)?,
                None => now.rbp,
            };
            Some(Registers { rip: stack.word(slot)?, rsp: slot.checked_add(8)?, rbp })
        }
    }
}

/// `%rbp` points at the saved `%rbp`, with the return address above it (the System V frame layout).
fn frame_pointer_step(now: Registers, stack: &StackCopy) -> Option<Registers> {
    if now.rbp < now.rsp {
        return None;
    }
    let rip = stack.word(now.rbp.checked_add(8)?)?;
    let rbp = stack.word(now.rbp)?;
    Some(Registers { rip, rsp: now.rbp.checked_add(16)?, rbp })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(start: u64, values: &[u64]) -> (u64, Vec<u8>) {
        (start, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    #[test]
    fn frame_pointers_are_followed_until_a_bad_one() {
        // Frames at 0x1000 (rbp -> 0x1010), 0x1010 (rbp -> 0x1020), 0x1020 (rbp -> far outside the copy).
        let (start, bytes) = words(0x1000, &[0x1010, 0xaaa, 0x1020, 0xbbb, 0xdead_0000, 0xccc]);
        let stack = StackCopy { start, bytes: &bytes };
        let now = Registers { rip: 0x999, rsp: 0x1000, rbp: 0x1000 };
        let next = frame_pointer_step(now, &stack).unwrap();
        assert_eq!(next, Registers { rip: 0xaaa, rsp: 0x1010, rbp: 0x1010 });
        let next = frame_pointer_step(next, &stack).unwrap();
        let next = frame_pointer_step(next, &stack).unwrap();
        assert_eq!(next.rip, 0xccc);
        assert_eq!(frame_pointer_step(next, &stack), None, "a frame pointer outside the copy ends the walk");
        assert_eq!(frame_pointer_step(Registers { rbp: 0xff0, ..now }, &stack), None, "below %rsp");
    }

    #[test]
    fn a_frame_pointer_loop_ends_within_the_frame_limit() {
        // A hostile stack whose frame pointer points at itself: the walk must not follow it forever.
        let (start, bytes) = words(0x1000, &[0x1000, 0x4242]);
        let stack = StackCopy { start, bytes: &bytes };
        let space = AddressSpace::new(vec![Program::parse(&empty_elf(), 0, "").unwrap()]);
        let frames = walk(&space, Registers { rip: 0x4000, rsp: 0x1000, rbp: 0x1000 }, &stack);
        assert_eq!(frames, [0x4000, 0x4242], "the second step would not move up the stack");
    }

    /// The smallest ELF `object` parses: a header with no sections.
    pub(crate) fn empty_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        (elf[4], elf[5], elf[6]) = (2, 1, 1);
        elf[16] = 2; // ET_EXEC
        elf[18] = 62; // EM_X86_64
        elf[20] = 1;
        elf[52] = 64; // e_ehsize
        elf
    }
}
