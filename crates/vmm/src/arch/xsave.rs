//! The extended state the program may use: of the components that user code manages (x87, SSE, AVX, AVX-512), those
//! the host's KVM offers are enabled in every vCPU (CR4.OSXSAVE and XCR0), so that CPUID tells the program it may
//! use them and the registers are whole wherever they are saved. The library OS is told the set and the size of the
//! standard-format XSAVE area that holds it (`BootInfo::xsave_features`), which it saves where it switches away from
//! a thread it interrupted and puts in signal frames, as Linux does.

use kvm_bindings::{kvm_xcrs, CpuId};
use kvm_ioctls::VcpuFd;

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
/// AVX-512's opmask, ZMM_Hi256 and Hi16_ZMM: enabled together or not at all.
const AVX512: u64 = 0b111 << 5;
/// CPUID.1:ECX.XSAVE and OSXSAVE.
const CPUID_XSAVE: u32 = 1 << 26;
const CPUID_OSXSAVE: u32 = 1 << 27;
/// The legacy region and the XSAVE header: the area's size with x87 and SSE alone.
const LEGACY_AND_HEADER: u64 = 576;

/// The components enabled and the size of the area that holds them; both 0 where the host has no XSAVE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Xsave {
    pub features: u64,
    pub size: u64,
}

impl Xsave {
    /// What `cpuid` (KVM_GET_SUPPORTED_CPUID, which the vCPUs are then given) offers: leaf 0xD for the components
    /// and their places, where the CPU has XSAVE. On `kvm_pvm`, leaf 1 lacks XSAVE although leaf 0xD offers
    /// components and the host's CPU has it (the program runs on the host's XCR0 there): `cpuid` is given it, as KVM
    /// refuses CR4.OSXSAVE to a vCPU whose CPUID lacks XSAVE.
    pub fn configure(cpuid: &mut CpuId) -> Xsave {
        let xsave = Xsave::of(cpuid, host_has_xsave());
        if xsave.features != 0 {
            cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1).for_each(|e| e.ecx |= CPUID_XSAVE);
        }
        xsave
    }

    fn of(cpuid: &CpuId, host_has_xsave: bool) -> Xsave {
        let leaf = |function: u32, index: u32| {
            cpuid.as_slice().iter().find(|e| e.function == function && (function != 0xd || e.index == index))
        };
        let has_xsave = host_has_xsave || leaf(1, 0).is_some_and(|e| e.ecx & CPUID_XSAVE != 0);
        let Some(components) = leaf(0xd, 0).filter(|_| has_xsave) else { return Xsave::default() };
        let offered = u64::from(components.eax) | u64::from(components.edx) << 32;
        let features = usable(offered);
        let size = (2..64)
            .filter(|i| features & (1 << i) != 0)
            .filter_map(|i| leaf(0xd, i))
            .map(|e| u64::from(e.ebx) + u64::from(e.eax))
            .fold(LEGACY_AND_HEADER, u64::max);
        match features {
            0 => Xsave::default(),
            _ => Xsave { features, size },
        }
    }

    /// Sets XCR0 of `vcpu` (whose CR4.OSXSAVE [`super::sregs`] set); nothing where there is no XSAVE.
    pub fn enable(&self, vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
        if self.features == 0 {
            return Ok(());
        }
        let mut xcrs = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = self.features;
        vcpu.set_xcrs(&xcrs)
    }
}

/// Whether this process's CPU has XSAVE enabled (CPUID.1:ECX.OSXSAVE: its kernel uses it).
fn host_has_xsave() -> bool {
    std::arch::x86_64::__cpuid(1).ecx & CPUID_OSXSAVE != 0
}

/// Of the components `offered`, those user code may have, in a combination XSETBV takes (x87 always, SSE for AVX,
/// AVX for AVX-512, AVX-512's three together); none without x87 and SSE.
fn usable(offered: u64) -> u64 {
    let mut features = offered & (X87 | SSE | AVX | AVX512);
    if features & (X87 | SSE) != X87 | SSE {
        return 0;
    }
    if features & AVX == 0 || features & AVX512 != AVX512 {
        features &= !AVX512;
    }
    features
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn cpuid(entries: &[(u32, u32, u32, u32, u32, u32)]) -> CpuId {
        let entries: Vec<kvm_cpuid_entry2> = entries
            .iter()
            .map(|&(function, index, eax, ebx, ecx, edx)| kvm_cpuid_entry2 {
                function,
                index,
                eax,
                ebx,
                ecx,
                edx,
                ..Default::default()
            })
            .collect();
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn the_user_components_offered_are_enabled_and_sized() {
        // AVX at 576 (256 bytes), the AVX-512 parts up to 2,688, PKRU (not user-managed here) at 2,688.
        let avx512 = cpuid(&[
            (1, 0, 0, 0, CPUID_XSAVE, 0),
            (0xd, 0, 0x2e7, 2696, 2696, 0),
            (0xd, 2, 256, 576, 0, 0),
            (0xd, 5, 64, 1088, 0, 0),
            (0xd, 6, 512, 1152, 0, 0),
            (0xd, 7, 1024, 1664, 0, 0),
            (0xd, 9, 8, 2688, 0, 0),
        ]);
        assert_eq!(Xsave::of(&avx512, false), Xsave { features: 0xe7, size: 2688 });
        let avx = cpuid(&[(1, 0, 0, 0, CPUID_XSAVE, 0), (0xd, 0, 0x7, 832, 832, 0), (0xd, 2, 256, 576, 0, 0)]);
        assert_eq!(Xsave::of(&avx, false), Xsave { features: 0x7, size: 832 });
        let no_xsave = cpuid(&[(1, 0, 0, 0, 0, 0), (0xd, 0, 0x7, 832, 832, 0)]);
        assert_eq!(Xsave::of(&no_xsave, false), Xsave::default());
        // kvm_pvm's: leaf 1 without XSAVE, which the host's CPU has; the vCPUs are given it.
        let mut pvm = cpuid(&[(1, 0, 0, 0, 0, 0), (0xd, 0, 0x7, 832, 832, 0), (0xd, 2, 256, 576, 0, 0)]);
        assert_eq!(Xsave::of(&pvm, true), Xsave { features: 0x7, size: 832 });
        if host_has_xsave() {
            assert_eq!(Xsave::configure(&mut pvm).features, 0x7);
            assert_ne!(pvm.as_slice()[0].ecx & CPUID_XSAVE, 0);
        }
    }

    #[test]
    fn only_combinations_xsetbv_takes_are_enabled() {
        assert_eq!(usable(0x2ff), 0xe7);
        assert_eq!(usable(0x67), 0x7, "AVX-512 in part");
        assert_eq!(usable(0xe3), 0x3, "AVX-512 without AVX");
        assert_eq!(usable(0x1), 0, "no SSE");
    }
}
