//! Container images made by the tests: layers as tar streams (entries set byte by byte, so that hostile names can be
//! made too), written as an OCI image layout or as the tarball `docker save` writes.

use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::Path;

pub enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
    HardLink(String),
}

pub fn file(data: impl Into<Vec<u8>>) -> Entry {
    Entry::File { mode: 0o644, data: data.into() }
}

/// A program's bytes, from the host file `path`, executable.
pub fn program(path: &Path) -> Entry {
    Entry::File { mode: 0o755, data: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
}

/// A tar stream (GNU headers, long names as GNU long-name entries) of `entries`, in order, owned by uid 1000 (the
/// import must drop owners).
pub fn layer<S: AsRef<str>>(entries: &[(S, Entry)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, entry) in entries {
        let name = name.as_ref();
        let (kind, mode, data, link): (u8, u32, &[u8], &str) = match entry {
            Entry::Dir => (b'5', 0o755, b"", ""),
            Entry::File { mode, data } => (b'0', *mode, data, ""),
            Entry::Symlink(target) => (b'2', 0o777, b"", target),
            Entry::HardLink(target) => (b'1', 0o644, b"", target),
        };
        if name.len() > 99 {
            header(&mut out, "././@LongLink", b'L', 0o644, name.len() as u64 + 1, "");
            let mut long = name.as_bytes().to_vec();
            long.push(0);
            padded(&mut out, &long);
        }
        header(&mut out, &name[..name.len().min(99)], kind, mode, data.len() as u64, link);
        padded(&mut out, data);
    }
    out.extend([0; 1024]);
    out
}

fn header(out: &mut Vec<u8>, name: &str, kind: u8, mode: u32, size: u64, link: &str) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, value: u64| {
        let text = format!("{value:0width$o}", width = len - 1);
        h[at..at + len - 1].copy_from_slice(text.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 1000);
    octal(&mut h, 116, 8, 1000);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend(h);
}

fn padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// An image config (linux/amd64) with `config` as its `config` object, for the uncompressed `layers`.
pub fn config(layers: &[Vec<u8>], config: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
}

/// An OCI layout in `dir`: the config and the layers (each stored as given: compressed or not, by its magic).
/// Returns each layer's blob path in `dir`.
pub fn oci_layout(dir: &Path, config: &[u8], blobs: &[Vec<u8>]) -> Vec<std::path::PathBuf> {
    let layers: Vec<serde_json::Value> = blobs
        .iter()
        .map(|b| {
            let gz = b.starts_with(&[0x1f, 0x8b]);
            descriptor(
                if gz {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                },
                b,
            )
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config), "layers": layers,
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &manifest)],
    }))
    .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), index).unwrap();
    let mut paths = Vec::new();
    for blob in [config, &manifest].into_iter().chain(blobs.iter().map(Vec::as_slice)) {
        let path = dir.join("blobs/sha256").join(&digest(blob)[7..]);
        std::fs::write(&path, blob).unwrap();
        paths.push(path);
    }
    paths.split_off(2)
}

/// What `docker save` writes (the format before Docker 25): `manifest.json`, the config as `HEX.json`, each layer as
/// `N/layer.tar`, uncompressed.
pub fn docker_archive(path: &Path, config: &[u8], layers: &[Vec<u8>]) {
    let config_name = format!("{}.json", &digest(config)[7..]);
    let layer_names: Vec<String> = (0..layers.len()).map(|i| format!("layer{i}/layer.tar")).collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": ["app:latest"], "Layers": layer_names}
    ]))
    .unwrap();
    let mut members = vec![("manifest.json".to_string(), file(manifest)), (config_name, file(config))];
    for (name, layer) in layer_names.into_iter().zip(layers) {
        members.push((name, file(layer.clone())));
    }
    std::fs::write(path, self::layer(&members)).unwrap();
}
