//! Whole images: an OCI layout, its tarball and a docker archive made here, read back; damaged ones refused.

use super::*;
use crate::layer::tests::tar_of;
use crate::tree::Node;
use std::io::Write;
use std::path::Path;

const F: tar::EntryType = tar::EntryType::Regular;
const D: tar::EntryType = tar::EntryType::Directory;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn layers() -> Vec<Vec<u8>> {
    vec![
        tar_of(&[("app/", D, b""), ("app/hello", F, b"\x7fELF"), ("etc/", D, b""), ("etc/old", F, b"old")]),
        tar_of(&[("etc/.wh.old", F, b""), ("etc/new", F, b"new")]),
    ]
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/app/hello"], "Cmd": ["world"], "Env": ["A=1"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len()})
}

/// An OCI layout in `dir` (second layer gzip-compressed); the files it holds, by name.
fn oci_layout(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let raw = layers();
    let diff_ids: Vec<String> = raw.iter().map(|l| sha256_digest(l)).collect();
    let blobs = [raw[0].clone(), gzip(&raw[1])];
    let config = config(&diff_ids);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar", &blobs[0]),
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &blobs[1]),
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &manifest)],
    }))
    .unwrap();
    let mut files = vec![
        ("oci-layout".to_string(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".to_string(), index),
    ];
    for blob in [config, manifest, blobs[0].clone(), blobs[1].clone()] {
        files.push((blob_path(&blob), blob));
    }
    for (name, bytes) in &files {
        std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    files
}

fn blob_path(bytes: &[u8]) -> String {
    blobs::blob_name(&sha256_digest(bytes)).unwrap()
}

fn tarball(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &bytes[..]).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// What `docker save` (before Docker 25) writes for the same image.
fn docker_files() -> Vec<(String, Vec<u8>)> {
    let raw = layers();
    let diff_ids: Vec<String> = raw.iter().map(|l| sha256_digest(l)).collect();
    let config = config(&diff_ids);
    let config_name = format!("{}.json", &sha256_digest(&config)[7..]);
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": ["app:1"], "Layers": ["one/layer.tar", "two/layer.tar"]}
    ]))
    .unwrap();
    vec![
        ("manifest.json".into(), manifest),
        (config_name, config),
        ("one/layer.tar".into(), raw[0].clone()),
        ("two/layer.tar".into(), raw[1].clone()),
    ]
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-container-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(image: &ContainerImage) {
    let mut paths = Vec::new();
    image.tree.walk(|p, n| paths.push(format!("{p}{}", if matches!(n, Node::Dir { .. }) { "/" } else { "" })));
    assert_eq!(paths, ["/app/", "/app/hello", "/etc/", "/etc/new"]);
    assert_eq!(image.settings.entrypoint, ["/app/hello"]);
    assert_eq!(image.settings.cmd, ["world"]);
    assert_eq!(image.layers, 2);
}

#[test]
fn layouts_and_archives_give_the_same_tree() {
    let dir = temp("layout");
    let files = oci_layout(&dir.join("layout"));
    let from_layout = load(&Source::OciLayout { dir: dir.join("layout"), reference: None }).unwrap();
    check(&from_layout);
    tarball(&dir.join("oci.tar"), &files);
    let from_archive = load(&Source::OciArchive { path: dir.join("oci.tar"), reference: None }).unwrap();
    assert_eq!(from_archive.tree, from_layout.tree);
    assert_eq!(from_archive.config_digest, from_layout.config_digest);

    tarball(&dir.join("docker.tar"), &docker_files());
    let docker = load(&Source::DockerArchive { path: dir.join("docker.tar"), reference: None }).unwrap();
    check(&docker);
    let tagged = load(&Source::DockerArchive { path: dir.join("docker.tar"), reference: Some("app:1".into()) });
    assert_eq!(tagged.unwrap().tree, docker.tree);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_images_are_refused() {
    let dir = temp("damaged");
    let files = oci_layout(&dir.join("layout"));
    let layout = || load(&Source::OciLayout { dir: dir.join("layout"), reference: None }).unwrap_err().to_string();
    // A layer of the right size whose bytes changed.
    let (name, bytes) = &files[4];
    let mut changed = bytes.clone();
    *changed.last_mut().unwrap() ^= 1;
    std::fs::write(dir.join("layout").join(name), &changed).unwrap();
    let err = layout();
    assert!(
        err.starts_with(&format!("layer 1 of 2 ({name}) does not match its digest: {}", sha256_digest(bytes))),
        "{err}"
    );
    // A missing layer.
    std::fs::remove_file(dir.join("layout").join(name)).unwrap();
    assert_eq!(layout(), format!("{} has no {name}", dir.join("layout").display()));

    // A docker archive whose layer does not match the config's diff_id.
    let mut docker = docker_files();
    docker[3].1 = tar_of(&[("etc/new", F, b"evil")]);
    tarball(&dir.join("docker.tar"), &docker);
    let err = load(&Source::DockerArchive { path: dir.join("docker.tar"), reference: None }).unwrap_err().to_string();
    assert!(err.starts_with("layer 2 of 2 (two/layer.tar) does not match its digest: sha256:"), "{err}");
    // One without its second layer.
    tarball(&dir.join("short.tar"), &docker[..3]);
    let err = load(&Source::DockerArchive { path: dir.join("short.tar"), reference: None }).unwrap_err().to_string();
    assert_eq!(err, format!("{} has no two/layer.tar", dir.join("short.tar").display()));
    std::fs::write(dir.join("junk.tar"), b"junk").unwrap();
    assert!(load(&Source::OciArchive { path: dir.join("junk.tar"), reference: None }).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sources_are_named_as_skopeo_names_them() {
    let base = Path::new("/proj");
    assert_eq!(
        Source::parse("oci-archive:app.tar", base).unwrap(),
        Source::OciArchive { path: "/proj/app.tar".into(), reference: None }
    );
    assert_eq!(
        Source::parse("docker-archive:/tmp/a.tar:app:1", base).unwrap(),
        Source::DockerArchive { path: "/tmp/a.tar".into(), reference: Some("app:1".into()) }
    );
    assert_eq!(
        Source::parse("oci:layout:v1", base).unwrap(),
        Source::OciLayout { dir: "/proj/layout".into(), reference: Some("v1".into()) }
    );
    assert_eq!(Source::parse("registry:ghcr.io/a/b:1", base).unwrap(), Source::Registry("ghcr.io/a/b:1".into()));
    assert!(Source::parse("ftp:x", base).is_err() && Source::parse("oci:", base).is_err());
    assert!(Source::is_source("oci:x") && !Source::is_source("./app"));
}
