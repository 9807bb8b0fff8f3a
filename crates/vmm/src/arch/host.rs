//! Which kind of KVM the VM runs on, and everything that differs between the kinds: the one place that knows.
//!
//! - **Paravirtual** (`kvm_pvm`, our development and CI hosts; see ../shared/probes): guest CPL 0 is emulated, about
//!   2,700x slower, and a `syscall` at CPL 3 does not switch to CPL 0: the vCPU shuts down at LSTAR. An exception at
//!   CPL 3 cannot be delivered either (the vCPU has no IDT) and ends in a shutdown with the vCPU state still describing
//!   the faulting instruction; KVM leaves that state as it was, so the VMM can decode the fault and resume the vCPU
//!   in the library OS, which runs the program's handler (`crate::fault`, `vm.rs`). After a trap-type exception
//!   (`int3`) %rip already points past the instruction.
//! - **Hardware** (kvm-intel, kvm-amd: bare metal and clouds with nested virtualisation): CPL 0 runs natively, and
//!   after a shutdown (triple fault) KVM resets the vCPU, so nothing of the faulting state survives. There the vCPU
//!   gets an IDT whose CPL 0 stubs report each exception to the VMM (`trap_page.rs`), which puts the vCPU back in the
//!   state `kvm_pvm` would have left and takes the same path; and the CPL 0 code at LSTAR hands an unrewritten
//!   `syscall` (code made at run time) to the library OS instead of ending the program with SIGSYS. Nothing at CPL 0
//!   runs on the hot path: rewritten syscalls and hypercalls are the same on both kinds.
//!
//! The kind is measured, once per VM before it boots ([`probe`]): vCPU 0 runs a `syscall` at CPL 3 with LSTAR at
//! code that reports through a port. If that code ran, CPL 0 is reachable (hardware); if the vCPU shut down at LSTAR,
//! it is `kvm_pvm`. One VM exit, on either kind.
//!
//! Port I/O from CPL 3 (our hypercalls) is checked against the TSS I/O permission bitmap on kvm_pvm even when
//! RFLAGS.IOPL is 3, and a 4-byte `out` needs all four ports' bits clear. So Kiln runs with IOPL 0 and a bitmap that
//! opens only the hypercall ports; this is also what hardware does, so one setup serves both. The task register's
//! type differs: Intel's VM entry demands a busy TSS (11), as `ltr` leaves it; AMD's VMRUN and I/O check ignore the
//! type, but QEMU's emulation of that check (our nested-KVM CI, `tests/nested-kvm`) accepts only an available TSS
//! (9), and KVM on AMD reports TR busy in every KVM_GET_SREGS, so every KVM_SET_SREGS goes through [`HostKind::fix`].

use super::trap_page;
use kvm_bindings::{kvm_regs, kvm_sregs, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// `kvm_pvm`: CPL 0 emulated, no way from CPL 3 to CPL 0.
    Paravirtual,
    /// Hardware virtualisation: CPL 0 native. `amd` for SVM (AMD, Hygon), else VMX.
    Hardware { amd: bool },
}

const TSS_AVAILABLE: u8 = 9;
const TSS_BUSY: u8 = 11;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("KVM refused to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot tell what kind of KVM this is: a syscall at CPL 3 ended in {0}")]
    Unknown(String),
}

impl HostKind {
    pub fn name(self) -> &'static str {
        match self {
            HostKind::Paravirtual => "paravirtual KVM (CPL 0 emulated)",
            HostKind::Hardware { amd: true } => "hardware KVM (AMD SVM)",
            HostKind::Hardware { amd: false } => "hardware KVM (Intel VMX)",
        }
    }

    /// Whether exceptions reach CPL 0 stubs (else they shut the vCPU down with its state intact).
    pub fn has_idt(self) -> bool {
        matches!(self, HostKind::Hardware { .. })
    }

    /// Makes special registers (new, or read back from KVM) right for this host: the TR type and the IDT.
    pub fn fix(self, s: &mut kvm_sregs) {
        s.tr.type_ = match self {
            HostKind::Hardware { amd: true } => TSS_AVAILABLE,
            _ => TSS_BUSY,
        };
        (s.idt.base, s.idt.limit) = if self.has_idt() { (trap_page::IDT_BASE, trap_page::IDT_LIMIT) } else { (0, 0) };
    }
}

/// Whether KVM's CPUID says the vCPU is AMD's (or Hygon's, which is AMD's design): SVM rather than VMX underneath.
pub fn amd_cpu(cpuid: &CpuId) -> bool {
    const AUTHENTIC_AMD_EBX: u32 = u32::from_le_bytes(*b"Auth");
    const HYGON_GENUINE_EBX: u32 = u32::from_le_bytes(*b"Hygo");
    cpuid.as_slice().iter().any(|e| e.function == 0 && (e.ebx == AUTHENTIC_AMD_EBX || e.ebx == HYGON_GENUINE_EBX))
}

/// Measures the host kind on `vcpu`, whose special registers are set for CPL 3 with the boot page tables (in which
/// `syscall_at`, the probe's `syscall` in the trap page's direct-map alias, is user-executable). Leaves LSTAR at the
/// probe's target: the caller sets every register afterwards.
pub fn probe(vcpu: &mut VcpuFd, syscall_at: u64, amd: bool) -> Result<HostKind, ProbeError> {
    vcpu.set_msrs(&super::msrs(trap_page::PROBE_LSTAR)).map_err(|e| ProbeError::Kvm("set MSRs", e))?;
    let regs = kvm_regs { rip: syscall_at, rflags: 0x2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(|e| ProbeError::Kvm("set registers", e))?;
    loop {
        return match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => Err(ProbeError::Kvm("run the probe", e)),
            Ok(VcpuExit::IoOut(trap_page::PROBE_PORT, _)) => Ok(HostKind::Hardware { amd }),
            Ok(VcpuExit::Shutdown) => {
                let rip = vcpu.get_regs().map_err(|e| ProbeError::Kvm("read registers", e))?.rip;
                if rip == trap_page::PROBE_LSTAR {
                    Ok(HostKind::Paravirtual)
                } else {
                    Err(ProbeError::Unknown(format!("a shutdown at {rip:#x}")))
                }
            }
            Ok(other) => Err(ProbeError::Unknown(format!("{other:?}"))),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tr_type_and_idt_follow_the_host() {
        let mut s = kvm_sregs::default();
        HostKind::Hardware { amd: true }.fix(&mut s);
        assert_eq!((s.tr.type_, s.idt.base, s.idt.limit), (9, trap_page::IDT_BASE, trap_page::IDT_LIMIT));
        HostKind::Hardware { amd: false }.fix(&mut s);
        assert_eq!((s.tr.type_, s.idt.base), (11, trap_page::IDT_BASE));
        HostKind::Paravirtual.fix(&mut s);
        assert_eq!((s.tr.type_, s.idt.base, s.idt.limit), (11, 0, 0));
    }
}
