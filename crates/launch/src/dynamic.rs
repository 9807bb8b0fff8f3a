//! The launch of a dynamically linked host program: its loader and libraries, rewritten, into the guest's root
//! filesystem (`kiln_vmm::dynamic`), and the shared objects its `--dir` and `--file` trees bring (Python's extension
//! modules) rewritten on their way in, with the libraries they need.

use crate::error::LaunchError;
use crate::{LaunchSpec, Source};
use kiln_vmm::dynamic::{self, Dependencies};
use kiln_vmm::elf::{ElfImage, ElfKind};
use kiln_vmm::rewrite::SiteCounts;
use kiln_vmm::rewrite_cache::RewriteCache;
use kiln_vmm::rootfs::{HostFileFilter, RootfsBuilder};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

/// A dynamically linked host program's loader and libraries (`program` is its bytes), rewritten (none for a static program or an image, whose
/// root filesystem has them already: see [`image_interpreter`]).
pub fn dependencies(spec: &LaunchSpec, program: &[u8]) -> Result<Option<Dependencies>, LaunchError> {
    let Source::Program { path } = &spec.source else { return Ok(None) };
    let Ok(elf) = ElfImage::parse(program) else { return Ok(None) };
    let cache = crate::home::rewrite_cache_dir().map(RewriteCache::new);
    let deps = dynamic::collect(&elf, path, cache.as_ref()).map_err(|e| LaunchError::Dynamic(spec.shown.clone(), e))?;
    if let Some(deps) = &deps {
        tracing::debug!("{} shared objects, {}", deps.libraries.len() + 1, deps.site_counts());
    }
    Ok(deps)
}

/// Host files that are shared objects (`ET_DYN` with code) seen by [`object_filter`], with their syscall sites.
pub type FoundObjects = Rc<RefCell<Vec<(PathBuf, SiteCounts)>>>;

/// Rewrites every shared object among the host files added to the root filesystem, and notes where it came from.
/// Anything else, ELF files Kiln cannot read included, goes in as it is.
pub fn object_filter(found: FoundObjects) -> HostFileFilter {
    let cache = crate::home::rewrite_cache_dir().map(RewriteCache::new);
    Box::new(move |path, bytes| {
        if !bytes.starts_with(b"\x7fELF") {
            return Ok(bytes);
        }
        let Ok(elf) = ElfImage::parse_any(&bytes) else { return Ok(bytes) };
        if elf.kind == ElfKind::Exec || !elf.segments.iter().any(|s| s.executable) {
            return Ok(bytes);
        }
        let object = dynamic::rewrite(path, &bytes, cache.as_ref())?;
        found.borrow_mut().push((path.to_path_buf(), object.report.counts()));
        Ok(object.bytes)
    })
}

/// Adds to `builder` the libraries that the shared objects in `found` need and `deps` does not have yet.
pub fn add_libraries_they_need(
    deps: &mut Dependencies,
    found: &FoundObjects,
    builder: &mut RootfsBuilder,
) -> Result<(), LaunchError> {
    let cache = crate::home::rewrite_cache_dir().map(RewriteCache::new);
    let had = deps.libraries.len();
    for (path, _) in found.borrow().iter() {
        let bytes = std::fs::read(path).map_err(|e| LaunchError::ReadObject(path.clone(), e))?;
        let elf = ElfImage::parse_any(&bytes).map_err(|e| LaunchError::NotAnObject(path.clone(), e))?;
        deps.add_needed_by(&elf, path, cache.as_ref()).map_err(|e| LaunchError::Needed(path.clone(), e))?;
    }
    for object in &deps.libraries[had..] {
        builder.add_file(&object.guest_path, 0o755, &object.object.bytes)?;
    }
    Ok(())
}
