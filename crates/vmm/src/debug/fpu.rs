//! The x87 and SSE registers between KVM's `kvm_fpu` (the `fxsave` layout, KVM_GET_FPU) and gdb's amd64 core
//! registers (`st0`-`st7`, the x87 control registers, `xmm0`-`xmm15`, `mxcsr`). Only a thread running the program's
//! code on a vCPU has them there; the library OS keeps no x87/SSE state for a thread blocked in a syscall (the C
//! calling convention leaves none live across a call), so those read as zero (docs/debugging.md).

use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::kvm_fpu;

/// Fills `regs`' x87/SSE part from `fpu`.
pub fn to_gdb(fpu: &kvm_fpu, regs: &mut X86_64CoreRegs) {
    for (st, fpr) in regs.st.iter_mut().zip(fpu.fpr.iter()) {
        st.copy_from_slice(&fpr[..10]);
    }
    regs.fpu.fctrl = u32::from(fpu.fcw);
    regs.fpu.fstat = u32::from(fpu.fsw);
    regs.fpu.ftag = full_tag(fpu.ftwx);
    regs.fpu.fop = u32::from(fpu.last_opcode);
    regs.fpu.fioff = fpu.last_ip as u32;
    regs.fpu.fooff = fpu.last_dp as u32;
    for (xmm, bytes) in regs.xmm.iter_mut().zip(fpu.xmm.iter()) {
        *xmm = u128::from_le_bytes(*bytes);
    }
    regs.mxcsr = fpu.mxcsr;
}

/// `old` with the x87/SSE registers gdb wrote in `regs`.
pub fn from_gdb(regs: &X86_64CoreRegs, old: &kvm_fpu) -> kvm_fpu {
    let mut fpu = *old;
    for (fpr, st) in fpu.fpr.iter_mut().zip(regs.st.iter()) {
        fpr[..10].copy_from_slice(st);
    }
    fpu.fcw = regs.fpu.fctrl as u16;
    fpu.fsw = regs.fpu.fstat as u16;
    fpu.ftwx = abridged_tag(regs.fpu.ftag);
    fpu.last_opcode = regs.fpu.fop as u16;
    for (bytes, xmm) in fpu.xmm.iter_mut().zip(regs.xmm.iter()) {
        *bytes = xmm.to_le_bytes();
    }
    // MXCSR's reserved bits set would make KVM_SET_FPU fail (#GP on the restore): keep them as they were.
    fpu.mxcsr = (regs.mxcsr & MXCSR_WRITABLE) | (old.mxcsr & !MXCSR_WRITABLE);
    fpu
}

const MXCSR_WRITABLE: u32 = 0xffff;

/// `fxsave`'s abridged tag (one bit per register, set: not empty) as the x87 tag word gdb shows (two bits per
/// register, 0b11: empty; a register in use is shown as valid, 0b00, without classifying its value).
fn full_tag(abridged: u8) -> u32 {
    (0..8).filter(|i| abridged & (1 << i) == 0).fold(0, |tag, i| tag | 0b11 << (2 * i))
}

fn abridged_tag(full: u32) -> u8 {
    (0..8).filter(|i| (full >> (2 * i)) & 0b11 != 0b11).fold(0, |tag, i| tag | 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_and_x87_registers_go_to_gdb_and_back() {
        let mut fpu = kvm_fpu { fcw: 0x37f, fsw: 0x3800, ftwx: 0b1000_0001, mxcsr: 0x1f80, ..Default::default() };
        fpu.xmm[1] = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128.to_le_bytes();
        fpu.fpr[0][..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let mut regs = X86_64CoreRegs::default();
        to_gdb(&fpu, &mut regs);
        assert_eq!(regs.xmm[1], 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        assert_eq!(regs.st[0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!((regs.fpu.fctrl, regs.mxcsr), (0x37f, 0x1f80));
        // st0 and st7 in use: their tags 00, the others 11.
        assert_eq!(regs.fpu.ftag, 0x3ffc);
        regs.xmm[2] = 42;
        regs.mxcsr = 0xdead_1f80;
        let back = from_gdb(&regs, &fpu);
        assert_eq!(u128::from_le_bytes(back.xmm[2]), 42);
        assert_eq!(back.xmm[1], fpu.xmm[1]);
        assert_eq!(back.ftwx, fpu.ftwx);
        assert_eq!(back.mxcsr, 0x1f80, "reserved MXCSR bits are not gdb's to set");
    }
}
