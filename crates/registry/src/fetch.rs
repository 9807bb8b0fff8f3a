//! Any image a registry holds (a container image, a Kiln image), fetched into an OCI image layout, for importers
//! (`kiln build` from `registry:REF`): `DIR/oci-layout`, `DIR/index.json` naming the manifest, and
//! `DIR/blobs/sha256/<hex>` for the manifest (byte for byte as the registry served it, Docker's schema 2 included),
//! its config and its layers. An index (a multi-platform image) is resolved to its linux/amd64 manifest. Every blob
//! is checked against its digest and size before it gets its name; blobs already in `DIR` are checked and kept.

use crate::connect::{classify, connect, Progress};
use crate::transfer::fetch_blob;
use crate::{media, Options, RegistryError, RemoteName};
use futures_util::{stream, StreamExt, TryStreamExt};
use kiln_image::manifest::BlobRef;
use kiln_image::{Digest, Store};
use oci_client::RegistryOperation;
use oci_spec::image::{DescriptorBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What [`fetch_to_layout`] wrote.
#[derive(Debug)]
pub struct Fetched {
    pub layout: PathBuf,
    /// The manifest's digest (of the platform's manifest, for an index) and media type.
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// Its config and layers as the manifest names them.
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

/// The most layers an image may have (Docker's own limit is 127).
const MAX_LAYERS: usize = 1000;
const PARALLEL: usize = 8;

/// Fetches the image `source` names into the OCI layout `dir` (made if missing), and tags it there with `source`'s
/// tag (`org.opencontainers.image.ref.name`).
pub fn fetch_to_layout(
    source: &RemoteName,
    dir: &Path,
    options: &Options,
    progress: Arc<dyn Progress>,
) -> Result<Fetched, RegistryError> {
    let session = connect(source, options, RegistryOperation::Pull, progress)?;
    let registry = source.registry().to_string();
    let bad = |why: String| RegistryError::BadManifest { reference: source.to_string(), why };
    let pull_raw = |name: &RemoteName| {
        session
            .runtime
            .block_on(session.client.pull_manifest_raw(&name.inner, &session.auth, &media::MANIFESTS))
            .map_err(|e| classify(&registry, e))
    };
    let (mut bytes, mut digest) = pull_raw(source)?;
    let mut media_type = media_type_of(&bytes).map_err(&bad)?;
    if media_type == media::OCI_INDEX || media_type == media::DOCKER_LIST {
        let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| bad(format!("not an image index: {e}")))?;
        let chosen = index
            .manifests()
            .iter()
            .find(|m| {
                m.platform()
                    .as_ref()
                    .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
            })
            .ok_or_else(|| bad("the index has no linux/amd64 image".into()))?;
        (bytes, digest) = pull_raw(&source.at_digest(chosen.digest().as_ref()))?;
        media_type = media_type_of(&bytes).map_err(&bad)?;
    }
    if media_type != media::OCI_MANIFEST && media_type != media::DOCKER_MANIFEST {
        return Err(bad(format!("its manifest is {media_type}, not an image manifest")));
    }
    let manifest_digest: Digest = digest.parse().map_err(|e: kiln_image::digest::DigestError| bad(e.to_string()))?;
    if Digest::of(&bytes) != manifest_digest {
        return Err(bad("the manifest does not match its digest".into()));
    }
    let oci = ImageManifest::from_reader(&bytes[..]).map_err(|e| bad(format!("not an image manifest: {e}")))?;
    if oci.layers().len() > MAX_LAYERS {
        return Err(bad(format!("{} layers is more than {MAX_LAYERS}", oci.layers().len())));
    }
    let config = media::blob_ref(oci.config()).map_err(&bad)?;
    let layers = oci.layers().iter().map(media::blob_ref).collect::<Result<Vec<_>, _>>().map_err(&bad)?;

    let layout = Store::new(dir);
    let manifest_blob = BlobRef { digest: manifest_digest.clone(), size: bytes.len() as u64 };
    let mut writer = layout.blob_writer(&manifest_blob)?;
    std::io::Write::write_all(&mut writer, &bytes).map_err(crate::error::io(dir))?;
    writer.finish()?;
    let mut wanted: Vec<(BlobRef, String)> = vec![(config.clone(), oci.config().media_type().to_string())];
    wanted.extend(oci.layers().iter().zip(&layers).map(|(d, b)| (b.clone(), d.media_type().to_string())));
    wanted.sort_by(|a, b| a.0.digest.cmp(&b.0.digest));
    wanted.dedup_by(|a, b| a.0.digest == b.0.digest);
    session.progress.start(wanted.iter().filter(|(b, _)| !layout.has_blob(b)).map(|(b, _)| b.size).sum());
    session.runtime.block_on(async {
        stream::iter(&wanted)
            .map(|(b, media_type)| fetch_blob(&session, &layout, b, media_type))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<bool>>()
            .await
    })?;
    write_layout_files(dir, &manifest_blob, &media_type, source.tag())?;
    Ok(Fetched { layout: dir.to_path_buf(), manifest_digest, manifest_media_type: media_type, config, layers })
}

/// The manifest's `mediaType` field (Docker's and OCI's manifests both carry it; an OCI one may leave it out).
fn media_type_of(bytes: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        schema_version: u32,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if head.schema_version != 2 {
        return Err(format!("manifest schema version {} (only 2 is read)", head.schema_version));
    }
    Ok(head
        .media_type
        .unwrap_or_else(|| if head.manifests.is_some() { media::OCI_INDEX } else { media::OCI_MANIFEST }.to_string()))
}

fn write_layout_files(
    dir: &Path,
    manifest: &BlobRef,
    media_type: &str,
    tag: Option<&str>,
) -> Result<(), RegistryError> {
    let digest: oci_spec::image::Digest = manifest.digest.to_string().parse().expect("a Kiln digest is an OCI digest");
    let mut descriptor =
        DescriptorBuilder::default().media_type(MediaType::from(media_type)).digest(digest).size(manifest.size);
    if let Some(tag) = tag {
        descriptor =
            descriptor.annotations(HashMap::from([("org.opencontainers.image.ref.name".to_string(), tag.to_string())]));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![descriptor.build().expect("every field is set")])
        .build()
        .expect("every field is set");
    let index = serde_json::to_vec_pretty(&index).expect("an index serialises");
    kiln_image::store::write_atomically(&dir.join("index.json"), &index)?;
    kiln_image::store::write_atomically(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}
