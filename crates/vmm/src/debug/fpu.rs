//! The x87 and SSE registers between KVM's `kvm_fpu` (the `fxsave` layout) and gdb's amd64 core
//! registers (`st0`-`st7`, the x87 control registers, `xmm0`-`xmm15`, `mxcsr`). Only a thread running the program's
//! code on a vCPU has them there; the library OS keeps no x87/SSE state for a thread blocked in a syscall (the C
//! calling convention leaves none live across a call), so those read as zero (docs/debugging.md).

use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{kvm_fpu, kvm_xsave};

/// The `fxsave` image's offsets within `kvm_xsave`'s legacy region, in bytes: the x87 control, status and abridged
/// tag words, the last opcode, instruction and operand pointers, MXCSR, `st0`-`st7` (16 bytes each) and
/// `xmm0`-`xmm15`.
mod fxsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
}

/// The x87/SSE part of `xsave` (KVM_GET_XSAVE). The VMM reads the registers this way rather than with KVM_GET_FPU,
/// which on `kvm_pvm` reads MXCSR as 0 and ignores a written one.
pub fn from_xsave(xsave: &kvm_xsave) -> kvm_fpu {
    let bytes = legacy_bytes(xsave);
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut fpu = kvm_fpu {
        fcw: u16_at(fxsave::FCW),
        fsw: u16_at(fxsave::FSW),
        ftwx: bytes[fxsave::FTW],
        last_opcode: u16_at(fxsave::FOP),
        last_ip: u64_at(fxsave::FIP),
        last_dp: u64_at(fxsave::FDP),
        mxcsr: u32::from_le_bytes(bytes[fxsave::MXCSR..fxsave::MXCSR + 4].try_into().expect("4 bytes")),
        ..Default::default()
    };
    for (i, fpr) in fpu.fpr.iter_mut().enumerate() {
        fpr.copy_from_slice(&bytes[fxsave::ST + 16 * i..fxsave::ST + 16 * (i + 1)]);
    }
    for (i, xmm) in fpu.xmm.iter_mut().enumerate() {
        xmm.copy_from_slice(&bytes[fxsave::XMM + 16 * i..fxsave::XMM + 16 * (i + 1)]);
    }
    fpu
}

/// Writes `fpu` into `xsave`'s x87/SSE part, leaving the rest (the AVX halves and beyond) as it is.
pub fn into_xsave(fpu: &kvm_fpu, xsave: &mut kvm_xsave) {
    let mut bytes = legacy_bytes(xsave);
    bytes[fxsave::FCW..fxsave::FCW + 2].copy_from_slice(&fpu.fcw.to_le_bytes());
    bytes[fxsave::FSW..fxsave::FSW + 2].copy_from_slice(&fpu.fsw.to_le_bytes());
    bytes[fxsave::FTW] = fpu.ftwx;
    bytes[fxsave::FOP..fxsave::FOP + 2].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    bytes[fxsave::FIP..fxsave::FIP + 8].copy_from_slice(&fpu.last_ip.to_le_bytes());
    bytes[fxsave::FDP..fxsave::FDP + 8].copy_from_slice(&fpu.last_dp.to_le_bytes());
    bytes[fxsave::MXCSR..fxsave::MXCSR + 4].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    for (i, fpr) in fpu.fpr.iter().enumerate() {
        bytes[fxsave::ST + 16 * i..fxsave::ST + 16 * (i + 1)].copy_from_slice(fpr);
    }
    for (i, xmm) in fpu.xmm.iter().enumerate() {
        bytes[fxsave::XMM + 16 * i..fxsave::XMM + 16 * (i + 1)].copy_from_slice(xmm);
    }
    for (word, chunk) in xsave.region.iter_mut().zip(bytes.chunks_exact(4)).take(FXSAVE_BYTES / 4) {
        *word = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
    }
}

/// The `fxsave` image's size: the part of the legacy region these registers live in.
const FXSAVE_BYTES: usize = 416;

fn legacy_bytes(xsave: &kvm_xsave) -> [u8; FXSAVE_BYTES] {
    let mut bytes = [0; FXSAVE_BYTES];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(xsave.region.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

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
    // MXCSR's reserved bits set would make KVM_SET_XSAVE fail (#GP on the restore): keep them as they were.
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

    #[test]
    fn the_xsave_images_x87_and_sse_part_reads_and_writes_back_alone() {
        let mut xsave = kvm_xsave::default();
        xsave.region[0] = 0x0000_037f; // FCW
        xsave.region[6] = 0x1f80; // MXCSR
        xsave.region[40] = 0xaabb_ccdd; // xmm0's low word
        xsave.region[200] = 0x1234; // beyond fxsave: an AVX half
        let mut fpu = from_xsave(&xsave);
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
        assert_eq!(u128::from_le_bytes(fpu.xmm[0]), 0xaabb_ccdd);
        fpu.mxcsr = 0x1f00;
        fpu.xmm[15] = 7u128.to_le_bytes();
        into_xsave(&fpu, &mut xsave);
        assert_eq!((xsave.region[6], xsave.region[(160 + 15 * 16) / 4]), (0x1f00, 7));
        assert_eq!((xsave.region[0], xsave.region[40], xsave.region[200]), (0x37f, 0xaabb_ccdd, 0x1234));
        assert_eq!(from_xsave(&xsave).xmm[15], fpu.xmm[15]);
    }
}
