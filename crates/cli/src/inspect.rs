//! `kiln inspect`: an instance's record, or an image (sizes, digests, settings, every file), as JSON.

use anyhow::{bail, Result};
use kiln_abi::rootfs::{entries, KIND_DIR, KIND_SYMLINK};
use kiln_image::instance::{InstanceError, Instances};
use kiln_image::{Digest, Manifest, Store, StoreError};
use kiln_launch::home;
use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Image,
    Instance,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Look only for this kind of object
    #[arg(long = "type", value_enum)]
    kind: Option<Kind>,
    /// Instance (name or id) or image (NAME[:TAG] or id)
    #[arg(required = true, value_name = "NAME")]
    what: Vec<String>,
}

pub fn inspect(args: InspectArgs) -> Result<u8> {
    let store = home::store()?;
    let instances = Instances::new(&store);
    let mut reports = Vec::new();
    for what in &args.what {
        if args.kind != Some(Kind::Image) {
            match instances.find(what) {
                Ok(instance) => {
                    let mut value = serde_json::to_value(&instance)?;
                    value["log"] = instances.log_path(&instance.id).display().to_string().into();
                    let core = instances.core_path(&instance.id);
                    if core.is_file() {
                        value["core"] = core.display().to_string().into();
                    }
                    reports.push(value);
                    continue;
                }
                Err(InstanceError::NoSuch(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if args.kind != Some(Kind::Instance) {
            let _reading = store.read_lock()?;
            match store.resolve(what) {
                Ok(digest) => {
                    reports.push(image_report(&store, &digest).map_err(|e| e.context(format!("image {what}")))?);
                    continue;
                }
                Err(StoreError::NoSuchImage(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no such instance or image: {what}");
    }
    outln!("{}", serde_json::to_string_pretty(&reports)?);
    Ok(0)
}

#[derive(Serialize)]
struct ImageReport {
    id: Digest,
    tags: Vec<String>,
    name: String,
    kiln_version: String,
    boot_version: u32,
    size: Sizes,
    kernel: kiln_image::manifest::BlobRef,
    program: kiln_image::manifest::BlobRef,
    prepared: kiln_image::manifest::BlobRef,
    rootfs: kiln_image::manifest::BlobRef,
    config: kiln_image::manifest::RunConfig,
    files: Vec<FileRow>,
}

#[derive(Serialize)]
struct Sizes {
    total: u64,
    manifest: u64,
    kernel: u64,
    program: u64,
    prepared: u64,
    rootfs: u64,
}

#[derive(Serialize)]
struct FileRow {
    path: String,
    kind: &'static str,
    mode: String,
    size: u64,
    /// A symbolic link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

/// The image, every blob of it checked against its digest: a damaged one is refused with the store's message.
fn image_report(store: &Store, digest: &Digest) -> Result<serde_json::Value> {
    let manifest_bytes = store.blob(digest)?;
    let manifest = Manifest::from_bytes(&manifest_bytes)?;
    for (what, blob) in manifest.blobs() {
        if what != "rootfs" {
            store.image_blob(blob)?;
        }
    }
    let rootfs = store.image_blob(&manifest.rootfs)?;
    let mut files = vec![FileRow {
        path: manifest.config.program_path.clone(),
        kind: "program",
        mode: "0755".into(),
        size: manifest.program.size,
        target: None,
    }];
    if rootfs.len() > kiln_abi::rootfs::PREFIX_LEN {
        for entry in entries(&rootfs).map_err(|_| anyhow::anyhow!("the image's root filesystem is malformed"))? {
            let e = entry.map_err(|_| anyhow::anyhow!("the image's root filesystem is malformed"))?;
            let kind = match e.kind {
                KIND_DIR => "dir",
                KIND_SYMLINK => "symlink",
                _ => "file",
            };
            let data = &rootfs[e.data_offset..e.data_offset + e.data_len];
            files.push(FileRow {
                path: e.path.to_string(),
                kind,
                mode: format!("{:04o}", e.perm),
                size: e.data_len as u64,
                target: (e.kind == KIND_SYMLINK).then(|| String::from_utf8_lossy(data).into_owned()),
            });
        }
    }
    let tags = store.tags()?.into_iter().filter(|(_, d)| d == digest).map(|(r, _)| r.to_string()).collect();
    let size = Sizes {
        total: manifest.total_size(manifest_bytes.len() as u64),
        manifest: manifest_bytes.len() as u64,
        kernel: manifest.kernel.size,
        program: manifest.program.size,
        prepared: manifest.prepared.size,
        rootfs: manifest.rootfs.size,
    };
    let report = ImageReport {
        id: digest.clone(),
        tags,
        name: manifest.name,
        kiln_version: manifest.kiln_version,
        boot_version: manifest.boot_version,
        size,
        kernel: manifest.kernel,
        program: manifest.program,
        prepared: manifest.prepared,
        rootfs: manifest.rootfs,
        config: manifest.config,
        files,
    };
    Ok(serde_json::to_value(report)?)
}
