//! The launch specification: everything the VMM is given, resolved.

use crate::network::Network;
use kiln_image::Digest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Guest memory when neither `--memory` nor the image says.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// Seconds a program has to take a stop signal (`--stop-timeout`) when nothing says.
pub const DEFAULT_STOP_TIMEOUT: u32 = 10;

/// Where the program and its library OS come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An image in the store, by id: a tag moved after resolving changes nothing.
    Image { id: Digest },
    /// A Linux executable on the host, run on the library OS built into the launcher.
    Program { path: PathBuf },
    /// A container's root filesystem, unpacked on the host (a containerd bundle's `rootfs`): the guest's root
    /// filesystem is this tree, and the program is its file at `exe_path`, on the launcher's library OS.
    Bundle { rootfs: PathBuf },
}

/// What happens to a stop signal (SIGINT, SIGTERM, SIGQUIT) the launcher gets: it is forwarded to the program, which
/// has `grace_secs` to take it before the VM is stopped (as `docker stop` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    pub grace_secs: u32,
}

/// One VM launch, resolved from an image or a program and the run flags by [`crate::resolve`]: the launcher hands
/// this to the VMM and nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub source: Source,
    /// How the user named the image or program, for messages.
    pub shown: String,
    /// A short name for instances of it: the image's name, or the program's file name.
    pub name: String,
    /// The program's path as the program sees it (`/proc/self/exe`).
    pub exe_path: String,
    pub argv: Vec<String>,
    /// `KEY=VALUE`: all the program sees.
    pub env: Vec<String>,
    /// The directory the program starts in, absolute; empty for the root.
    pub workdir: String,
    /// Guest memory in bytes.
    pub memory: u64,
    pub cpus: u32,
    pub network: Network,
    /// Volumes by name and where the guest mounts them, in mount order (checked: at most
    /// `kiln_abi::boot::MAX_VOLUMES`, no name twice, no mount path inside another).
    pub volumes: Vec<(String, String)>,
    /// Volume files by host path and where the guest mounts them, after `volumes` (a container's writable mounts,
    /// each an ext2 image the containerd shim made: docs/kubernetes.md).
    #[serde(default)]
    pub volume_files: Vec<(PathBuf, String)>,
    /// Host files (host path, guest path) put into the guest's root filesystem, after the image's files.
    pub files: Vec<(PathBuf, String)>,
    /// Host directories (host path, guest path) put, recursively, into the guest's root filesystem.
    pub dirs: Vec<(PathBuf, String)>,
    /// Print every syscall to stderr, and a summary at exit.
    pub trace_syscalls: bool,
    /// Print VM exits and syscall counts to stderr at exit.
    pub stats: bool,
    pub signals: Signals,
    /// Where a crash writes an ELF core file (`kiln run --core`), absolute; None for none.
    #[serde(default)]
    pub core_file: Option<PathBuf>,
    /// The VMM threads' seccomp allow-lists (`--seccomp`); on unless the launcher says otherwise.
    #[serde(default)]
    pub seccomp: Seccomp,
    /// RLIMIT_NOFILE (soft, hard) the program starts with (a container's `process.rlimits`); none for the library
    /// OS's own.
    #[serde(default)]
    pub nofile: Option<(u64, u64)>,
}

/// `--seccomp`: what a VMM thread's filter does with a syscall its list lacks (`kiln_seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// Stop the VMM with a line naming the thread and the call.
    #[default]
    On,
    /// No filters (for debugging; warned about).
    Off,
    /// Let the call through and have the kernel log it (audit, dmesg): for finding what a thread needs.
    Log,
}

impl Seccomp {
    pub fn mode(self) -> kiln_seccomp::Mode {
        match self {
            Seccomp::On => kiln_seccomp::Mode::Trap,
            Seccomp::Off => kiln_seccomp::Mode::Off,
            Seccomp::Log => kiln_seccomp::Mode::Log,
        }
    }
}

impl LaunchSpec {
    /// The image's id, if the program comes from one.
    pub fn image_id(&self) -> Option<&Digest> {
        match &self.source {
            Source::Image { id } => Some(id),
            Source::Program { .. } | Source::Bundle { .. } => None,
        }
    }
}
