//! Snapshots: a running VM paused at a quiescent point (every vCPU out of KVM_RUN at the top of its loop, the network
//! card's queues still) and written to one file: a versioned header, the machine's state (vCPUs, the boot layout the
//! VMM keeps, devices, the launcher's own description) and guest RAM, only the pages the guest touched, at their
//! guest-physical offset past a 2 MiB boundary, the rest a hole. A restore copies those pages into the new VM's RAM
//! (a large snapshot's are mapped privately instead, to come in as the guest touches them: see `fill.rs`).
//!
//! Kiln's guest is a library OS at CPL 3 with no interrupt controller: guest RAM and the vCPUs' registers are the
//! whole guest, its TCP/IP stack and its sockets included. The VMM's side is the network card's queue positions
//! (kept) and its backend (the launcher makes a new one: see `docs/snapshots.md`), and each volume's queue positions
//! and its file's identity (the file is not copied: a restore needs it unchanged, `volume.rs`).

mod file;
mod fill;
mod pages;
pub(crate) mod pause;
mod restore;
pub mod vcpu_state;
pub mod volume;

pub use file::{read_header, Header, FORMAT_VERSION, MAGIC};
pub use restore::{Opened, Reattached};

use crate::arch::HostKind;
use crate::boot::BootState;
use crate::virtio::state::TransportState;
use serde::{Deserialize, Serialize};
use vcpu_state::VcpuState;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {what}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot load the snapshot's memory")]
    Load {
        path: String,
        #[source]
        source: crate::memory::MemoryError,
    },
    #[error("{path} is not a Kiln snapshot: {why}")]
    NotASnapshot { path: String, why: String },
    #[error("{path} is a Kiln snapshot of format version {found}; this kiln reads version {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("{path} is damaged: {why}")]
    Damaged { path: String, why: String },
    #[error("{path} cannot be restored here: {why}")]
    Foreign { path: String, why: String },
    #[error(
        "{path} cannot be restored: volume {name} {why}; a snapshot does not hold its volumes' contents, so a restore \
         needs each volume as it was when the snapshot was taken"
    )]
    VolumeChanged { path: String, name: String, why: String },
    #[error("volume {name}: {what}")]
    Volume {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot snapshot this VM: {0}")]
    Unsupported(String),
    #[error("cannot snapshot the VM: {0}")]
    NotQuiescent(String),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Everything of a VM but its RAM, as the file's state section holds it (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    pub memory: u64,
    pub host: HostKind,
    /// The guest TSC's rate and its value when the snapshot was taken, with the host's wall clock then (ns since the
    /// Unix epoch): a restore sets the TSC on by the wall-clock time that passed, so the guest's clocks stay true.
    pub tsc_hz: u64,
    pub guest_tsc: u64,
    pub taken_unix_ns: u64,
    pub trace_syscalls: bool,
    pub boot: BootState,
    pub vcpus: Vec<VcpuState>,
    pub net: Option<TransportState>,
    /// The volumes, in the order the VM has them (absent from the files of a kiln before they were kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<volume::VolumeState>,
    /// What a crash's core file says of the program (absent from the files of a kiln before it was kept: a restored
    /// VM's core file then names no program file mappings).
    #[serde(default)]
    pub core_program: crate::core_dump::CoreProgram,
    /// The launcher's description of the instance (kiln keeps its launch specification), opaque to the VMM.
    pub launch: serde_json::Value,
    /// The CPUID the vCPUs were given (absent from the files of a kiln before it was kept): a restore gives them the
    /// same, so the guest's view of the CPU does not change, without asking KVM again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuid: Option<Vec<CpuidLeaf>>,
}

/// One CPUID entry as KVM takes it (`kvm_cpuid_entry2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidLeaf {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl CpuidLeaf {
    pub(crate) fn all_of(cpuid: &kvm_bindings::CpuId) -> Vec<CpuidLeaf> {
        let leaf = |e: &kvm_bindings::kvm_cpuid_entry2| CpuidLeaf {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        };
        cpuid.as_slice().iter().map(leaf).collect()
    }

    /// KVM's form of `leaves`, or `None` if there are more than KVM takes.
    pub(crate) fn to_kvm(leaves: &[CpuidLeaf]) -> Option<kvm_bindings::CpuId> {
        let entries: Vec<_> = leaves
            .iter()
            .map(|l| kvm_bindings::kvm_cpuid_entry2 {
                function: l.function,
                index: l.index,
                flags: l.flags,
                eax: l.eax,
                ebx: l.ebx,
                ecx: l.ecx,
                edx: l.edx,
                ..Default::default()
            })
            .collect();
        if entries.len() > kvm_bindings::KVM_MAX_CPUID_ENTRIES {
            return None;
        }
        kvm_bindings::CpuId::from_entries(&entries).ok()
    }
}

/// What a snapshot wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes of guest RAM written (pages the guest touched and not all zero).
    pub memory_bytes: u64,
    /// The file's length (most of it holes).
    pub file_len: u64,
}

/// What a caller asks a running VM for.
#[derive(Debug)]
pub struct Request {
    pub path: std::path::PathBuf,
    /// Whether the VM runs on afterwards (else it ends, with [`crate::Outcome::Snapshotted`]).
    pub keep_running: bool,
    /// The launcher's description, kept in the file for the restore.
    pub launch: serde_json::Value,
}

fn io_err<'a>(path: &'a std::path::Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { path: path.display().to_string(), what, source }
}

pub(crate) use file::write;
pub(crate) use pages::touched;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_leaves_go_to_kvm_and_back_and_too_many_are_refused() {
        let leaf = CpuidLeaf { function: 7, index: 1, flags: 1, eax: 2, ebx: 3, ecx: 4, edx: 5 };
        let kvm = CpuidLeaf::to_kvm(&[leaf; 3]).unwrap();
        assert_eq!(CpuidLeaf::all_of(&kvm), vec![leaf; 3]);
        assert!(CpuidLeaf::to_kvm(&vec![leaf; kvm_bindings::KVM_MAX_CPUID_ENTRIES + 1]).is_none());
    }
}
