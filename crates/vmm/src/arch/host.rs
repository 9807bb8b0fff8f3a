//! Which kind of KVM the VM runs on, and everything that differs between the kinds: the one place that knows.
//!
//! - **Paravirtual** (`kvm_pvm`, our development and CI hosts; see ../shared/probes): guest CPL 0 is emulated, about
//!   2,700x slower, and a `syscall` at CPL 3 jumps to LSTAR without switching to CPL 0 (the supervisor page there
//!   then faults, and the vCPU shuts down at LSTAR). An exception at
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
//! The kind is measured, once per VM before it boots ([`Probe`]): vCPU 0 runs a `syscall` at CPL 3 with LSTAR at
//! code that reports through a port. If that code ran at CPL 0, CPL 0 is reachable (hardware); if it ran at CPL 3,
//! where its `out` faults and the vCPU shuts down, it is `kvm_pvm`. One VM exit, on either kind. The probe has page
//! tables and code of its own in the top pages of guest RAM, which the boot layout leaves alone, so that it runs on a
//! thread of its own while the boot layout is built; its pages are zeroed before the library OS, which hands them out,
//! starts.
//!
//! Port I/O from CPL 3 (our hypercalls) is checked against the TSS I/O permission bitmap on kvm_pvm even when
//! RFLAGS.IOPL is 3, and a 4-byte `out` needs all four ports' bits clear. So Kiln runs with IOPL 0 and a bitmap that
//! opens only the hypercall ports; this is also what hardware does, so one setup serves both. The task register's
//! type differs: Intel's VM entry demands a busy TSS (11), as `ltr` leaves it; AMD's VMRUN and I/O check ignore the
//! type, but QEMU's emulation of that check (our nested-KVM CI, `tests/nested-kvm`) accepts only an available TSS
//! (9), and KVM on AMD reports TR busy in every KVM_GET_SREGS, so every KVM_SET_SREGS goes through [`HostKind::fix`].

