//! kiln-container: container images in. Reads an image from an OCI archive, a `docker save` archive or an OCI
//! layout directory ([`Source`]), checks every blob against its digest, applies the layers in order with their
//! whiteouts into one root [`tree::Tree`] in memory (nothing is written on the host, so no entry can reach outside
//! the tree), and reads the run [`settings::Settings`] from the image config. Turning that into a Kiln image
//! (rewriting its shared objects, storing it) is the caller's: this crate knows nothing of Kiln's formats.
//!
//! Owners (`User` included) are not kept: a Kiln program runs as root, and ids are recorded, not enforced.

pub mod blobs;
mod docker;
pub mod layer;
mod oci;
pub mod program;
pub mod settings;
pub mod tree;

use blobs::{Archive, Blobs, Layout};
use layer::{LayerError, LayerReader, Totals};
use oci_spec::image::Descriptor;
use settings::Settings;
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use tree::Tree;

/// Where a container image comes from, as `Kiln.toml`'s `from` names it (skopeo's transport names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `oci-archive:PATH[:REF]`: a tarball of an OCI layout.
    OciArchive { path: PathBuf, reference: Option<String> },
    /// `docker-archive:PATH[:REPO:TAG]`: what `docker save` writes.
    DockerArchive { path: PathBuf, reference: Option<String> },
    /// `oci:DIR[:REF]`: an OCI layout directory.
    OciLayout { dir: PathBuf, reference: Option<String> },
    /// `registry:REF`: an image in a registry.
    Registry(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0:?} names no container image: use oci-archive:PATH, docker-archive:PATH, oci:DIR or registry:REF")]
    Unknown(String),
    #[error("{0:?} names no file")]
    Empty(String),
}

impl Source {
    /// Whether `s` names a container image source (by its prefix), so that callers can tell it from a path.
    pub fn is_source(s: &str) -> bool {
        ["oci-archive:", "docker-archive:", "oci:", "registry:"].iter().any(|p| s.starts_with(p))
    }

