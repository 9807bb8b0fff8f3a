//! A container image archive (`oci-archive:` or `docker-archive:`, a tarball someone else made): its members, the
//! OCI index and manifests or docker's manifest.json, the config, the layers' digests, then the layers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, archive)) = data.split_first() else { return };
    if let Ok(image) = kiln_container::fuzzing::load_archive(archive.to_vec(), kind & 1 == 1) {
        let _ = kiln_container::program::find(&image.tree, &image.settings, None);
    }
});
