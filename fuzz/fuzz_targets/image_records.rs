//! What the image store reads back from disk, which anything with write access to `$KILN_HOME` (or a pulled image)
//! could have made: image manifests, a tag file's digest and its file name, instance records, and an image's
//! prepared program (`kiln_vmm::rewrite_cache`'s encoding). The first byte picks which.
#![no_main]

use kiln_image::instance::Instance;
use kiln_image::{Digest, Manifest, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 5 {
        0 => {
            if let Ok(manifest) = Manifest::from_bytes(bytes) {
                let _ = manifest.total_size(bytes.len() as u64);
                let again = Manifest::from_bytes(&manifest.to_bytes()).expect("a manifest written reads again");
                assert_eq!(again, manifest);
            }
        }
        1 => {
            // A tag file holds a digest; its name is NAME:TAG with '/' as '+'.
            let text = String::from_utf8_lossy(bytes);
            if let Ok(digest) = text.trim().parse::<Digest>() {
                assert_eq!(digest.to_string().parse::<Digest>().as_ref(), Ok(&digest));
                let _ = digest.short();
            }
            if let Ok(reference) = text.parse::<Reference>() {
                assert_eq!(reference.to_string().parse::<Reference>().ok().as_ref(), Some(&reference));
            }
        }
        2 => {
            if let Ok(instance) = serde_json::from_slice::<Instance>(bytes) {
                let again = serde_json::to_vec(&instance).expect("a record serialises");
                let mut read = serde_json::from_slice::<Instance>(&again).expect("and reads again");
                // `launch` is opaque JSON, whose floats serde_json reads back to the nearest double, not exactly.
                read.launch.clone_from(&instance.launch);
                assert_eq!(read, instance);
            }
        }
        3 => {
            if let Some(prepared) = kiln_vmm::rewrite_cache::decode(bytes) {
                let _ = kiln_vmm::rewrite_cache::encode(&prepared);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(bytes);
            let _ = kiln_image::size::parse_size(&text);
            let _ = kiln_image::instance::valid_name(&text);
        }
    }
});
