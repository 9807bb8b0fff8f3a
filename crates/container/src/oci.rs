//! The OCI image layout (a directory, or an `oci-archive` tarball of one): `index.json` names manifests (or nested
//! indexes: multi-platform images, and what `docker save` writes since Docker 25), a manifest names the config and
//! the layers. Every blob is checked against its descriptor's digest and size before it is used.

use crate::blobs::{blob_name, Blobs};
use crate::{verify, ContainerError, LayerBlob, Manifested};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

/// Nested indexes followed before giving up.
const MAX_DEPTH: usize = 4;
const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn load(blobs: &dyn Blobs, reference: Option<&str>) -> Result<Manifested, ContainerError> {
    let index_bytes = blobs.get("index.json")?;
    let index =
        ImageIndex::from_reader(&index_bytes[..]).map_err(|e| ContainerError::Json("index.json", e.to_string()))?;
    let mut candidates: Vec<Descriptor> = index.manifests().clone();
    if let Some(reference) = reference {
        candidates.retain(|d| d.annotations().as_ref().and_then(|a| a.get(REF_NAME)).is_some_and(|r| r == reference));
        if candidates.is_empty() {
            return Err(ContainerError::NoSuchReference(reference.to_string()));
        }
    }
    for _ in 0..MAX_DEPTH {
        let chosen = choose(&candidates)?;
        let bytes = blobs.get(&blob_name(chosen.digest().as_ref())?)?;
        verify("the manifest", chosen, &bytes)?;
        if is_index(chosen.media_type()) {
            let nested =
                ImageIndex::from_reader(&bytes[..]).map_err(|e| ContainerError::Json("an index", e.to_string()))?;
            candidates = nested.manifests().clone();
            continue;
        }
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|e| ContainerError::Json("the manifest", e.to_string()))?;
        let config = manifest.config();
        let config_bytes = blobs.get(&blob_name(config.digest().as_ref())?)?;
        verify("the config", config, &config_bytes)?;
        let layers = manifest
            .layers()
            .iter()
            .map(|d| Ok(LayerBlob { name: blob_name(d.digest().as_ref())?, descriptor: Some(d.clone()) }))
            .collect::<Result<_, ContainerError>>()?;
        return Ok(Manifested {
            config: config_bytes.into_owned(),
            config_digest: config.digest().to_string(),
            layers,
        });
    }
    Err(ContainerError::NestedTooDeep)
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || matches!(media_type, MediaType::Other(t) if t == "application/vnd.docker.distribution.manifest.list.v2+json")
}

/// The one manifest to use: the only one, or the linux/amd64 one.
fn choose(candidates: &[Descriptor]) -> Result<&Descriptor, ContainerError> {
    if let [only] = candidates {
        return Ok(only);
    }
    let amd64: Vec<&Descriptor> = candidates
        .iter()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
        })
        .collect();
    match amd64.first() {
        Some(d) => Ok(d),
        None if candidates.is_empty() => Err(ContainerError::NoManifest),
        None if candidates.iter().all(|d| d.platform().is_none()) => Err(ContainerError::Ambiguous(candidates.len())),
        None => Err(ContainerError::NoPlatform(
            candidates
                .iter()
                .map(|d| d.platform().as_ref().map_or("unknown".into(), |p| format!("{}/{}", p.os(), p.architecture())))
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}
