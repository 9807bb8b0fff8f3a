//! What the host's KVM does with a guest that runs at CPL 3 and has no CPL 0 code: the one place that knows.
//!
//! Measured on `kvm_pvm` (our development and CI hosts, see ../shared/probes): a `syscall` at CPL 3 does not switch to
//! CPL 0; the vCPU shuts down at LSTAR. An exception at CPL 3 cannot be delivered either (there is no IDT), and ends
//! in a shutdown (triple fault) with the vCPU state still describing the faulting instruction. On hardware KVM the same
//! two events end in a triple fault too, because the IDT is empty, except that an unrewritten `syscall` runs the trap
//! page at CPL 0 and reports itself through `UNREWRITTEN_SYSCALL_PORT`.
//!
//! A vCPU that shut down this way can be run again: KVM leaves its state as it was, so the VMM sets new registers and
//! resumes it in the library OS, which runs the program's handler for the fault (`crate::fault`, `vm.rs`). After a
//! trap-type exception (`int3`) %rip already points past the instruction. On hardware KVM a triple fault also leaves
//! the vCPU resumable (QEMU resets it, but need not).
//!
//! Port I/O from CPL 3 (our hypercalls) is checked against the TSS I/O permission bitmap on kvm_pvm even when
//! RFLAGS.IOPL is 3, and a 4-byte `out` needs all four ports' bits clear. So Kiln runs with IOPL 0 and a bitmap that
//! opens only the hypercall ports; this is also what hardware does, so one setup serves both.
