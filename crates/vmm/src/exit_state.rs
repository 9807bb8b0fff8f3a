//! A vCPU's registers as it left KVM_RUN, and the ones it is to resume with, for the exits that redirect it to the
//! library OS (a time slice's end, a signal for a running thread, a fault the program handles).
//!
//! Where KVM offers it (`KVM_CAP_SYNC_REGS`), it copies the registers, special registers and pending events into the
//! vCPU's `kvm_run` page at every exit and takes registers marked dirty from there at the next entry, so that these
//! exits make no ioctl of their own. That matters on `kvm_pvm`: every vCPU ioctl loads the vCPU, which reads a host
//! MSR (a trap to the hypervisor underneath, ~15 us on these nested hosts), and the three reads and one write had been
//! more than half of what ending a time slice cost (~120 us, `docs/benchmarks.md`). Elsewhere each is an ioctl.

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuFd};

/// The parts of the state KVM is asked to copy out at every exit.
const WANTED: [SyncReg; 3] = [SyncReg::Register, SyncReg::SystemRegister, SyncReg::VcpuEvents];

/// Whether KVM copies all of [`WANTED`] into `kvm_run`.
pub fn supported(kvm: &Kvm) -> bool {
    let fields = kvm.check_extension_int(Cap::SyncRegs).max(0) as u64;
    WANTED.iter().all(|&reg| fields & reg as u64 != 0)
}

/// Asks KVM to copy the state out at every exit of `vcpu` from now on.
pub fn sync(vcpu: &mut VcpuFd) {
    for reg in WANTED {
        vcpu.set_sync_valid_reg(reg);
    }
}

/// Stops the copying [`sync`] asked for (a host where it does not pay: `HostKind::syncs_exit_state`).
pub fn unsync(vcpu: &mut VcpuFd) {
    for reg in WANTED {
        vcpu.clear_sync_valid_reg(reg);
    }
}

/// The state of a vCPU that has just left KVM_RUN: `synced` when [`sync`] was called for it.
pub fn read(
    vcpu: &VcpuFd,
    synced: bool,
) -> Result<(kvm_regs, kvm_sregs, kvm_vcpu_events), (&'static str, kvm_ioctls::Error)> {
    if synced {
        let s = vcpu.sync_regs();
        return Ok((s.regs, s.sregs, s.events));
    }
    let regs = vcpu.get_regs().map_err(|e| ("read registers", e))?;
    let sregs = vcpu.get_sregs().map_err(|e| ("read special registers", e))?;
    let events = vcpu.get_vcpu_events().map_err(|e| ("read vCPU events", e))?;
    Ok((regs, sregs, events))
}

/// The registers of a vCPU that has just left KVM_RUN (`synced` as for [`read`]).
pub fn regs(vcpu: &VcpuFd, synced: bool) -> Result<kvm_regs, (&'static str, kvm_ioctls::Error)> {
    match synced {
        true => Ok(vcpu.sync_regs().regs),
        false => vcpu.get_regs().map_err(|e| ("read registers", e)),
    }
}

/// Sets the registers `vcpu` resumes with at its next KVM_RUN.
pub fn set_regs(vcpu: &mut VcpuFd, synced: bool, regs: &kvm_regs) -> Result<(), (&'static str, kvm_ioctls::Error)> {
    if synced {
        vcpu.sync_regs_mut().regs = *regs;
        vcpu.set_sync_dirty_reg(SyncReg::Register);
        return Ok(());
    }
    vcpu.set_regs(regs).map_err(|e| ("set registers", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KVM_RUN with `immediate_exit` set returns EINTR before entering the guest, as a kick does, and still copies
    /// the state out and takes the dirty registers in: enough to check both ways without guest code.
    fn kicked_run(vcpu: &mut VcpuFd) {
        vcpu.set_kvm_immediate_exit(1);
        let errno = vcpu.run().map(|_| 0).unwrap_or_else(|e| e.errno());
        vcpu.set_kvm_immediate_exit(0);
        assert_eq!(errno, libc::EINTR);
    }

    #[test]
    fn synced_state_is_what_the_ioctls_read_and_set() {
        let kvm = Kvm::new().expect("open /dev/kvm");
        if !supported(&kvm) {
            eprintln!("KVM_CAP_SYNC_REGS is missing here: exits read the state with ioctls");
            return;
        }
        let vm = kvm.create_vm().expect("create a VM");
        let mut vcpu = vm.create_vcpu(0).expect("create a vCPU");
        let mut start = vcpu.get_regs().unwrap();
        (start.rip, start.rax, start.rflags) = (0x1234, 7, 0x2);
        vcpu.set_regs(&start).unwrap();
        sync(&mut vcpu);
        kicked_run(&mut vcpu);

        let (synced_regs, synced_sregs, synced_events) = read(&vcpu, true).unwrap();
        let (ioctl_regs, ioctl_sregs, _) = read(&vcpu, false).unwrap();
        assert_eq!((synced_regs.rip, synced_regs.rax), (0x1234, 7));
        assert_eq!(synced_regs, ioctl_regs);
        assert_eq!(
            (synced_sregs.cs, synced_sregs.cr0, synced_sregs.efer),
            (ioctl_sregs.cs, ioctl_sregs.cr0, ioctl_sregs.efer)
        );
        assert_eq!(synced_events.exception.pending, 0);
        assert_eq!(regs(&vcpu, true).unwrap(), ioctl_regs);

        let moved = kvm_regs { rip: 0x5678, rsp: 0x9000, rflags: 0x2, ..Default::default() };
        set_regs(&mut vcpu, true, &moved).unwrap();
        assert_eq!(vcpu.get_regs().unwrap().rip, 0x1234, "taken at the next entry, not before");
        kicked_run(&mut vcpu);
        let now = vcpu.get_regs().unwrap();
        assert_eq!((now.rip, now.rsp, now.rax), (0x5678, 0x9000, 0));
    }
}
