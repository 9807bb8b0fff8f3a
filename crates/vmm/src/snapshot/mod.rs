//! Snapshots: a running VM paused at a quiescent point (every vCPU out of KVM_RUN at the top of its loop, the network
//! card's queues still) and written to one file: a versioned header, the machine's state (vCPUs, the boot layout the
//! VMM keeps, devices, the launcher's own description) and guest RAM, only the pages the guest touched, at their
//! guest-physical offset past a 2 MiB boundary, the rest a hole. A restore copies those pages into the new VM's RAM
//! (a large snapshot's are mapped privately instead, to come in as the guest touches them: see `fill.rs`).
//!
//! Kiln's guest is a library OS at CPL 3 with no interrupt controller: guest RAM and the vCPUs' registers are the
//! whole guest, its TCP/IP stack and its sockets included. The VMM's side is the network card's queue positions
//! (kept) and its backend (the launcher makes a new one: see `docs/snapshots.md`).

mod file;
mod fill;
mod pages;
pub(crate) mod pause;
mod restore;
pub mod vcpu_state;

pub use file::{read_header, Header, FORMAT_VERSION, MAGIC};
pub use restore::Opened;

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
    /// The launcher's description of the instance (kiln keeps its launch specification), opaque to the VMM.
    pub launch: serde_json::Value,
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
