//! A thread stopped in a syscall made from a relocated site is, by its registers, in the site's stub (past the
//! program's code, with no symbols or unwinding information): the call's return address is there. Crash reports and
//! core files show it where the stub goes back to instead, the end of the site's window in the function's own code,
//! with the same stack, so that its frame is named and its callers can be unwound.

use crate::memory::GuestRam;
use crate::user_memory;
use iced_x86::{Code, Decoder, DecoderOptions};
use kiln_abi::hypercall::FaultRegs;
use kiln_abi::layout::{STUB_CALL_LEN, SYSCALL_GATEWAY_ENTRY};

/// A stub's code after its call: at most a `lea` over the red zone, the window's instructions after the site and the
/// `jmp` back.
const MAX_TAIL: usize = 64;
/// `lea 128(%rsp),%rsp`: a red-zone stub steps back over the zone after its call.
const RED_ZONE: u64 = 128;

/// `regs` moved out of a syscall stub, if `regs.rip` is the return address of one's call: a `call *disp32(%rip)`
/// through a slot that holds the library OS's entry (`entry` covers it: the program's stubs) or the gateway (a shared
/// object's). Anything else, or a stub whose way back cannot be read, is returned as it is.
pub fn leave(ram: &GuestRam, pml4: u64, regs: FaultRegs, entry: &std::ops::Range<u64>) -> FaultRegs {
    let Some(call_at) = regs.rip.checked_sub(STUB_CALL_LEN) else { return regs };
    let call = user_memory::read(ram, pml4, call_at, STUB_CALL_LEN as usize);
    let [0xff, 0x15, d0, d1, d2, d3] = call[..] else { return regs };
    let slot = regs.rip.wrapping_add(i32::from_le_bytes([d0, d1, d2, d3]) as i64 as u64);
    let Some(target) = user_memory::word(ram, pml4, slot) else { return regs };
    if target != SYSCALL_GATEWAY_ENTRY && !entry.contains(&target) {
        return regs;
    }
    let tail = user_memory::read(ram, pml4, regs.rip, MAX_TAIL);
    match way_back(&tail, regs.rip) {
        Some((rip, red_zone)) => FaultRegs { rip, rsp: regs.rsp + if red_zone { RED_ZONE } else { 0 }, ..regs },
        None => regs,
    }
}

/// Where the stub code `tail` (at `ip`) jumps back to, and whether it steps over the red zone first.
fn way_back(tail: &[u8], ip: u64) -> Option<(u64, bool)> {
    let mut decoder = Decoder::with_ip(64, tail, ip, DecoderOptions::NONE);
    let mut red_zone = false;
    for (i, ins) in decoder.iter().enumerate() {
        match ins.code() {
            Code::INVALID => return None,
            Code::Jmp_rel32_64 => return Some((ins.near_branch_target(), red_zone)),
            Code::Lea_r64_m if i == 0 && ins.memory_displacement64() == RED_ZONE => red_zone = true,
            // The window's instructions after the site run straight through.
            _ if ins.flow_control() == iced_x86::FlowControl::Next => {}
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_way_back_is_the_first_jump_past_the_moved_instructions() {
        // mov %eax,%edx; jmp +0x100 (from 0x1002: to 0x1107).
        let tail = [0x89, 0xc2, 0xe9, 0x00, 0x01, 0x00, 0x00];
        assert_eq!(way_back(&tail, 0x1000), Some((0x1107, false)));
        // lea 0x80(%rsp),%rsp first: the stub had stepped below the red zone.
        let tail = [0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00, 0xe9, 0, 0, 0, 0];
        assert_eq!(way_back(&tail, 0x1000), Some((0x100d, true)));
        // A stub cut short, or one that returns (not one of ours): no way back.
        assert_eq!(way_back(&[0x89, 0xc2], 0x1000), None);
        assert_eq!(way_back(&[0xc3], 0x1000), None);
    }
}
