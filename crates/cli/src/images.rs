//! `kiln images`, `kiln tag`, `kiln rmi`.

use crate::output::{print_table, Format};
use anyhow::{bail, Result};
use kiln_image::instance::{Instance, Instances};
use kiln_image::size::human;
use kiln_image::{Digest, Reference, Store, StoreError};
use kiln_launch::home;
use serde::Serialize;

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    format: Format,
}

#[derive(Serialize)]
struct ImageRow {
    name: String,
    tag: String,
    id: Digest,
    /// All its blobs and the manifest, in bytes; none when the manifest cannot be read.
    size: Option<u64>,
}

fn total_size(store: &Store, digest: &Digest) -> Option<u64> {
    let manifest = store.manifest(digest).ok()?;
    let manifest_size = std::fs::metadata(store.blob_path(digest)).ok()?.len();
    Some(manifest.total_size(manifest_size))
}

pub fn images(args: ImagesArgs) -> Result<u8> {
    let store = home::store()?;
    for damaged in store.damaged_tags()? {
        errln!("kiln: {damaged}");
    }
    let rows: Vec<ImageRow> = store
        .tags()?
        .into_iter()
        .map(|(r, digest)| ImageRow { size: total_size(&store, &digest), name: r.name, tag: r.tag, id: digest })
        .collect();
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => {
            let cells = rows
                .iter()
                .map(|r| {
                    let size = r.size.map(human).unwrap_or_else(|| "damaged (kiln inspect says why)".into());
                    vec![r.name.clone(), r.tag.clone(), r.id.short().to_string(), size]
                })
                .collect::<Vec<_>>();
            print_table(&["NAME", "TAG", "ID", "SIZE"], &cells);
        }
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct TagArgs {
    /// The image: NAME[:TAG] or id
    source: String,
    /// The new name
    #[arg(value_name = "NAME[:TAG]")]
    target: String,
}

pub fn tag(args: TagArgs) -> Result<u8> {
    let store = home::store()?;
    let target: Reference = args.target.parse()?;
    let _lock = store.lock()?;
    let digest = store.resolve(&args.source)?;
    store.tag(&target, &digest)?;
    Ok(0)
}

#[derive(clap::Args)]
pub struct RmiArgs {
    /// Remove it even if instances were started from it
    #[arg(short, long)]
    force: bool,
    /// Images: NAME[:TAG] removes that tag (the image goes with its last tag); an id removes every tag
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

pub fn rmi(args: RmiArgs) -> Result<u8> {
    let store = home::store()?;
    let _lock = store.lock()?;
    // Read under the lock (under which instances are created), so that none started meanwhile is missed.
    let instances = Instances::new(&store).records()?;
    let removed = args.images.iter().try_for_each(|what| untag_image(&store, what, &instances, args.force));
    // Also after an error: the images removed before it must not leave their blobs behind.
    let freed = store.collect_garbage(&[])?;
    if freed > 0 {
        outln!("freed {}", human(freed));
    }
    removed.map(|()| 0)
}

/// Removes the tag `what` names, or every tag of the image an id names; says which, and whether the image went.
fn untag_image(store: &Store, what: &str, instances: &[Instance], force: bool) -> Result<()> {
    let digest = match store.resolve(what) {
        Ok(digest) => digest,
        Err(StoreError::DamagedTag { reference, .. }) => {
            store.remove_tag(&reference)?;
            outln!("untagged {reference}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let tags: Vec<Reference> = store.tags()?.into_iter().filter(|(_, d)| *d == digest).map(|(r, _)| r).collect();
    let by_tag = what.parse::<Reference>().ok().filter(|r| tags.contains(r));
    let removing: Vec<Reference> = match by_tag {
        Some(r) => vec![r],
        None => tags.clone(),
    };
    if removing.len() == tags.len() && !force {
        if let Some(user) = instances.iter().find(|i| i.image_id.as_ref() == Some(&digest)) {
            bail!(
                "{what}: instance {} ({}) was started from it; remove the instance first (kiln rm) or use --force",
                user.name,
                user.id
            );
        }
    }
    for r in &removing {
        store.untag(r)?;
        outln!("untagged {r}");
    }
    if removing.len() == tags.len() {
        outln!("deleted {digest}");
    }
    Ok(())
}
