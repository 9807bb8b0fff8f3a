//! VMs made ahead of time ([`ReadyMachine`]): the part of a VM that is the same for every VM of one shape (RAM size
//! and vCPU count) and costs system calls to make — the KVM VM, its RAM mapped and registered as its memory slot, its
//! vCPUs created — made before a launch or a restore asks for it (kilnd keeps a few: `--ready-vms`). What differs
//! between instances is all set by whoever takes it: the vCPUs' CPUID, registers and TSC, and the RAM's contents.
//!
//! Nothing of one instance can reach another through it: its RAM is a fresh anonymous mapping that no guest has run
//! in (it reads as zeros, as a VM made on demand does), its vCPUs have never run, and a ready machine is moved into
//! the one VM that takes it (it cannot be cloned) and ends with that VM.

use crate::memory::GuestRam;
use crate::vm::{huge_pages_for, kvm_err, open_kvm};
use crate::VmError;
use kiln_abi::layout::HUGE_PAGE_SIZE;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// The shape of a VM: what a ready machine must match to be used for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// RAM in bytes, a whole number of 2 MiB pages.
    pub memory: u64,
    pub cpus: u32,
}

impl Shape {
    /// The shape of a VM asked for with `memory` bytes and `cpus` vCPUs: its RAM rounded up to 2 MiB pages, as
    /// [`crate::Vm::new`] rounds it (a snapshot's RAM is rounded already).
    pub fn of(memory: u64, cpus: u32) -> Shape {
        Shape { memory: memory.div_ceil(HUGE_PAGE_SIZE).min(u64::MAX / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE, cpus }
    }
}

/// A KVM VM with its RAM registered at guest-physical 0 and its vCPUs created; no vCPU has run and none has its
/// CPUID yet.
pub struct ReadyMachine {
    // Dropped in this order: the vCPUs and the VM (whose memory slot points into `ram`) before the RAM is unmapped.
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) vm: VmFd,
    pub(crate) kvm: Kvm,
    pub(crate) ram: GuestRam,
    shape: Shape,
}

impl std::fmt::Debug for ReadyMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyMachine").field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl ReadyMachine {
    /// Makes a machine of `shape` (its memory a whole number of 2 MiB pages: [`Shape::of`]).
    pub fn make(shape: Shape) -> Result<ReadyMachine, VmError> {
        let Shape { memory, cpus } = shape;
        if memory == 0 || memory % HUGE_PAGE_SIZE != 0 {
            return Err(VmError::MemoryTooSmall { requested: memory, minimum: HUGE_PAGE_SIZE });
        }
        if cpus == 0 || cpus > crate::vm::MAX_VCPUS {
            return Err(VmError::Cpus(cpus));
        }
        let kvm = open_kvm()?;
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let ram = GuestRam::with_huge_pages(memory, huge_pages_for(memory))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: memory,
            userspace_addr: ram.host_base(),
            flags: 0,
        };
        // SAFETY: the region is `ram`'s own mapping, which lives as long as the VM: both are fields of this machine
        // and then of the `Vm` that takes it, where the VM fd is closed before the memory is unmapped.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("register guest memory"))?;
        let vcpus = (0..cpus)
            .map(|id| vm.create_vcpu(u64::from(id)).map_err(kvm_err("create a vCPU")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReadyMachine { vcpus, vm, kvm, ram, shape })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }
}

#[cfg(test)]
mod tests {
    use super::Shape;

    #[test]
    fn a_shape_rounds_memory_up_to_two_mib_pages() {
        assert_eq!(Shape::of(64 << 20, 1), Shape { memory: 64 << 20, cpus: 1 });
        assert_eq!(Shape::of(25 << 20, 2), Shape { memory: 26 << 20, cpus: 2 });
        assert_eq!(Shape::of(1, 1).memory, 2 << 20);
        assert_eq!(Shape::of(u64::MAX, 1).memory % (2 << 20), 0, "a whole page count even at the top");
    }
}