use super::trap_page;
use crate::memory::{BootAllocator, GuestRam, MemoryError};
use kiln_abi::layout::{HUGE_PAGE_SIZE, PAGE_SIZE};
use kiln_abi::paging::{self, PTE_USER};
use kvm_bindings::{kvm_regs, kvm_sregs, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HostKind {
    /// `kvm_pvm`: CPL 0 emulated, no way from CPL 3 to CPL 0.
    Paravirtual,
    /// Hardware virtualisation: CPL 0 native. `amd` for SVM (AMD, Hygon), else VMX.
    Hardware { amd: bool },
}

const TSS_AVAILABLE: u8 = 9;
const TSS_BUSY: u8 = 11;

/// Bytes at the top of guest RAM that belong to the probe until it is done: its PML4, PDPT and PD, and its code.
pub const PROBE_BYTES: u64 = 4 * PAGE_SIZE;
/// Where the probe maps the top 2 MiB of RAM (one huge page); any address the boot layout does not matter here.
const PROBE_VADDR: u64 = HUGE_PAGE_SIZE;
const PROBE_LSTAR_OFFSET: u64 = 0x40;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot set up the host-kind probe in guest memory")]
    Memory(#[from] MemoryError),
    #[error("cannot map the host-kind probe: {0:?}")]
    Map(paging::MapError),
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

    /// The vector of the exception that shut a vCPU down, where the kind tells it: `kvm_pvm` leaves it in the vCPU's
    /// events (`exception.nr`, measured: 3 after an `int3`, 1 after a single step's trap, with neither `injected` nor
    /// `pending` set). Hardware KVM's stubs report vectors themselves (`arch::exception`), and a shutdown there is a
    /// triple fault.
    pub fn shutdown_vector(self, events: &kvm_bindings::kvm_vcpu_events) -> Option<u64> {
        match self {
            HostKind::Paravirtual => Some(u64::from(events.exception.nr)),
            HostKind::Hardware { .. } => None,
        }
    }

    /// Whether the VMM takes a vCPU's state from its `kvm_run` page (`KVM_CAP_SYNC_REGS`, [`crate::exit_state`])
    /// rather than by ioctls. It pays on `kvm_pvm`, where every vCPU ioctl costs ~15 us; on hardware KVM (checked
    /// under nested kvm-amd) faults the program handles went wrong with it, and an ioctl costs ~1 us there anyway.
    pub fn syncs_exit_state(self) -> bool {
        matches!(self, HostKind::Paravirtual)
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

/// The probe, written into the top [`PROBE_BYTES`] of guest RAM.
pub struct Probe {
    pml4: u64,
    code_phys: u64,
}

impl Probe {
    /// Writes page tables mapping the top 2 MiB of RAM (user, executable) and, in its last page, `syscall; ud2` and
    /// at [`PROBE_LSTAR_OFFSET`] the LSTAR target (`trap_page::report_through`). Nothing else reads that memory
    /// before [`Probe::finish`].
    pub fn write(ram: &mut GuestRam) -> Result<Probe, ProbeError> {
        let top = ram.size();
        let code_phys = top - PAGE_SIZE;
        let mut alloc = BootAllocator::new(top - PROBE_BYTES, code_phys);
        let pml4 = alloc.alloc(PAGE_SIZE)?;
        paging::map_huge_page(ram, &mut alloc, pml4, PROBE_VADDR, top - HUGE_PAGE_SIZE, PTE_USER)
            .map_err(ProbeError::Map)?;
        let mut code = vec![0x0f, 0x05, 0x0f, 0x0b];
        code.resize(PROBE_LSTAR_OFFSET as usize, 0xcc);
        code.extend_from_slice(&trap_page::report_through(trap_page::PROBE_PORT));
        ram.write(code_phys, &code)?;
        Ok(Probe { pml4, code_phys })
    }

    fn vaddr(&self, offset: u64) -> u64 {
        PROBE_VADDR + (self.code_phys % HUGE_PAGE_SIZE) + offset
    }

    /// Measures the host kind on `vcpu`, which has not run yet. Leaves the vCPU's registers to the caller to set.
    pub fn run(&self, vcpu: &mut VcpuFd, amd: bool) -> Result<HostKind, ProbeError> {
        let sregs = vcpu.get_sregs().map_err(|e| ProbeError::Kvm("read special registers", e))?;
        let sregs = super::sregs(HostKind::Paravirtual, sregs, self.pml4, (0, 0), super::Xsave::default());
        vcpu.set_sregs(&sregs).map_err(|e| ProbeError::Kvm("set special registers", e))?;
        let lstar = self.vaddr(PROBE_LSTAR_OFFSET);
        vcpu.set_msrs(&super::msrs(lstar)).map_err(|e| ProbeError::Kvm("set MSRs", e))?;
        let regs = kvm_regs { rip: self.vaddr(0), rflags: 0x2, ..Default::default() };
        vcpu.set_regs(&regs).map_err(|e| ProbeError::Kvm("set registers", e))?;
        run(vcpu, lstar, amd)
    }

    /// Gives the probe's pages back zeroed, as the library OS expects the memory it hands out.
    pub fn finish(self, ram: &GuestRam) -> Result<(), ProbeError> {
        Ok(ram.write(ram.size() - PROBE_BYTES, &[0; PROBE_BYTES as usize])?)
    }
}

/// Runs the probe to its one exit. The code at LSTAR reports through a port: on hardware it runs at CPL 0 and the port
/// exit comes; on `kvm_pvm` it runs at CPL 3 (the `syscall` jumped there without switching), where the `out` faults
/// and the vCPU shuts down in it.
fn run(vcpu: &mut VcpuFd, lstar: u64, amd: bool) -> Result<HostKind, ProbeError> {
    let exit = loop {
        match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(ProbeError::Kvm("run the probe", e)),
            Ok(VcpuExit::IoOut(trap_page::PROBE_PORT, _)) => break "the probe's port",
            Ok(VcpuExit::Shutdown) => break "a shutdown",
            Ok(other) => return Err(ProbeError::Unknown(format!("{other:?}"))),
        }
    };
    let rip = vcpu.get_regs().map_err(|e| ProbeError::Kvm("read registers", e))?.rip;
    let cpl = vcpu.get_sregs().map_err(|e| ProbeError::Kvm("read special registers", e))?.cs.selector & 3;
    let report = trap_page::report_through(trap_page::PROBE_PORT).len() as u64;
    match (exit, cpl) {
        _ if !(lstar..lstar + report).contains(&rip) => {
            Err(ProbeError::Unknown(format!("{exit} at {rip:#x}, not at LSTAR ({lstar:#x})")))
        }
        ("the probe's port", 0) => Ok(HostKind::Hardware { amd }),
        (_, 3) => Ok(HostKind::Paravirtual),
        _ => Err(ProbeError::Unknown(format!("{exit} at CPL {cpl}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_maps_its_code_user_executable_in_its_own_pages() {
        let mut ram = GuestRam::new(4 << 20).unwrap();
        let probe = Probe::write(&mut ram).unwrap();
        assert!(probe.pml4 >= ram.size() - PROBE_BYTES);
        let code = paging::translate(&ram, probe.pml4, probe.vaddr(0)).unwrap();
        assert!(code.user && !code.writable);
        assert_eq!(code.phys, ram.size() - PAGE_SIZE);
        assert_eq!(ram.read_vec(code.phys, 2).unwrap(), [0x0f, 0x05]);
        let lstar = paging::translate(&ram, probe.pml4, probe.vaddr(PROBE_LSTAR_OFFSET)).unwrap();
        let report = trap_page::report_through(trap_page::PROBE_PORT);
        assert_eq!(ram.read_vec(lstar.phys, report.len() as u64).unwrap(), report);
        probe.finish(&ram).unwrap();
        let top = ram.read_vec(ram.size() - PROBE_BYTES, PROBE_BYTES).unwrap();
        assert!(top.iter().all(|&b| b == 0));
    }

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
