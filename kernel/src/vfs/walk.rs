//! Path resolution as Linux's walk does it: a path made absolute and canonical (no `.`, `..`, empty components or
//! symbolic links before its last name), following each symbolic link it meets, at most [`MAX_LINKS`] per walk
//! (ELOOP beyond). A link's target continues the walk from the directory holding the link (or from the root for an
//! absolute target), so a `..` after a link leaves the target's directory, not the link's. The last name is followed
//! only when asked (or when a trailing slash asks for a directory); everything after the walk works on canonical
//! paths.

use super::{lookup_normalised, root, Backing, Found, Inode, CWD, PATH_MAX};
use crate::errno::Errno;
use crate::volume;
use alloc::borrow::Cow;
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
    let mut walk = Walk { parts: Vec::new(), dir: Some(root()), not_dir: false, links: 0 };
    if !path.starts_with('/') {
        walk.parts = super::components(&CWD.lock()).map(|p| Cow::Owned(p.to_string())).collect();
        walk.dir = None;
    }
    // Names still to walk, the next one last. Borrowed from `path`; a link's target's are owned.
    let mut pending: Vec<Cow<'_, str>> = path.rsplit('/').filter(|p| !p.is_empty()).map(Cow::Borrowed).collect();
    while let Some(part) = pending.pop() {
        match &*part {
            "." => {
                walk.directory()?;
            }
            ".." => {
                walk.directory()?;
                walk.parts.pop();
                walk.dir = None;
            }
            name if name.len() > 255 => return Err(Errno::ENAMETOOLONG),
            _ => {
                let last = pending.is_empty();
                if last && !follow {
                    walk.parts.push(part);
                    break;
                }
                if let Some(target) = walk.step(part, last)? {
                    walk.enter_link(target, &mut pending)?;
                }
            }
        }
    }
    Ok((join(&walk.parts, None), slash))
}

/// `/` and `parts` joined by slashes, and `more` after them.
fn join(parts: &[Cow<'_, str>], more: Option<&str>) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + more.map_or(1, str::len));
    for part in parts.iter().map(|p| &**p).chain(more) {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

struct Walk<'p> {
    /// Canonical components walked so far.
    parts: Vec<Cow<'p, str>>,
    /// The directory `parts` names, when known (after a `..` it is looked up again).
    dir: Option<Arc<Inode>>,
    /// Whether `parts` names something other than a directory.
    not_dir: bool,
    links: u32,
}

impl<'p> Walk<'p> {
    /// The inode walked to, which must be a directory.
    fn directory(&mut self) -> Result<Arc<Inode>, Errno> {
        if self.not_dir {
            return Err(Errno::ENOTDIR);
        }
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let node = lookup_normalised(&join(&self.parts, None))?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.dir = Some(node.clone());
        Ok(node)
    }

    /// Walks into `name`; a symbolic link's target instead, to continue with (the walk stays in the link's
    /// directory). A missing last name is fine.
    fn step(&mut self, name: Cow<'p, str>, last: bool) -> Result<Option<String>, Errno> {
        let dir = self.directory()?;
        // Only a walk that may enter a volume needs the path so far.
        let abs = volume::any().then(|| join(&self.parts, Some(&name)));
        let child = match child(&dir, abs.as_deref(), &name) {
            Ok(child) => child,
            Err(Errno::ENOENT) if last => {
                self.parts.push(name);
                self.dir = None;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match child.found() {
            Found::Link(target) => return Ok(Some(target)),
            Found::Dir => self.dir = Some(child),
            Found::Other => {
                self.dir = None;
                self.not_dir = true;
            }
        }
        self.parts.push(name);
        Ok(None)
    }

    /// Continues the walk with a link's target.
    fn enter_link(&mut self, target: String, pending: &mut Vec<Cow<'p, str>>) -> Result<(), Errno> {
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(Errno::ELOOP);
        }
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.starts_with('/') {
            self.parts.clear();
            self.dir = Some(root());
        }
        pending.extend(target.rsplit('/').filter(|p| !p.is_empty()).map(|p| Cow::Owned(p.to_string())));
        Ok(())
    }
}

/// The entry `name` of directory `dir`: a volume's root if a volume is mounted at `abs`, the path with `name`
/// (given when any volume is mounted).
fn child(dir: &Inode, abs: Option<&str>, name: &str) -> Result<Arc<Inode>, Errno> {
    match &dir.backing {
        Backing::Memory(_) => {
            if let Some(volume) = abs.and_then(volume::mounted_at) {
                return volume.lookup(&[]).map(Inode::on_volume);
            }
            dir.memory_child(name)
        }
        Backing::Volume(node) => node.child(name).map(Inode::on_volume),
    }
}