    /// `KIND:WHERE`, with paths relative to `base`.
    pub fn parse(s: &str, base: &std::path::Path) -> Result<Source, SourceError> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| SourceError::Unknown(s.into()))?;
        if rest.is_empty() {
            return Err(SourceError::Empty(s.into()));
        }
        // A path may not hold a `:` (as for skopeo): what follows the first one after the path is the reference.
        let (path, reference) = match rest.split_once(':') {
            Some((p, r)) => (base.join(p), Some(r.to_string())),
            None => (base.join(rest), None),
        };
        match kind {
            "oci-archive" => Ok(Source::OciArchive { path, reference }),
            "docker-archive" => Ok(Source::DockerArchive { path, reference }),
            "oci" => Ok(Source::OciLayout { dir: path, reference }),
            "registry" => Ok(Source::Registry(rest.to_string())),
            _ => Err(SourceError::Unknown(s.into())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a tar archive")]
    NotArchive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has more members than an image has")]
    TooManyMembers(PathBuf),
    #[error("{place} has no {name}")]
    Missing { place: String, name: String },
    #[error("{0:?} is not a SHA-256 digest (sha256: and 64 lower-case hex digits)")]
    BadDigest(String),
    #[error("{what} does not match its digest: {expected} expected, the bytes have {actual}")]
    Digest { what: String, expected: String, actual: String },
    #[error("{what} is {actual} bytes, not the {expected} its descriptor says")]
    Size { what: String, expected: u64, actual: u64 },
    #[error("{0} is not valid: {1}")]
    Json(&'static str, String),
    #[error("it holds no image")]
    NoManifest,
    #[error("it holds {0} images: name one (PATH:REF)")]
    Ambiguous(usize),
    #[error("it holds no image named {0:?}")]
    NoSuchReference(String),
    #[error("it holds no linux/amd64 image, only {0}")]
    NoPlatform(String),
    #[error("its indexes nest too deep")]
    NestedTooDeep,
    #[error("the image is for {0}; kiln runs linux/amd64 images")]
    WrongPlatform(String),
    #[error("the config names {diff_ids} layers and the manifest {layers}")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error("layer {index} of {count} ({name})")]
    Layer {
        index: usize,
        count: usize,
        name: String,
        #[source]
        source: LayerError,
    },
    #[error("{0}: a registry's image is read once fetched into an OCI layout (kiln_registry::fetch_to_layout)")]
    NoRegistry(String),
}

/// One layer as the manifest names it: the file, and the descriptor whose digest it must have (none for a docker
/// archive, whose layers are checked against the config's `diff_ids`).
pub struct LayerBlob {
    pub name: String,
    pub descriptor: Option<Descriptor>,
}

/// What a manifest resolves to: the config's bytes (checked) and the layers to read.
pub struct Manifested {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<LayerBlob>,
}

/// A container image, read and flattened.
#[derive(Debug)]
pub struct ContainerImage {
    pub tree: Tree,
    pub settings: Settings,
    /// `sha256:...` of the config: the image id Docker shows.
    pub config_digest: String,
    pub layers: usize,
    pub totals: Totals,
}

/// Reads the image `source` names.
pub fn load(source: &Source) -> Result<ContainerImage, ContainerError> {
    match source {
        Source::OciArchive { path, reference } => {
            let archive = Archive::open(path)?;
            let manifested = oci::load(&archive, reference.as_deref())?;
            flatten(&archive, manifested, false)
        }
        Source::DockerArchive { path, reference } => {
            let archive = Archive::open(path)?;
            let manifested = docker::load(&archive, reference.as_deref())?;
            flatten(&archive, manifested, true)
        }
        Source::OciLayout { dir, reference } => {
            let layout = Layout { dir: dir.clone() };
            let manifested = oci::load(&layout, reference.as_deref())?;
            flatten(&layout, manifested, false)
        }
        Source::Registry(reference) => Err(ContainerError::NoRegistry(reference.clone())),
    }
}

/// Applies the layers of `manifested` (read from `blobs`) in order. With `by_diff_id`, each layer is checked
/// against the config's `rootfs.diff_ids` (a docker archive); otherwise against its descriptor.
pub fn flatten(blobs: &dyn Blobs, manifested: Manifested, by_diff_id: bool) -> Result<ContainerImage, ContainerError> {
    let settings = Settings::from_config(&manifested.config)?;
    let diff_ids = match by_diff_id {
        true => diff_ids(&manifested.config)?,
        false => Vec::new(),
    };
    let count = manifested.layers.len();
    if by_diff_id && diff_ids.len() != count {
        return Err(ContainerError::LayerCount { diff_ids: diff_ids.len(), layers: count });
    }
    let mut tree = Tree::default();
    let mut totals = Totals::default();
    for (i, layer) in manifested.layers.iter().enumerate() {
        let bytes = blobs.get(&layer.name)?;
        let what = format!("layer {} of {count} ({})", i + 1, layer.name);
        if let Some(descriptor) = &layer.descriptor {
            verify(&what, descriptor, &bytes)?;
        }
        let err = |source| ContainerError::Layer { index: i + 1, count, name: layer.name.clone(), source };
        let mut reader = LayerReader::new(&bytes, by_diff_id).map_err(err)?;
        layer::apply(&mut tree, &mut reader, &mut totals).map_err(err)?;
        if let Some(actual) = reader.finish().map_err(err)? {
            let actual = format!("sha256:{actual}");
            if actual != diff_ids[i] {
                return Err(ContainerError::Digest { what, expected: diff_ids[i].clone(), actual });
            }
        }
    }
    Ok(ContainerImage { tree, settings, config_digest: manifested.config_digest, layers: count, totals })
}

fn diff_ids(config: &[u8]) -> Result<Vec<String>, ContainerError> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let config: Config =
        serde_json::from_slice(config).map_err(|e| ContainerError::Json("the image config", e.to_string()))?;
    Ok(config.rootfs.diff_ids)
}

/// Checks `bytes` against `descriptor`'s size and digest.
pub fn verify(what: &str, descriptor: &Descriptor, bytes: &[u8]) -> Result<(), ContainerError> {
    if descriptor.size() != bytes.len() as u64 {
        return Err(ContainerError::Size {
            what: what.into(),
            expected: descriptor.size(),
            actual: bytes.len() as u64,
        });
    }
    verify_digest(what, descriptor.digest().as_ref(), bytes)
}

pub fn verify_digest(what: &str, expected: &str, bytes: &[u8]) -> Result<(), ContainerError> {
    if !expected.starts_with("sha256:") {
        return Err(ContainerError::BadDigest(expected.to_string()));
    }
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(ContainerError::Digest { what: what.into(), expected: expected.into(), actual });
    }
    Ok(())
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the fuzz targets (`fuzz/`) reach that the crate keeps private: only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// Reads an image from the bytes of an OCI archive (`docker`: of a `docker save` archive) as [`load`] does.
    pub fn load_archive(bytes: Vec<u8>, docker: bool) -> Result<ContainerImage, ContainerError> {
        let archive = Archive::from_bytes(std::path::Path::new("fuzz.tar"), bytes)?;
        let manifested = match docker {
            true => docker::load(&archive, None)?,
            false => oci::load(&archive, None)?,
        };
        flatten(&archive, manifested, docker)
    }
}

#[cfg(test)]
mod tests;
