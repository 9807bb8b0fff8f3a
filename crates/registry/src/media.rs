//! How a Kiln image looks on a registry: an OCI image manifest whose config is the Kiln manifest (media type
//! [`KILN_CONFIG`]; its digest is the image's id) and whose layers are the blobs the Kiln manifest names, in its order,
//! each of media type `application/vnd.kiln.<role>.v1` and titled with its role. The bytes depend on the Kiln manifest
//! alone (no times, no maps of more than one key), so every host that pushes an image pushes the same manifest.

use kiln_image::manifest::BlobRef;
use kiln_image::{Digest, Manifest};
use oci_spec::image::{Descriptor, ImageManifest, ImageManifestBuilder, MediaType};
use std::collections::HashMap;

/// The config's media type: the config blob is a Kiln manifest.
pub const KILN_CONFIG: &str = "application/vnd.kiln.image.manifest.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest kind a pull accepts.
pub const MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The largest manifest or Kiln config a pull reads into memory.
pub const MAX_MANIFEST: u64 = 4 << 20;

pub fn layer_media_type(role: &str) -> String {
    format!("application/vnd.kiln.{role}.v1")
}

fn descriptor(media_type: String, blob: &BlobRef) -> Descriptor {
    let digest: oci_spec::image::Digest = blob.digest.to_string().parse().expect("a Kiln digest is an OCI digest");
    Descriptor::new(MediaType::Other(media_type), blob.size, digest)
}

/// The OCI manifest of the image whose Kiln manifest is `manifest`, `manifest_len` bytes with digest `id`.
pub fn oci_manifest(manifest: &Manifest, id: &Digest, manifest_len: u64) -> Vec<u8> {
    let config = descriptor(KILN_CONFIG.into(), &BlobRef { digest: id.clone(), size: manifest_len });
    let layers = manifest
        .blobs()
        .iter()
        .map(|(role, blob)| {
            let mut d = descriptor(layer_media_type(role), blob);
            d.set_annotations(Some(HashMap::from([("org.opencontainers.image.title".to_string(), role.to_string())])));
            d
        })
        .collect::<Vec<_>>();
    let oci = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .expect("every field is set");
    serde_json::to_vec(&oci).expect("a manifest serialises")
}

/// A descriptor's digest and size, as the store names blobs.
pub(crate) fn blob_ref(d: &Descriptor) -> Result<BlobRef, String> {
    let digest = d.digest().to_string();
    let digest = digest.parse::<Digest>().map_err(|e| e.to_string())?;
    Ok(BlobRef { digest, size: d.size() })
}

/// The blobs of a pulled Kiln image: the OCI manifest's layers must be exactly the Kiln manifest's blobs.
pub(crate) fn check_layers(oci: &ImageManifest, manifest: &Manifest) -> Result<(), String> {
    let expected = manifest.blobs();
    if oci.layers().len() != expected.len() {
        return Err(format!("it has {} layers; a Kiln image has {}", oci.layers().len(), expected.len()));
    }
    for (layer, (role, blob)) in oci.layers().iter().zip(expected) {
        if blob_ref(layer)? != *blob {
            return Err(format!("its {role} layer is not the blob its Kiln manifest names"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Manifest, Digest, u64) {
        let blob = |b: &[u8]| BlobRef { digest: Digest::of(b), size: b.len() as u64 };
        let manifest = Manifest {
            schema: kiln_image::manifest::SCHEMA,
            name: "hello".into(),
            kiln_version: "0.1.0".into(),
            boot_version: 9,
            kernel: blob(b"kernel"),
            program: blob(b"program"),
            prepared: blob(b"prepared"),
            rootfs: blob(b"rootfs"),
            config: Default::default(),
        };
        let bytes = manifest.to_bytes();
        (manifest, Digest::of(&bytes), bytes.len() as u64)
    }

    #[test]
    fn the_oci_manifest_names_the_kiln_manifest_and_its_blobs_and_is_reproducible() {
        let (manifest, id, len) = sample();
        let bytes = oci_manifest(&manifest, &id, len);
        assert_eq!(bytes, oci_manifest(&manifest, &id, len), "the same bytes every time");
        let oci = ImageManifest::from_reader(&bytes[..]).unwrap();
        assert_eq!(oci.config().media_type().to_string(), KILN_CONFIG);
        assert_eq!(blob_ref(oci.config()).unwrap(), BlobRef { digest: id, size: len });
        check_layers(&oci, &manifest).unwrap();
        assert_eq!(oci.layers()[3].media_type().to_string(), "application/vnd.kiln.rootfs.v1");

        let mut other = manifest.clone();
        other.rootfs.size += 1;
        assert!(check_layers(&oci, &other).unwrap_err().contains("rootfs"));
    }
}
