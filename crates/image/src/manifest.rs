//! The image manifest: what to boot and how. Serialised as JSON with a fixed field order and sorted maps, and with
//! nothing that depends on when or where it was built, so the same inputs give the same bytes, hence the same id.

use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped when the manifest's meaning changes; `kiln` refuses manifests of another schema.
pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    /// The `Kiln.toml` name the image was built from.
    pub name: String,
    /// The kiln version that built it (its library OS is the `kernel` blob).
    pub kiln_version: String,
    /// The boot protocol (`kiln_abi::boot::BOOT_VERSION`) between `kernel` and the VMM that built the image: another
    /// VMM cannot boot that kernel.
    pub boot_version: u32,
    /// The library OS the program runs on.
    pub kernel: BlobRef,
    /// The static executable, as built.
    pub program: BlobRef,
    /// The program with its syscalls rewritten, as the VMM loads it (`kiln_vmm::rewrite_cache::encode`), so that
    /// booting the image skips the rewrite; a kiln of another version ignores it and rewrites `program`.
    pub prepared: BlobRef,
    /// The read-only root filesystem (`kiln_abi::rootfs` format): the project's files and directories.
    pub rootfs: BlobRef,
    pub config: RunConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// What `kiln run IMAGE` uses unless its own flags say otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The program's path as the program sees it (`argv[0]`, `/proc/self/exe`).
    pub program_path: String,
    pub args: Vec<String>,
    /// `KEY=VALUE`, sorted by key.
    pub env: Vec<String>,
    pub memory: u64,
    pub cpus: u32,
    /// Published ports, in `kiln run -p` syntax.
    pub ports: Vec<String>,
    /// Volume name → mount path in the guest.
    pub volumes: BTreeMap<String, String>,
    /// The directory the program starts in (`kiln run -w`; OCI's `WorkingDir`), absolute; the root if unset. Left
    /// out when unset, so that an image without one has the manifest (and digest) it had before the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON for this kiln")]
    Json(#[source] serde_json::Error),
    #[error("the manifest has schema {0}; this kiln reads schema {SCHEMA}")]
    Schema(u32),
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        bytes.push(b'\n');
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct SchemaOnly {
            schema: u32,
        }
        let schema = serde_json::from_slice::<SchemaOnly>(bytes).map_err(ManifestError::Json)?.schema;
        if schema != SCHEMA {
            return Err(ManifestError::Schema(schema));
        }
        serde_json::from_slice(bytes).map_err(ManifestError::Json)
    }

    /// The image's size in bytes: its blobs as the manifest gives them, and the manifest's own `manifest_len`
    /// (saturating: a hostile manifest's sizes must not overflow).
    pub fn total_size(&self, manifest_len: u64) -> u64 {
        self.blobs().iter().fold(manifest_len, |total, (_, b)| total.saturating_add(b.size))
    }

    /// Every blob the image needs, with what it is for.
    pub fn blobs(&self) -> [(&'static str, &BlobRef); 4] {
        [("kernel", &self.kernel), ("program", &self.program), ("prepared", &self.prepared), ("rootfs", &self.rootfs)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let blob = |b: &[u8]| BlobRef { digest: Digest::of(b), size: b.len() as u64 };
        Manifest {
            schema: SCHEMA,
            name: "hello".into(),
            kiln_version: "0.1.0".into(),
            boot_version: 5,
            kernel: blob(b"kernel"),
            program: blob(b"program"),
            prepared: blob(b"prepared"),
            rootfs: blob(b"rootfs"),
            config: RunConfig { program_path: "/hello".into(), memory: 64 << 20, cpus: 1, ..Default::default() },
        }
    }

    #[test]
    fn manifests_round_trip_byte_for_byte() {
        let bytes = sample().to_bytes();
        let back = Manifest::from_bytes(&bytes).unwrap();
        assert_eq!(back, sample());
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn a_workdir_is_kept_and_its_absence_leaves_the_manifest_as_it_was() {
        assert!(!String::from_utf8(sample().to_bytes()).unwrap().contains("workdir"));
        let mut m = sample();
        m.config.workdir = Some("/srv".into());
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap().config.workdir.as_deref(), Some("/srv"));
    }

    #[test]
    fn sizes_add_up_without_overflowing() {
        let mut m = sample();
        assert_eq!(m.total_size(100), 100 + "kernelprogrampreparedrootfs".len() as u64);
        m.program.size = u64::MAX;
        assert_eq!(m.total_size(100), u64::MAX);
    }

    #[test]
    fn other_schemas_and_junk_are_refused() {
        let other = String::from_utf8(sample().to_bytes()).unwrap().replace("\"schema\": 1", "\"schema\": 9");
        assert!(matches!(Manifest::from_bytes(other.as_bytes()), Err(ManifestError::Schema(9))));
        assert!(matches!(Manifest::from_bytes(b"{}"), Err(ManifestError::Json(_))));
    }
}
