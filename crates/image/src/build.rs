//! Making an image from a checked [`Project`]: its root filesystem (the project's files and directories, with
//! normalised modes and in a fixed order), its blobs in the store, and the manifest that names them.

use crate::kiln_toml::Project;
use crate::manifest::{BlobRef, Manifest, RunConfig, SCHEMA};
use crate::reference::Reference;
use crate::store::{Store, StoreError};
use crate::Digest;
use kiln_vmm::rootfs::{RootfsBuilder, RootfsError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{key} \"{host}\"")]
    Rootfs {
        key: &'static str,
        host: String,
        #[source]
        source: RootfsError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The root filesystem: `dirs` first, then `files` (so a file can replace one a directory brought), each in host
/// path order. Host paths are relative to the project directory.
pub fn rootfs(project: &Project) -> Result<Vec<u8>, BuildError> {
    let mut builder = RootfsBuilder::reproducible();
    add_project_files(project, &mut builder)?;
    Ok(builder.finish())
}

/// What [`rootfs`] puts in, into `builder` (after what it holds already).
pub fn add_project_files(project: &Project, builder: &mut RootfsBuilder) -> Result<(), BuildError> {
    for (host, guest) in &project.dirs {
        builder.add_host_dir(&project.dir.join(host), guest).map_err(|source| BuildError::Rootfs {
            key: "dirs",
            host: host.clone(),
            source,
        })?;
    }
    for (host, guest) in &project.files {
        builder.add_host_file(&project.dir.join(host), guest).map_err(|source| BuildError::Rootfs {
            key: "files",
            host: host.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The parts of an image, before they are stored.
pub struct Parts<'a> {
    pub kernel: &'a [u8],
    pub program: &'a [u8],
    /// The program as the VMM prepared it (`kiln_vmm::rewrite_cache::encode`).
    pub prepared: &'a [u8],
    /// The path the program runs as (`/<file name>` for a project's binary; where a container image has it).
    pub program_path: &'a str,
    pub rootfs: &'a [u8],
    pub kiln_version: &'a str,
}

/// Stores the parts and the manifest, tags the image, and returns its id. `stored` is told each blob's size once it
/// is in the store (for a progress bar).
pub fn store_image(
    store: &Store,
    project: &Project,
    parts: &Parts<'_>,
    tag: &Reference,
    stored: impl FnMut(u64),
) -> Result<(Digest, Manifest), BuildError> {
    // Held until the tag is written: `kiln rmi` collects garbage under the same lock, and would otherwise see these
    // blobs as needed by no image.
    let _lock = store.lock()?;
    let stored = store_and_tag(store, project, parts, tag, stored);
    if stored.is_err() {
        // The blobs stored before the error are needed by no image: nothing half-built stays behind. (No other
        // build is storing blobs: they all hold the lock.)
        let _ = store.collect_garbage(&[]);
    }
    stored
}

fn store_and_tag(
    store: &Store,
    project: &Project,
    parts: &Parts<'_>,
    tag: &Reference,
    mut stored: impl FnMut(u64),
) -> Result<(Digest, Manifest), BuildError> {
    let mut put = |bytes: &[u8]| -> Result<BlobRef, StoreError> {
        let digest = store.put_blob(bytes)?;
        stored(bytes.len() as u64);
        Ok(BlobRef { digest, size: bytes.len() as u64 })
    };
    let manifest = Manifest {
        schema: SCHEMA,
        name: project.name.clone(),
        kiln_version: parts.kiln_version.to_string(),
        boot_version: kiln_abi::boot::BOOT_VERSION,
        kernel: put(parts.kernel)?,
        program: put(parts.program)?,
        prepared: put(parts.prepared)?,
        rootfs: put(parts.rootfs)?,
        config: RunConfig {
            program_path: parts.program_path.to_string(),
            args: project.args.clone(),
            env: project.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            memory: project.memory,
            cpus: project.cpus,
            ports: project.ports.clone(),
            volumes: project.volumes.clone(),
            workdir: project.workdir.clone(),
        },
    };
    let digest = put(&manifest.to_bytes())?.digest;
    store.tag(tag, &digest)?;
    Ok((digest, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kiln_toml::parse;

    #[test]
    fn the_same_inputs_give_the_same_image_wherever_they_are() {
        let base = std::env::temp_dir().join(format!("kiln-build-{}", std::process::id()));
        let store = Store::new(base.join("store"));
        let mut ids = Vec::new();
        for (copy, mode) in [("one", 0o600), ("two", 0o664)] {
            let dir = base.join(copy);
            std::fs::create_dir_all(dir.join("static/css")).unwrap();
            std::fs::write(dir.join("static/index.html"), "<h1>hi</h1>").unwrap();
            std::fs::write(dir.join("static/css/site.css"), "h1{}").unwrap();
            std::fs::write(dir.join("app.toml"), "port = 80").unwrap();
            let mode = std::os::unix::fs::PermissionsExt::from_mode(mode);
            std::fs::set_permissions(dir.join("app.toml"), mode).unwrap();
            let src = "name = \"web\"\nbinary = \"app\"\nfiles = { \"app.toml\" = \"/etc/app.toml\" }\ndirs = { static = \"/srv\" }\n";
            let project = parse(src, "Kiln.toml", dir).unwrap();
            let fs = rootfs(&project).unwrap();
            let parts = Parts {
                kernel: b"k",
                program: b"p",
                prepared: b"q",
                program_path: "/app",
                rootfs: &fs,
                kiln_version: "0",
            };
            let (digest, manifest) = store_image(&store, &project, &parts, &"web".parse().unwrap(), |_| {}).unwrap();
            assert_eq!(manifest.config.program_path, "/app");
            ids.push(digest);
        }
        assert_eq!(ids[0], ids[1]);
        assert_eq!(store.resolve("web").unwrap(), ids[0]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_build_that_fails_leaves_no_blobs() {
        let store = crate::store::tests::temp_store("failed-build");
        // The root filesystem, stored after the kernel and the program, cannot be: a directory is in its place.
        std::fs::create_dir_all(store.blob_path(&Digest::of(b"fs"))).unwrap();
        let project = parse("name = \"a\"\nbinary = \"a\"\n", "Kiln.toml", "/nonexistent".into()).unwrap();
        let parts =
            Parts { kernel: b"k", program: b"p", prepared: b"q", program_path: "/a", rootfs: b"fs", kiln_version: "0" };
        let err = store_image(&store, &project, &parts, &"a".parse().unwrap(), |_| {}).unwrap_err();
        assert!(matches!(err, BuildError::Store(StoreError::Io { .. })), "{err}");
        let left: Vec<_> = std::fs::read_dir(store.root().join("blobs/sha256")).unwrap().collect();
        assert_eq!(left.len(), 1, "only the directory, which is not a blob: {left:?}");
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn missing_files_name_their_key() {
        let project =
            parse("name = \"a\"\nbinary = \"a\"\nfiles = { nope = \"/x\" }\n", "Kiln.toml", "/nonexistent".into())
                .unwrap();
        let err = rootfs(&project).unwrap_err();
        assert_eq!(err.to_string(), "files \"nope\"");
        assert!(matches!(err, BuildError::Rootfs { source: RootfsError::Missing(_), .. }));
    }
}
