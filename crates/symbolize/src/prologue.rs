//! Unwinding a frame that no call-frame information covers (musl's static libc is built without any) by reading its
//! function's prologue, as debuggers do: from the function's first instruction up to where the thread is, the
//! pushes and `%rsp` adjustments say how far below the return address `%rsp` now is, and where `%rbp` was saved. The
//! count stops at the first branch: what follows is the function's body, where `%rsp` stays put between calls
//! (an early return's epilogue on another path does not apply). A function that sets up a frame pointer (`push %rbp;
//! mov %rsp,%rbp`) is unwound through `%rbp` instead, which also covers stack realignment and `alloca`.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, OpKind, Register};

/// A prologue is a few instructions; a function this far from its start is not counted further.
const MAX_INSTRUCTIONS: usize = 256;

/// What the prologue of the function did before the thread got to its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `%rsp` is `depth` bytes below the return address's slot; the caller's `%rbp` is `rbp_at` bytes below it, if
    /// it was saved.
    Depth { depth: u64, rbp_at: Option<u64> },
    /// `%rbp` is a frame pointer: the caller's `%rbp` at `(%rbp)`, the return address above it.
    FramePointer,
}

/// The frame of the function whose code `code` starts at `start`, for a thread at `at` in it (the faulting
/// instruction, or a return address: everything before it ran). None where the prologue does something with `%rsp`
/// that is not understood.
pub(crate) fn analyze(code: &[u8], start: u64, at: u64) -> Option<Frame> {
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let (mut depth, mut rbp_at) = (0u64, None);
    for ins in decoder.iter().take(MAX_INSTRUCTIONS) {
        if ins.ip() >= at || ins.code() == Code::INVALID {
            break;
        }
        match rsp_change(&ins) {
            Change::None => {}
            Change::Push(reg) => {
                depth = depth.checked_add(8)?;
                if reg == Register::RBP && rbp_at.is_none() {
                    rbp_at = Some(depth);
                }
            }
            Change::By(delta) => depth = depth.checked_add_signed(-delta)?,
            Change::FramePointer if rbp_at == Some(depth) => return Some(Frame::FramePointer),
            Change::FramePointer => {}
            Change::Unknown => return None,
        }
        if !matches!(ins.flow_control(), FlowControl::Next | FlowControl::Call) {
            break;
        }
    }
    Some(Frame::Depth { depth, rbp_at })
}

enum Change {
    None,
    Push(Register),
    /// `%rsp` moves by this many bytes (negative: down).
    By(i64),
    /// `mov %rsp,%rbp`.
    FramePointer,
    Unknown,
}

fn rsp_change(ins: &Instruction) -> Change {
    let op0_rsp = ins.op_count() > 0 && ins.op0_kind() == OpKind::Register && ins.op0_register() == Register::RSP;
    match ins.code() {
        Code::Push_r64 => Change::Push(ins.op0_register()),
        Code::Pushq_imm8 | Code::Pushq_imm32 | Code::Pushfq => Change::By(-8),
        Code::Pop_r64 => Change::By(8),
        Code::Sub_rm64_imm8 | Code::Sub_rm64_imm32 if op0_rsp => Change::By((ins.immediate(1) as i64).wrapping_neg()),
        Code::Add_rm64_imm8 | Code::Add_rm64_imm32 if op0_rsp => Change::By(ins.immediate(1) as i64),
        Code::Lea_r64_m if op0_rsp && ins.memory_base() == Register::RSP && ins.memory_index() == Register::None => {
            Change::By(ins.memory_displacement64() as i64)
        }
        Code::Mov_r64_rm64 | Code::Mov_rm64_r64
            if ins.op0_register() == Register::RBP
                && ins.op1_kind() == OpKind::Register
                && ins.op1_register() == Register::RSP =>
        {
            Change::FramePointer
        }
        // A call pushes and its callee's return pops: no change once it is past.
        _ if ins.flow_control() == FlowControl::Call => Change::None,
        _ if op0_rsp => Change::Unknown,
        _ => Change::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // musl's raise: push %rbp; push %rbx; mov %edi,%ebx; sub $0x98,%rsp; mov %rsp,%rbp; call ...; syscall
    const RAISE: [u8; 21] = [
        0x55, 0x53, 0x89, 0xfb, 0x48, 0x81, 0xec, 0x98, 0x00, 0x00, 0x00, 0x48, 0x89, 0xe5, 0xe8, 0x00, 0x00, 0x00,
        0x00, 0x0f, 0x05,
    ];

    #[test]
    fn pushes_and_the_frame_allocation_are_counted_up_to_the_address() {
        let frame = |at| analyze(&RAISE, 0x1000, at);
        assert_eq!(frame(0x1000), Some(Frame::Depth { depth: 0, rbp_at: None }), "at the first instruction");
        assert_eq!(frame(0x1001), Some(Frame::Depth { depth: 8, rbp_at: Some(8) }));
        // `mov %rsp,%rbp` here is no frame pointer: %rbp was not just pushed (it is a pointer to a local).
        assert_eq!(frame(0x1013), Some(Frame::Depth { depth: 0xa8, rbp_at: Some(8) }), "after the call");
    }

    #[test]
    fn a_frame_pointer_prologue_is_recognised() {
        // push %rbp; mov %rsp,%rbp; and $-16,%rsp (not counted: %rbp unwinds it)
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xe4, 0xf0, 0x90];
        assert_eq!(analyze(&code, 0, 1), Some(Frame::Depth { depth: 8, rbp_at: Some(8) }));
        assert_eq!(analyze(&code, 0, 8), Some(Frame::FramePointer));
    }

    #[test]
    fn counting_stops_at_the_first_branch_and_at_what_it_cannot_follow() {
        // push %rbx; test %edi,%edi; je +1; pop %rbx; ret: the pop is on another path.
        let code = [0x53, 0x85, 0xff, 0x74, 0x01, 0x5b, 0xc3];
        assert_eq!(analyze(&code, 0, 7), Some(Frame::Depth { depth: 8, rbp_at: None }));
        // and $-16,%rsp without a frame pointer.
        assert_eq!(analyze(&[0x48, 0x83, 0xe4, 0xf0, 0x90], 0, 5), None);
    }
}
