//! kiln-image: what `kiln build` makes and `kiln run IMAGE` boots, and the instances `kiln run -d` starts.
//!
//! A project is described by its `Kiln.toml` ([`kiln_toml`]). An image is a JSON [`manifest`] naming blobs (the
//! library OS, the program, a read-only root filesystem) by their SHA-256; the manifest is a blob too, and its digest
//! is the image's id. Blobs, tags and instance records live in the [`store`] under `$KILN_HOME`; every blob is checked
//! against its digest when it is read, so a damaged store is refused, never booted.

pub mod build;
pub mod digest;
pub mod health;
pub mod instance;
pub mod kiln_toml;
pub mod manifest;
pub mod reference;
pub mod restart;
pub mod size;
pub mod store;
mod verified;

pub use digest::Digest;
pub use manifest::Manifest;
pub use reference::Reference;
pub use store::{Store, StoreError};

/// Whether `path` can be the directory a program starts in (`kiln run -w`, `workdir` in Kiln.toml): absolute, no
/// NUL, shorter than PATH_MAX. It need not exist: the library OS makes it, as Docker does.
pub fn is_workdir(path: &str) -> bool {
    path.starts_with('/') && !path.contains('\0') && path.len() < 4096
}
