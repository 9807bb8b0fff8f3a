//! One vCPU's state as a snapshot keeps it: what KVM holds for a vCPU of Kiln's guest, which runs at CPL 3 with no
//! interrupt controller: general and special registers, pending events, the extended (FPU/SSE/AVX) state and XCR0,
//! and the MSRs Kiln sets or the guest can change. The guest TSC is the VM's, kept once (`super::MachineState`).

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// The MSRs kept: `syscall`'s targets and mask (set at boot) and the one base register `swapgs` exchanges.
const KEPT_MSRS: [u32; 5] = [0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102];
/// Words in `kvm_xsave`'s legacy 4 KiB region.
const XSAVE_WORDS: usize = 1024;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub events: kvm_vcpu_events,
    pub xcrs: kvm_xcrs,
    /// `kvm_xsave`'s region, as words.
    pub xsave: Vec<u32>,
    pub msrs: Vec<(u32, u64)>,
    /// The guest's TSC when the state was read.
    pub tsc: u64,
}

type Failed = (&'static str, kvm_ioctls::Error);

impl VcpuState {
    /// Reads the state of `vcpu`, which is out of KVM_RUN on this thread; `regs`, `sregs` and `events` are the ones
    /// it exited with (`crate::exit_state::read`).
    pub fn capture(
        vcpu: &VcpuFd,
        (regs, sregs, events): (kvm_regs, kvm_sregs, kvm_vcpu_events),
    ) -> Result<VcpuState, Failed> {
        let xsave = vcpu.get_xsave().map_err(|e| ("read the extended (FPU/SSE/AVX) state", e))?;
        let xcrs = vcpu.get_xcrs().map_err(|e| ("read XCR0", e))?;
        let entries: Vec<kvm_msr_entry> = KEPT_MSRS
            .iter()
            .chain(&[crate::arch::MSR_IA32_TSC])
            .map(|&index| kvm_msr_entry { index, ..Default::default() })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).expect("six MSR entries fit");
        let read = vcpu.get_msrs(&mut msrs).map_err(|e| ("read MSRs", e))?;
        let mut msrs: Vec<(u32, u64)> = msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)).collect();
        let tsc = msrs.iter().position(|&(i, _)| i == crate::arch::MSR_IA32_TSC).map_or(0, |at| msrs.remove(at).1);
        Ok(VcpuState { regs, sregs, events, xcrs, xsave: xsave.region.to_vec(), msrs, tsc })
    }

    /// Whether the state is one Kiln could have written: sizes it can load, MSRs it keeps. Checked before any of it
    /// reaches KVM.
    pub fn check(&self) -> Result<(), String> {
        if self.xsave.len() != XSAVE_WORDS {
            return Err(format!("its extended state has {} words, not {XSAVE_WORDS}", self.xsave.len()));
        }
        if self.msrs.len() > KEPT_MSRS.len() || self.msrs.iter().any(|(i, _)| !KEPT_MSRS.contains(i)) {
            return Err("it holds MSRs Kiln does not keep".into());
        }
        if self.xcrs.nr_xcrs as usize > self.xcrs.xcrs.len() {
            return Err("its XCR count is out of range".into());
        }
        Ok(())
    }

    /// Loads the state into `vcpu`, a new vCPU that has not run: special registers first (they switch the mode the
    /// rest is read in), then everything else, with the guest TSC at `tsc`.
    pub fn load(&self, vcpu: &VcpuFd, tsc: u64) -> Result<(), Failed> {
        vcpu.set_sregs(&self.sregs).map_err(|e| ("set special registers", e))?;
        let mut xsave = kvm_xsave::default();
        xsave.region.copy_from_slice(&self.xsave);
        // SAFETY: `xsave` is a whole `kvm_xsave` (the legacy 4 KiB region KVM_SET_XSAVE reads), filled from a state
        // this host's KVM wrote (the snapshot is checked to come from a VM of the same host kind).
        unsafe { vcpu.set_xsave(&xsave) }.map_err(|e| ("set the extended (FPU/SSE/AVX) state", e))?;
        vcpu.set_xcrs(&self.xcrs).map_err(|e| ("set XCR0", e))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .chain(&[(crate::arch::MSR_IA32_TSC, tsc)])
            .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| ("set MSRs", kvm_ioctls::Error::new(libc::E2BIG)))?;
        vcpu.set_msrs(&msrs).map_err(|e| ("set MSRs", e))?;
        vcpu.set_regs(&self.regs).map_err(|e| ("set registers", e))?;
        vcpu.set_vcpu_events(&self.events).map_err(|e| ("set vCPU events", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_survives_its_encoding_and_bad_ones_are_refused() {
        let mut state = VcpuState { xsave: vec![7; XSAVE_WORDS], msrs: vec![(0xc000_0082, 42)], ..Default::default() };
        state.regs.rip = 0x401000;
        state.sregs.fs.base = 0x7000;
        let text = serde_json::to_string(&state).unwrap();
        let back: VcpuState = serde_json::from_str(&text).unwrap();
        assert_eq!((back.regs.rip, back.sregs.fs.base, back.msrs.clone()), (0x401000, 0x7000, vec![(0xc000_0082, 42)]));
        assert!(back.check().is_ok());
        let short = VcpuState { xsave: vec![0; 10], ..back.clone() };
        assert!(short.check().unwrap_err().contains("10 words"));
        let foreign = VcpuState { msrs: vec![(0x10, 1)], ..back };
        assert!(foreign.check().is_err());
    }
}
