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
}
