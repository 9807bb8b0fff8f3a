//! `kiln pull`: the OCI manifest, its config (the Kiln manifest, whose digest is the image's id), every blob the store
//! lacks (verified before it is named), then the tag.

use crate::connect::{classify, connect, Progress};
use crate::transfer::{fetch_blob, fetch_small};
use crate::{media, Options, RegistryError, RemoteName};
use futures_util::{stream, StreamExt, TryStreamExt};
use kiln_image::manifest::BlobRef;
use kiln_image::{Digest, Manifest, Store};
use oci_client::RegistryOperation;
use oci_spec::image::ImageManifest;
use std::sync::Arc;

/// What a pull did.
#[derive(Debug)]
pub struct Pulled {
    pub id: Digest,
    /// The local name it got ([`RemoteName::local_reference`]).
    pub tag: kiln_image::Reference,
    pub fetched: usize,
    pub fetched_bytes: u64,
    /// Blobs the store already had.
    pub present: usize,
}

const PARALLEL: usize = 8;

pub fn pull(
    store: &Store,
    source: &RemoteName,
    options: &Options,
    progress: Arc<dyn Progress>,
) -> Result<Pulled, RegistryError> {
    let tag = source.local_reference()?;
    let session = connect(source, options, RegistryOperation::Pull, progress)?;
    let registry = source.registry().to_string();
    let bad = |why: String| RegistryError::BadManifest { reference: source.to_string(), why };
    let (bytes, _digest) = session
        .runtime
        .block_on(session.client.pull_manifest_raw(&source.inner, &session.auth, &media::MANIFESTS))
        .map_err(|e| classify(&registry, e))?;
    let oci = ImageManifest::from_reader(&bytes[..]).map_err(|e| bad(format!("not an OCI image manifest: {e}")))?;
    let config_type = oci.config().media_type().to_string();
    if config_type != media::KILN_CONFIG {
        return Err(RegistryError::NotKiln { reference: source.to_string(), media_type: config_type });
    }
    let config = media::blob_ref(oci.config()).map_err(bad)?;
    let manifest_bytes = session.runtime.block_on(fetch_small(&session, &config, media::KILN_CONFIG))?;
    let manifest = Manifest::from_bytes(&manifest_bytes).map_err(|e| bad(format!("its Kiln manifest: {e}")))?;
    media::check_layers(&oci, &manifest).map_err(bad)?;

    std::fs::create_dir_all(store.root()).map_err(crate::error::io(store.root()))?;
    let read_lock = store.read_lock()?;
    let blobs = manifest.blobs();
    let missing: Vec<(String, _)> =
        blobs.iter().filter(|(_, b)| !store.has_blob(b)).map(|(role, b)| (media::layer_media_type(role), *b)).collect();
    let fetched_bytes = missing.iter().map(|(_, b)| b.size).sum();
    session.progress.start(fetched_bytes);
    let fetched = session.runtime.block_on(async {
        stream::iter(&missing)
            .map(|(media_type, b)| fetch_blob(&session, store, b, media_type))
            .buffer_unordered(PARALLEL)
            .try_fold(0, |n, got| async move { Ok(n + usize::from(got)) })
            .await
    })?;
    drop(read_lock);
    let _lock = store.lock()?;
    // A `kiln rmi` between the two locks may have collected what this pull stored and had not yet tagged.
    let stored = |b: &BlobRef| std::fs::metadata(store.blob_path(&b.digest)).is_ok_and(|m| m.len() == b.size);
    if let Some((_, gone)) = blobs.iter().find(|(_, b)| !stored(b)) {
        return Err(RegistryError::Store(kiln_image::StoreError::MissingBlob(gone.digest.clone())));
    }
    let id = store.put_blob(&manifest_bytes)?;
    store.tag(&tag, &id)?;
    Ok(Pulled { id, tag, fetched, fetched_bytes, present: blobs.len() - missing.len() })
}
