//! Path resolution as Linux's walk does it: a path made absolute and canonical (no `.`, `..`, empty components or
//! symbolic links before its last name), following each symbolic link it meets, at most [`MAX_LINKS`] per walk
//! (ELOOP beyond). A link's target continues the walk from the directory holding the link (or from the root for an
//! absolute target), so a `..` after a link leaves the target's directory, not the link's. The last name is followed
//! only when asked (or when a trailing slash asks for a directory); everything after the walk works on canonical
//! paths.

use super::{lookup_normalised, root, Backing, Inode, CWD, PATH_MAX};
use crate::errno::Errno;
use crate::volume;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Symbolic links one walk follows before it gives up with ELOOP (Linux's `MAXSYMLINKS`).
pub const MAX_LINKS: u32 = 40;

/// `path` made absolute and canonical, and whether it ended with a slash. Names before the last must be
/// directories (or links to them): ENOTDIR for something else, ENOENT for nothing. The last name is followed if it
/// is a link and `follow` (or the path ends with a slash); it may be missing (a name to create).
pub fn normalise(path: &str, follow: bool) -> Result<(String, bool), Errno> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    let slash = path.ends_with('/');
    let follow = follow || slash;
    let mut walk = Walk { parts: Vec::new(), current: Some(root()), links: 0 };
    if !path.starts_with('/') {
        walk.parts = super::components(&CWD.lock()).map(String::from).collect();
        walk.current = None;
    }
    // Names still to walk, the next one last.
    let mut pending: Vec<String> = path.split('/').rev().filter(|p| !p.is_empty()).map(String::from).collect();
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => {
                walk.directory()?;
            }
            ".." => {
                walk.directory()?;
                walk.parts.pop();
                walk.current = None;
            }
            name if name.len() > 255 => return Err(Errno::ENAMETOOLONG),
            _ => {
                let last = pending.is_empty();
                if last && !follow {
                    walk.parts.push(part);
                    break;
                }
                if let Some(target) = walk.step(part, last)? {
                    walk.enter_link(&target, &mut pending)?;
                }
            }
        }
    }
    Ok((super::join(&walk.parts), slash))
}

struct Walk {
    /// Canonical components walked so far.
    parts: Vec<String>,
    /// The inode `parts` names, when known (found again by lookup after a `..`).
    current: Option<Arc<Inode>>,
    links: u32,
}

impl Walk {
    /// The inode walked to, which must be a directory.
    fn directory(&mut self) -> Result<Arc<Inode>, Errno> {
        let node = match self.current.take() {
            Some(node) => node,
            None => lookup_normalised(&super::join(&self.parts))?,
        };
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.current = Some(node.clone());
        Ok(node)
    }

    /// Walks into `name`: the link's target if it is a symbolic link (the walk is left at its directory). A missing
    /// last name is fine.
    fn step(&mut self, name: String, last: bool) -> Result<Option<String>, Errno> {
        let dir = self.directory()?;
        self.parts.push(name);
        let abs = super::join(&self.parts);
        let child = match child(&dir, &abs, self.parts.last().map_or("", String::as_str)) {
            Ok(child) => child,
            Err(Errno::ENOENT) if last => {
                self.current = None;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if let Some(target) = child.link_target() {
            self.parts.pop();
            self.current = Some(dir);
            return Ok(Some(target));
        }
        self.current = Some(child);
        Ok(None)
    }

    /// Continues the walk with a link's target.
    fn enter_link(&mut self, target: &str, pending: &mut Vec<String>) -> Result<(), Errno> {
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(Errno::ELOOP);
        }
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.starts_with('/') {
            self.parts.clear();
            self.current = Some(root());
        }
        pending.extend(target.split('/').rev().filter(|p| !p.is_empty()).map(ToString::to_string));
        Ok(())
    }
}

/// The entry `name` of directory `dir`, whose path with `name` is `abs`: a volume's root if a volume is mounted
/// there.
fn child(dir: &Inode, abs: &str, name: &str) -> Result<Arc<Inode>, Errno> {
    match &dir.backing {
        Backing::Memory(_) => {
            if let Some(volume) = volume::mounted_at(abs) {
                return volume.lookup(&[]).map(Inode::on_volume);
            }
            dir.memory_child(name)
        }
        Backing::Volume(node) => node.child(name).map(Inode::on_volume),
    }
}
