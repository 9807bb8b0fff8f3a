//! What `kiln run IMAGE|PROGRAM` boots: an image from the store (its library OS, program, files and settings, every
//! blob checked against its digest), or a static executable on the host with the library OS built into `kiln`.

use crate::home;
use crate::run::{RunArgs, KERNEL};
use anyhow::{anyhow, bail, Context, Result};
use kiln_image::manifest::BlobRef;
use kiln_image::{Digest, StoreError};
use kiln_usernet::PortForward;
use std::borrow::Cow;
use std::path::Path;

pub struct Target {
    /// How the user named it, for messages.
    pub shown: String,
    /// A short name for instances of it: the image's name, or the program's file name.
    pub base_name: String,
    pub image_id: Option<Digest>,
    pub kernel: Cow<'static, [u8]>,
    pub program: Vec<u8>,
    /// The image's prepared program, when this kiln's version built it (another's rewriter may differ).
    pub prepared: Option<Vec<u8>>,
    /// A host program's identity for the rewrite cache (`kiln_vmm::rootfs_cache::identity`), if it did not change
    /// while it was read.
    pub program_identity: Option<Vec<u8>>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub exe_path: String,
    pub memory: Option<u64>,
    pub cpus: Option<u32>,
    /// The image's root filesystem, if it has files (read by [`image_rootfs`] when the root filesystem cache has
    /// not got it already); none for a program.
    pub rootfs: Option<BlobRef>,
    /// The image's published ports (`-p` replaces them).
    pub ports: Vec<PortForward>,
    /// The image's volumes: (name, mount path); `-v` adds to them and replaces one with the same name or path.
    pub volumes: Vec<(String, String)>,
    /// The image's working directory (`-w` replaces it).
    pub workdir: Option<String>,
}

/// A name that starts with `/` or `.` is a program; anything else is an image if the store has one by that name, and
/// a program otherwise (`kiln run hello` in a project directory runs the image, as the user just built it).
pub fn resolve(args: &RunArgs) -> Result<Target> {
    let what = &args.target;
    let path = Path::new(what);
    if what.starts_with(['/', '.']) {
        return program(args, path);
    }
    let Ok(store) = home::store() else { return program(args, path) };
    // Shared with other readers; a concurrent `kiln rmi` waits, or has finished and the image is gone.
    let _reading = store.read_lock()?;
    match store.resolve(what) {
        Ok(digest) => image(args, &store, digest).with_context(|| format!("image {what}")),
        Err(StoreError::NoSuchImage(_)) if path.exists() || what.contains('/') => program(args, path),
        Err(StoreError::NoSuchImage(_)) => bail!("{what}: no such image (kiln images lists them) or file"),
        Err(e) => Err(e.into()),
    }
}

/// The image with this id, as `args` names it: an instance process boots the image its record names, even if the
/// name it was started with has been given to another image since (its blobs stay until a `kiln rmi`).
pub fn resolve_image(args: &RunArgs, id: Digest) -> Result<Target> {
    let store = home::store()?;
    let _reading = store.read_lock()?;
    match store.manifest(&id) {
        Err(StoreError::MissingBlob(missing)) if missing == id => {
            bail!("{}: no such image: it was removed after kiln run -d named it", args.target)
        }
        _ => image(args, &store, id).with_context(|| format!("image {}", args.target)),
    }
}

fn program(args: &RunArgs, path: &Path) -> Result<Target> {
    let shown = path.display().to_string();
    let identity = kiln_vmm::rootfs_cache::identity(path).ok();
    let program = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{shown}: no such file"),
        std::io::ErrorKind::PermissionDenied => anyhow!("{shown}: permission denied"),
        _ if path.is_dir() => anyhow!("{shown}: is a directory, not a program"),
        _ => anyhow!(e).context(format!("cannot read {shown}")),
    })?;
    let program_identity =
        identity.filter(|before| kiln_vmm::rootfs_cache::identity(path).ok().as_ref() == Some(before));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    let mut argv = vec![shown.clone()];
    argv.extend(args.args.iter().cloned());
    Ok(Target {
        shown,
        base_name: name.clone(),
        image_id: None,
        kernel: Cow::Borrowed(KERNEL),
        program,
        prepared: None,
        program_identity,
        argv,
        env: Vec::new(),
        exe_path: format!("/{name}"),
        memory: None,
        cpus: None,
        rootfs: None,
        ports: Vec::new(),
        volumes: Vec::new(),
        workdir: None,
    })
}

