//! On hardware KVM, an exception stub (`trap_page.rs`) reported an exception: read what it left on the CPL 0 stack
//! and put the vCPU back in the state the exception interrupted, at CPL 3, as `kvm_pvm` leaves a vCPU after its
//! shutdown. From there the one fault path (`crate::fault`, `vm.rs`) decodes and delivers the fault on both kinds.

use super::trap_page::{self, ExceptionFrame};
use super::HostKind;
use crate::memory::GuestRam;
use kvm_ioctls::VcpuFd;

#[derive(Debug, thiserror::Error)]
pub enum ExceptionError {
    #[error("KVM refused to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The port was written from somewhere else than the stubs: a program that opened it in its TSS.
    #[error("the guest used I/O port {port:#x} outside Kiln's exception stubs (at rip {rip:#x})", port = trap_page::EXCEPTION_PORT)]
    NotFromStub { rip: u64 },
    #[error("an exception stub's stack at {0:#x} is not in guest memory")]
    FrameUnreadable(u64),
    /// Kiln's own CPL 0 code faulted: at LSTAR, the program's stack pointer could not be used.
    #[error("exception {vector} (error code {error:#x}) in Kiln's CPL 0 code at rip {rip:#x}, rsp {rsp:#x}")]
    InKilnCode { vector: u64, error: u64, rip: u64, rsp: u64 },
}

/// Rewinds `vcpu`, stopped at the stubs' `out`, to the interrupted CPL 3 state; returns what the stub recorded.
pub fn rewind(vcpu: &VcpuFd, host: HostKind, ram: &GuestRam, pml4: u64) -> Result<ExceptionFrame, ExceptionError> {
    let mut regs = vcpu.get_regs().map_err(|e| ExceptionError::Kvm("read registers", e))?;
    let sregs = vcpu.get_sregs().map_err(|e| ExceptionError::Kvm("read special registers", e))?;
    if sregs.cs.selector & 3 != 0 || !trap_page::CODE.contains(&regs.rip) {
        return Err(ExceptionError::NotFromStub { rip: regs.rip });
    }
    let mut words = [0u64; ExceptionFrame::WORDS];
    for (i, word) in words.iter_mut().enumerate() {
        let at = regs.rsp.wrapping_add(8 * i as u64);
        *word = crate::fault::read_u64_at(ram, pml4, at).ok_or(ExceptionError::FrameUnreadable(regs.rsp))?;
    }
    let frame = ExceptionFrame::from_words(words);
    if !frame.from_user_mode() {
        let (vector, error, rip, rsp) = (frame.vector, frame.error, frame.rip, frame.rsp);
        return Err(ExceptionError::InKilnCode { vector, error, rip, rsp });
    }
    (regs.rdx, regs.rip, regs.rflags, regs.rsp) = (frame.rdx, frame.rip, frame.rflags, frame.rsp);
    let mut user = super::user_mode(sregs);
    host.fix(&mut user);
    vcpu.set_sregs(&user).map_err(|e| ExceptionError::Kvm("set special registers", e))?;
    vcpu.set_regs(&regs).map_err(|e| ExceptionError::Kvm("set registers", e))?;
    Ok(frame)
}

/// The name Linux's and Intel's manuals give the vector, for reports.
pub fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        _ => "exception",
    }
}
