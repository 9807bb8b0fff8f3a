//! Where Kiln keeps things: the store in `$KILN_HOME`, else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`; the
//! caches in `$KILN_HOME/cache`, else the XDG cache (`~/.cache/kiln`).

use kiln_image::Store;
use std::path::PathBuf;

/// There is no home directory to keep `what` in.
#[derive(Debug, thiserror::Error)]
#[error("no place for {0}: set KILN_HOME (or HOME)")]
pub struct NoHome(pub &'static str);

fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

pub fn kiln_home() -> Option<PathBuf> {
    var("KILN_HOME")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/kiln")))
}

pub fn store() -> Result<Store, NoHome> {
    kiln_home().map(Store::new).ok_or(NoHome("the image store"))
}

/// `$KILN_HOME/cache/NAME`, else the XDG cache (`~/.cache/kiln/NAME`); none if there is no home to use.
pub fn cache_dir(name: &str) -> Option<PathBuf> {
    if let Some(home) = var("KILN_HOME") {
        return Some(home.join("cache").join(name));
    }
    let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("kiln").join(name))
}

/// Where rewritten programs and shared objects are kept between runs.
pub fn rewrite_cache_dir() -> Option<PathBuf> {
    cache_dir("rewrite")
}
