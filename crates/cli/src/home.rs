//! Where Kiln keeps its store: `$KILN_HOME`, else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.

use anyhow::{anyhow, Result};
use kiln_image::Store;
use std::path::PathBuf;

fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

pub fn kiln_home() -> Option<PathBuf> {
    var("KILN_HOME")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/kiln")))
}

pub fn store() -> Result<Store> {
    kiln_home().map(Store::new).ok_or_else(|| anyhow!("no place for the image store: set KILN_HOME (or HOME)"))
}
