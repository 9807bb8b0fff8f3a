//! kiln-launch: what a VM is launched with, resolved once.
//!
//! Every launcher (`kiln run`, a detached instance, and later a daemon and a containerd shim) turns what it was asked
//! for into one [`LaunchSpec`] with [`resolve`]: an image from the store or a host program, with the run flags
//! ([`Overrides`]) on top. All the checking of flags and image settings happens there, once, with one-line errors
//! that say what is wrong and where. The spec is a plain value (serde), so a detached instance records it and is
//! launched again from the record, never from its flags. [`load`] then reads the bytes the spec names (the library
//! OS, the program, an image's root filesystem), each blob checked against its digest, and [`prepare`] makes the VM:
//! root filesystem, network card, volumes. The launcher runs it, with its own console and signal handling.

mod boot;
pub mod bundle;
mod card;
pub mod dynamic;
mod ending;
mod error;
mod export;
mod guest_fs;
pub mod home;
mod load;
pub mod network;
mod overrides;
mod resolve;
mod spec;
pub mod volumes;

pub use boot::{prepare, prepare_on, restore, restore_on, Prepared};
pub use ending::{ending, Ending, DEADLOCK_EXIT, KILN_ERROR};
pub use error::{chain, BundleError, ImageError, LaunchError, LoadError, ProgramError, ResolveError};
pub use export::export_pvh;
pub use load::{image_rootfs, load, Loaded};
pub use overrides::{check_volume_name, parse_env, parse_mapping, parse_mount, parse_workdir, Overrides};
pub use resolve::{merged_env, merged_volumes, resolve, resolve_image, resolve_program};
pub use spec::{LaunchSpec, Seccomp, Signals, Source, DEFAULT_MEMORY, DEFAULT_STOP_TIMEOUT};
