//! `kiln push`: the image's blobs (each only if the registry lacks it: a HEAD first), its Kiln manifest as the
//! config, then the OCI manifest under the tag.

use crate::connect::{classify, connect, Progress, Session};
use crate::{media, Options, RegistryError, RemoteName};
use futures_util::{stream, StreamExt, TryStreamExt};
use kiln_image::manifest::BlobRef;
use kiln_image::{Digest, Store};
use oci_client::RegistryOperation;
use std::sync::Arc;

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    /// The OCI manifest's digest on the registry (`REPO@DIGEST` pulls exactly this).
    pub manifest_digest: String,
    /// The image's id (the Kiln manifest's digest).
    pub id: Digest,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Blobs the registry already had.
    pub present: usize,
}

/// Blobs are sent in pieces of this size, so that progress moves during a large one.
const PIECE: usize = 1 << 20;
/// Uploads at once.
const PARALLEL: usize = 8;

/// Pushes the local image `image` (a name, tag or id) to `target`.
pub fn push(
    store: &Store,
    image: &str,
    target: &RemoteName,
    options: &Options,
    progress: Arc<dyn Progress>,
) -> Result<Pushed, RegistryError> {
    // Shared: no `kiln rmi` removes the blobs while they are read.
    let _lock = store.read_lock()?;
    let id = store.resolve(image)?;
    let manifest_bytes = store.blob(&id)?;
    let manifest = store.manifest(&id)?;
    let config = BlobRef { digest: id.clone(), size: manifest_bytes.len() as u64 };
    let oci = media::oci_manifest(&manifest, &id, config.size);

    let session = connect(target, options, RegistryOperation::Push, progress)?;
    let registry = target.registry().to_string();
    let mut blobs: Vec<BlobRef> = manifest.blobs().iter().map(|(_, b)| (*b).clone()).collect();
    blobs.push(config.clone());
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    blobs.dedup_by(|a, b| a.digest == b.digest);

    let missing: Vec<BlobRef> = session.runtime.block_on(async {
        stream::iter(&blobs)
            .map(|b| async {
                let there = session.client.blob_exists(&target.inner, &b.digest.to_string()).await;
                there.map(|there| (!there).then(|| b.clone()))
            })
            .buffered(PARALLEL)
            .try_filter_map(|b| async move { Ok(b) })
            .try_collect()
            .await
            .map_err(|e| classify(&registry, e))
    })?;
    let total: u64 = missing.iter().map(|b| b.size).sum();
    session.progress.start(total);
    let mut data = Vec::with_capacity(missing.len());
    for blob in &missing {
        let bytes = if blob.digest == id { manifest_bytes.clone() } else { store.image_blob(blob)? };
        data.push((blob.clone(), bytes::Bytes::from(bytes)));
    }
    session.runtime.block_on(async {
        stream::iter(data)
            .map(|(blob, bytes)| upload(&session, blob, bytes))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await
    })?;
    session
        .runtime
        .block_on(session.client.push_manifest_raw(
            &target.inner,
            oci.clone(),
            media::OCI_MANIFEST.parse().expect("a valid header value"),
        ))
        .map_err(|e| classify(&registry, e))?;
    Ok(Pushed {
        manifest_digest: Digest::of(&oci).to_string(),
        id,
        uploaded: missing.len(),
        uploaded_bytes: total,
        present: blobs.len() - missing.len(),
    })
}

async fn upload(session: &Session, blob: BlobRef, bytes: bytes::Bytes) -> Result<(), RegistryError> {
    let progress = session.progress.clone();
    let pieces = (0..bytes.len()).step_by(PIECE).map(move |at| {
        let piece = bytes.slice(at..(at + PIECE).min(bytes.len()));
        progress.advance(piece.len() as u64);
        Ok(piece)
    });
    session
        .client
        .push_blob_stream(&session.name.inner, stream::iter(pieces), &blob.digest.to_string(), Some(blob.size))
        .await
        .map(drop)
        .map_err(|e| classify(session.name.registry(), e))
}
