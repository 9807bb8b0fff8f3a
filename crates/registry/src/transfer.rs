//! Blobs from a registry: streamed into a temporary file of the destination store, hashed on the way, and named
//! only once their size and digest are the descriptor's ([`kiln_image::store::BlobWriter`]).

use crate::connect::{classify, Session};
use crate::{media, RegistryError};
use futures_util::StreamExt;
use kiln_image::manifest::BlobRef;
use kiln_image::{Digest, Store, StoreError};
use oci_client::manifest::OciDescriptor;
use std::io::Write;

fn descriptor(blob: &BlobRef, media_type: &str) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: blob.digest.to_string(),
        size: i64::try_from(blob.size).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

fn refused(session: &Session, blob: &BlobRef, source: RegistryError) -> RegistryError {
    RegistryError::Blob {
        reference: session.name.to_string(),
        digest: blob.digest.to_string(),
        source: Box::new(source),
    }
}

/// Stores `blob` in `store` unless it is there already; whether it had to be fetched.
pub(crate) async fn fetch_blob(
    session: &Session,
    store: &Store,
    blob: &BlobRef,
    media_type: &str,
) -> Result<bool, RegistryError> {
    if store.has_blob(blob) {
        return Ok(false);
    }
    let mut writer = store.blob_writer(blob)?;
    let mut stream = session
        .client
        .pull_blob_stream(&session.name.inner, &descriptor(blob, media_type))
        .await
        .map_err(|e| refused(session, blob, classify(session.name.registry(), e)))?;
    while let Some(piece) = stream.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            // The client checks the digest too, at the end: the store's check says the same in its own words.
            Err(_) if writer.is_complete() => break,
            Err(source) => return Err(refused(session, blob, RegistryError::Transfer(source))),
        };
        writer.write_all(&piece).map_err(|e| refused(session, blob, RegistryError::Transfer(e)))?;
        session.progress.advance(piece.len() as u64);
    }
    writer.finish().map_err(|e| refused(session, blob, mismatch(e)))?;
    Ok(true)
}

/// What the store's checks of a blob being written mean for a blob from a registry.
fn mismatch(e: StoreError) -> RegistryError {
    match e {
        StoreError::Corrupt { .. } => RegistryError::Mismatch("its bytes do not match its digest".into()),
        StoreError::WrongSize { actual, expected, .. } => {
            RegistryError::Mismatch(format!("it has {actual} bytes where its descriptor says {expected}"))
        }
        e => e.into(),
    }
}

/// A small blob (a config) in memory, checked against its digest and size (at most [`media::MAX_MANIFEST`]).
pub(crate) async fn fetch_small(session: &Session, blob: &BlobRef, media_type: &str) -> Result<Vec<u8>, RegistryError> {
    let bad =
        |why: String| refused(session, blob, RegistryError::BadManifest { reference: session.name.to_string(), why });
    if blob.size > media::MAX_MANIFEST {
        return Err(bad(format!("{} bytes is more than a config may have", blob.size)));
    }
    let mut stream = session
        .client
        .pull_blob_stream(&session.name.inner, &descriptor(blob, media_type))
        .await
        .map_err(|e| refused(session, blob, classify(session.name.registry(), e)))?;
    let mut bytes = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece =
            piece.map_err(|source| refused(session, blob, RegistryError::Io { path: "config".into(), source }))?;
        if (bytes.len() + piece.len()) as u64 > blob.size {
            return Err(bad(format!("longer than the {} bytes its descriptor says", blob.size)));
        }
        bytes.extend_from_slice(&piece);
    }
    if bytes.len() as u64 != blob.size || Digest::of(&bytes) != blob.digest {
        return Err(refused(session, blob, RegistryError::Mismatch("its bytes do not match its digest".into())));
    }
    Ok(bytes)
}
