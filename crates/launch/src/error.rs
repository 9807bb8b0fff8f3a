//! What can go wrong resolving and loading a launch, each a one-line message that names the subject first (the
//! program, the image, or the flag). Wrapping variants print only their own part: the launcher prints the chain.

use crate::network::NetworkError;
use kiln_image::StoreError;

/// A host program that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("{0}: no such file")]
    NoSuchFile(String),
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    #[error("{0}: is a directory, not a program")]
    IsDirectory(String),
    #[error("cannot read {shown}")]
    Read {
        shown: String,
        #[source]
        source: std::io::Error,
    },
}

/// A container bundle whose program cannot be found in its root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the container has no program: its process.args is empty")]
    NoArgs,
    #[error("{0}: no such file in the container's root filesystem")]
    NoProgram(String),
    #[error("{0}: not found in the container's PATH ({1})")]
    NotInPath(String, String),
}

/// An image whose settings this launcher cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("it was built by kiln {built_by} for boot protocol {built_for}, and this kiln boots protocol {ours}; build it again")]
    BootVersion { built_by: String, built_for: u32, ours: u32 },
    #[error("its volume: {0}")]
    Volume(String),
    #[error("its port {port}: {problem}")]
    Port { port: String, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("{0}: no such image (kiln images lists them) or file")]
    NoSuchImageOrFile(String),
    #[error("image {shown}")]
    Image {
        shown: String,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A flag's value that its own parser would have refused (from a launcher without a command line).
    #[error("{flag}: {problem}")]
    Flag { flag: &'static str, problem: String },
    #[error("--cpus {0} is out of range: Kiln runs 1 to {max} vCPUs", max = kiln_vmm::vm::MAX_VCPUS)]
    Cpus(u32),
    #[error("-v: at most {max} volumes per instance", max = kiln_abi::boot::MAX_VOLUMES)]
    TooManyVolumes,
    #[error("-v: volume {0} is given twice")]
    VolumeTwice(String),
    #[error("-v: mount paths {0} and {1} overlap")]
    MountsOverlap(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("{0}: no such image: it was removed after kiln run -d named it")]
    Removed(String),
    #[error("image {shown}")]
    Image {
        shown: String,
        #[source]
        source: StoreError,
    },
    #[error("{0}: no image store to read it from: set KILN_HOME (or HOME)")]
    NoStore(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// A launch that could not be made ready to run: the resolved spec met the host (files, devices, ports, volumes)
/// or the VMM.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    NoHome(#[from] crate::home::NoHome),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] kiln_vmm::rootfs::RootfsError),
    #[error("the image's root filesystem")]
    ImageRootfs(#[source] kiln_vmm::rootfs::RootfsError),
    #[error("the container's root filesystem {}", .0.display())]
    BundleRootfs(std::path::PathBuf, #[source] kiln_vmm::rootfs::RootfsError),
    /// `--file` or `--dir` HOST:GUEST that could not be copied in.
    #[error("{flag} {host}:{guest}")]
    Copy {
        flag: &'static str,
        host: String,
        guest: String,
        #[source]
        source: kiln_vmm::rootfs::RootfsError,
    },
    #[error("--workdir {workdir}: {path} is a file, not a directory")]
    WorkdirIsFile { workdir: String, path: String },
    #[error("{0}: dynamically linked")]
    Dynamic(String, #[source] kiln_vmm::dynamic::DynamicError),
    #[error("cannot read {}", .0.display())]
    ReadObject(std::path::PathBuf, #[source] std::io::Error),
    #[error("{} is not a usable shared object", .0.display())]
    NotAnObject(std::path::PathBuf, #[source] kiln_vmm::elf::ElfError),
    #[error("{}", .0.display())]
    Needed(std::path::PathBuf, #[source] kiln_vmm::dynamic::DynamicError),
    #[error("--net tap:{0}")]
    Tap(String, #[source] kiln_vmm::virtio::tap::TapError),
    #[error(transparent)]
    UserNet(#[from] kiln_usernet::UserNetError),
    #[error("cannot get random bytes for a MAC address")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    /// The VMM refused the program (its message, after the program's name).
    #[error("{shown}: {problem}")]
    Program { shown: String, problem: String },
    #[error("--memory {memory} is too small: Kiln needs at least {minimum}", memory = mebibytes(*.memory), minimum = mebibytes(*.minimum))]
    MemoryTooSmall { memory: u64, minimum: u64 },
    #[error("{shown} (with its files) does not fit in {} of guest memory; give it more with --memory (e.g. --memory {}M)", mebibytes(*.memory), (.memory * 2).div_ceil(1 << 20).max(256))]
    DoesNotFit { shown: String, memory: u64 },
    #[error(transparent)]
    Vm(kiln_vmm::VmError),
    #[error(transparent)]
    Export(kiln_vmm::export::ExportError),
}

impl LaunchError {
    pub(crate) fn copy(
        flag: &'static str,
        host: &std::path::Path,
        guest: &str,
        source: kiln_vmm::rootfs::RootfsError,
    ) -> Self {
        LaunchError::Copy { flag, host: host.display().to_string(), guest: guest.to_string(), source }
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// An error and its sources on one line, "what: why: root cause", as launchers print them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line += &format!(": {s}");
        source = s.source();
    }
    line
}
