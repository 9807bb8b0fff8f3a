//! The bytes a [`LaunchSpec`] names: an image's library OS, program and prepared program from the store (each
//! checked against its digest), or a host program with the launcher's own library OS.

use crate::error::{BundleError, LoadError, ProgramError};
use crate::spec::{LaunchSpec, Source};
use kiln_image::manifest::BlobRef;
use kiln_image::{Store, StoreError};
use std::borrow::Cow;
use std::path::Path;

/// What the VMM boots.
pub struct Loaded {
    pub kernel: Cow<'static, [u8]>,
    pub program: Vec<u8>,
    /// The image's prepared program, when this kiln's version built it (another's rewriter may differ).
    pub prepared: Option<Vec<u8>>,
    /// A host program's identity for the rewrite cache (`kiln_vmm::rootfs_cache::identity`), if it did not change
    /// while it was read.
    pub program_identity: Option<Vec<u8>>,
    /// The image's root filesystem, if it has files (read by [`image_rootfs`] when the root filesystem cache has not
    /// got it already); none for a program.
    pub rootfs: Option<BlobRef>,
}

/// Reads what `spec` boots: an image from `store` (by the id the spec names, so a tag moved since changes nothing),
/// or a host program on `builtin_kernel`.
pub fn load(spec: &LaunchSpec, store: Option<&Store>, builtin_kernel: &'static [u8]) -> Result<Loaded, LoadError> {
    match &spec.source {
        Source::Program { path } => load_program(path, &spec.shown, builtin_kernel),
        Source::Bundle { rootfs } => {
            let missing = || LoadError::Bundle(BundleError::NoProgram(spec.exe_path.clone()));
            let path = crate::bundle::host_path(rootfs, &spec.exe_path).ok_or_else(missing)?;
            load_program(&path, &spec.shown, builtin_kernel)
        }
        Source::Image { id } => {
            let store = store.ok_or_else(|| LoadError::NoStore(spec.shown.clone()))?;
            let image = |source| LoadError::Image { shown: spec.shown.clone(), source };
            let _reading = store.read_lock().map_err(image)?;
            let manifest = match store.manifest(id) {
                Err(StoreError::MissingBlob(missing)) if missing == *id => {
                    return Err(LoadError::Removed(spec.shown.clone()))
                }
                other => other.map_err(image)?,
            };
            Ok(Loaded {
                kernel: Cow::Owned(store.image_blob(&manifest.kernel).map_err(image)?),
                program: store.image_blob(&manifest.program).map_err(image)?,
                prepared: match manifest.kiln_version == env!("CARGO_PKG_VERSION") {
                    true => Some(store.image_blob(&manifest.prepared).map_err(image)?),
                    false => None,
                },
                program_identity: None,
                rootfs: (manifest.rootfs.size > kiln_abi::rootfs::PREFIX_LEN as u64).then(|| manifest.rootfs.clone()),
            })
        }
    }
}

fn load_program(path: &Path, shown: &str, kernel: &'static [u8]) -> Result<Loaded, LoadError> {
    let identity = kiln_vmm::rootfs_cache::identity(path).ok();
    let program = std::fs::read(path).map_err(|e| program_error(e, path, shown))?;
    let program_identity =
        identity.filter(|before| kiln_vmm::rootfs_cache::identity(path).ok().as_ref() == Some(before));
    Ok(Loaded { kernel: Cow::Borrowed(kernel), program, prepared: None, program_identity, rootfs: None })
}

/// A failed open or read of the program at `path`, in the user's words.
pub(crate) fn program_error(e: std::io::Error, path: &Path, shown: &str) -> ProgramError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ProgramError::NoSuchFile(shown.to_string()),
        std::io::ErrorKind::PermissionDenied => ProgramError::PermissionDenied(shown.to_string()),
        _ if path.is_dir() => ProgramError::IsDirectory(shown.to_string()),
        _ => ProgramError::Read { shown: shown.to_string(), source: e },
    }
}

/// An image's root filesystem, checked against its digest.
pub fn image_rootfs(store: &Store, blob: &BlobRef) -> Result<Vec<u8>, StoreError> {
    let _reading = store.read_lock()?;
    store.image_blob(blob)
}
