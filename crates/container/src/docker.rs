//! What `docker save` writes: `manifest.json`, a list of images, each naming its config file and its layer files
//! (`<id>/layer.tar` before Docker 25, `blobs/sha256/<hex>` since). The layers are checked against the config's
//! `rootfs.diff_ids` (the SHA-256 of each uncompressed layer) as they are read, and the config against its name,
//! which is its digest.

use crate::blobs::Blobs;
use crate::{verify_digest, ContainerError, LayerBlob, Manifested};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub fn load(blobs: &dyn Blobs, reference: Option<&str>) -> Result<Manifested, ContainerError> {
    let bytes = blobs.get("manifest.json")?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|e| ContainerError::Json("manifest.json", e.to_string()))?;
    let entry = match reference {
        Some(r) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == r))
            .ok_or_else(|| ContainerError::NoSuchReference(r.to_string()))?,
        None => match entries.as_slice() {
            [only] => only,
            [] => return Err(ContainerError::NoManifest),
            more => return Err(ContainerError::Ambiguous(more.len())),
        },
    };
    let config = blobs.get(&entry.config)?.into_owned();
    let digest = named_digest(&entry.config);
    if let Some(digest) = &digest {
        verify_digest("the config", digest, &config)?;
    }
    let config_digest = digest.unwrap_or_else(|| crate::sha256_digest(&config));
    let layers = entry.layers.iter().map(|name| LayerBlob { name: name.clone(), descriptor: None }).collect();
    Ok(Manifested { config, config_digest, layers })
}

/// The digest a file's name gives it: `HEX.json` or `blobs/sha256/HEX`.
fn named_digest(name: &str) -> Option<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let is_hex = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex && (base.ends_with(".json") || name.contains("sha256/"))).then(|| format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn configs_are_named_by_their_digest() {
        let hex = "ab".repeat(32);
        assert_eq!(super::named_digest(&format!("{hex}.json")), Some(format!("sha256:{hex}")));
        assert_eq!(super::named_digest(&format!("blobs/sha256/{hex}")), Some(format!("sha256:{hex}")));
        assert_eq!(super::named_digest("config.json"), None);
    }
}