fn image(args: &RunArgs, store: &kiln_image::Store, digest: Digest) -> Result<Target> {
    let manifest = store.manifest(&digest)?;
    let ours = kiln_abi::boot::BOOT_VERSION;
    if manifest.boot_version != ours {
        bail!(
            "it was built by kiln {} for boot protocol {}, and this kiln boots protocol {ours}; build it again",
            manifest.kiln_version,
            manifest.boot_version
        );
    }
    let config = &manifest.config;
    let volumes = config
        .volumes
        .iter()
        .map(|(name, path)| {
            crate::volume::parse_mount(&format!("{name}:{path}")).map_err(|e| anyhow!("its volume: {e}"))
        })
        .collect::<Result<_>>()?;
    let ports = config
        .ports
        .iter()
        .map(|p| p.parse::<PortForward>().map_err(|e| anyhow!("its port {p}: {}", e.problem)))
        .collect::<Result<_>>()?;
    let mut argv = vec![config.program_path.clone()];
    argv.extend(if args.args.is_empty() { config.args.iter() } else { args.args.iter() }.cloned());
    Ok(Target {
        shown: args.target.clone(),
        base_name: manifest.name.rsplit('/').next().unwrap_or(&manifest.name).to_string(),
        image_id: Some(digest),
        kernel: Cow::Owned(store.image_blob(&manifest.kernel)?),
        program: store.image_blob(&manifest.program)?,
        prepared: match manifest.kiln_version == env!("CARGO_PKG_VERSION") {
            true => Some(store.image_blob(&manifest.prepared)?),
            false => None,
        },
        program_identity: None,
        argv,
        env: config.env.clone(),
        exe_path: config.program_path.clone(),
        memory: Some(config.memory),
        cpus: Some(config.cpus),
        rootfs: (manifest.rootfs.size > kiln_abi::rootfs::PREFIX_LEN as u64).then(|| manifest.rootfs.clone()),
        ports,
        volumes,
        workdir: config.workdir.clone(),
    })
}

/// The image's volumes with `-v` on top: a flag replaces the image's volume of the same name or mount path.
pub fn merged_volumes(image: &[(String, String)], flags: &[(String, String)]) -> Vec<(String, String)> {
    let replaced = |(name, path): &&(String, String)| flags.iter().any(|(n, p)| n == name || p == path);
    image.iter().filter(|v| !replaced(v)).chain(flags).cloned().collect()
}

/// The image's environment with `--env` on top: a variable set by both has the `--env` value.
pub fn merged_env(image: &[String], flags: &[String]) -> Vec<String> {
    let key = |kv: &String| kv.split_once('=').map(|(k, _)| k.to_string()).unwrap_or_default();
    let overridden: Vec<String> = flags.iter().map(key).collect();
    image.iter().filter(|kv| !overridden.contains(&key(kv))).chain(flags).cloned().collect()
}

/// An image's root filesystem, checked against its digest.
pub fn image_rootfs(blob: &BlobRef) -> Result<Vec<u8>> {
    let store = home::store()?;
    let _reading = store.read_lock()?;
    Ok(store.image_blob(blob)?)
}

#[cfg(test)]
mod tests {
    use super::{merged_env, merged_volumes};

    #[test]
    fn volume_flags_add_to_the_images_and_replace_by_name_or_path() {
        let v = |n: &str, p: &str| (n.to_string(), p.to_string());
        let image = [v("db", "/var/db"), v("logs", "/logs"), v("cache", "/cache")];
        let flags = [v("db2", "/var/db"), v("logs", "/other"), v("extra", "/x")];
        assert_eq!(
            merged_volumes(&image, &flags),
            [v("cache", "/cache"), v("db2", "/var/db"), v("logs", "/other"), v("extra", "/x")]
        );
    }

    #[test]
    fn flags_override_the_images_environment() {
        let image = ["A=1".to_string(), "B=2".to_string()];
        let flags = ["B=3".to_string(), "C=4".to_string()];
        assert_eq!(merged_env(&image, &flags), ["A=1", "B=3", "C=4"]);
    }
}
