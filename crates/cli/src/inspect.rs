//! `kiln inspect`: an instance's record, or an image (sizes, digests, settings, every file), as JSON.

use crate::home;
use crate::images;
use anyhow::{bail, Result};
use kiln_image::instance::{InstanceError, Instances};
use kiln_image::StoreError;

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
                    reports.push(images::report(&store, &digest).map_err(|e| e.context(format!("image {what}")))?);
                    continue;
                }
                Err(StoreError::NoSuchImage(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no such instance or image: {what}");
    }
    println!("{}", serde_json::to_string_pretty(&reports)?);
    Ok(0)
}
