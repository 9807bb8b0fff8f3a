//! Applying one layer (a tar stream, gzip-compressed or not) to the tree: entries in order, whiteouts as the OCI
//! image spec defines them (`.wh.NAME` removes NAME from the layers below; `.wh..wh..opq` empties its directory of
//! what the layers below put there), hard links as copies (the root file system has no hard links). Device nodes and
//! FIFOs are left out: the library OS makes `/dev` itself. Owners are dropped (everything in a Kiln image is root's).
//! A name that climbs out of the root, an absolute name, a symbolic link whose target climbs out of the root or a
//! hard link to nothing refuses the whole layer.

use crate::tree::{split, Components, Node, Tree, TreeError};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Most file bytes all layers together may hold: a layer is read into memory, and a compressed one could claim
/// any size.
pub const MAX_TOTAL_BYTES: u64 = 4 << 30;
/// Most entries all layers together may hold.
pub const MAX_ENTRIES: u64 = 4_000_000;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("it is not a valid tar stream")]
    Tar(#[source] std::io::Error),
    #[error("it is zstd-compressed, which kiln does not read yet; save the image with gzip or uncompressed layers")]
    Zstd,
    #[error("entry {0:?} has an absolute name")]
    Absolute(String),
    #[error("entry {0:?} climbs out of the image's root with `..`")]
    Escapes(String),
    #[error("symbolic link {path:?} -> {target:?} points outside the image's root")]
    LinkEscapes { path: String, target: String },
    #[error("hard link {path:?} -> {target:?}: no regular file there in this or an earlier layer")]
    HardLink { path: String, target: String },
    #[error("entry name {0:?} is not UTF-8")]
    NotUtf8(String),
    #[error("entry {path:?}")]
    Tree {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("the layers hold more than {} GiB of files or {MAX_ENTRIES} entries", MAX_TOTAL_BYTES >> 30)]
    TooBig,
}

/// What the layers so far have added up to (bounded by [`MAX_TOTAL_BYTES`] and [`MAX_ENTRIES`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub file_bytes: u64,
    /// Device nodes and FIFOs left out.
    pub specials: u64,
}

/// A layer's bytes, decompressed (gzip, by its magic), with the SHA-256 of the uncompressed stream once read to the
/// end: a docker archive names its layers by that (the image config's `rootfs.diff_ids`).
pub struct LayerReader<'a> {
    inner: Box<dyn Read + 'a>,
    hasher: Option<Sha256>,
}

impl<'a> LayerReader<'a> {
    pub fn new(bytes: &'a [u8], hash: bool) -> Result<Self, LayerError> {
        let inner: Box<dyn Read + 'a> = match bytes {
            [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(bytes)),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => return Err(LayerError::Zstd),
            _ => Box::new(bytes),
        };
        Ok(LayerReader { inner, hasher: hash.then(Sha256::new) })
    }

    /// Reads what is left and returns the uncompressed stream's SHA-256 (hex), if hashing.
    pub fn finish(mut self) -> Result<Option<String>, LayerError> {
        std::io::copy(&mut self, &mut std::io::sink()).map_err(LayerError::Tar)?;
        Ok(self.hasher.map(|h| crate::hex(&h.finalize())))
    }
}

impl Read for LayerReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A layer's name for an entry, checked: relative, not climbing out of the root; `None` for the root itself.
fn entry_name(raw: &[u8]) -> Result<Option<String>, LayerError> {
    let name = std::str::from_utf8(raw).map_err(|_| LayerError::NotUtf8(String::from_utf8_lossy(raw).into_owned()))?;
    if name.starts_with('/') {
        return Err(LayerError::Absolute(name.into()));
    }
    if climbs_out(0, name) {
        return Err(LayerError::Escapes(name.into()));
    }
    let trimmed = name.trim_end_matches('/');
    Ok((split(trimmed).next().is_some()).then(|| trimmed.to_string()))
}

/// Whether `path`, taken from a directory `depth` levels below the root, climbs above the root.
fn climbs_out(depth: usize, path: &str) -> bool {
    let mut depth = depth as i64;
    split(path).any(|c| {
        depth += if c == ".." { -1 } else { 1 };
        depth < 0
    })
}

/// Applies the tar stream `layer` to `tree`.
pub fn apply(tree: &mut Tree, layer: &mut LayerReader<'_>, totals: &mut Totals) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(layer);
    // What this layer put in: an opaque whiteout keeps it, whatever the order of the entries.
    let mut added: HashSet<Components> = HashSet::new();
    for entry in archive.entries().map_err(LayerError::Tar)? {
        let mut entry = entry.map_err(LayerError::Tar)?;
        totals.entries += 1;
        if totals.entries > MAX_ENTRIES {
            return Err(LayerError::TooBig);
        }
        let Some(name) = entry_name(&entry.path_bytes())? else {
            continue;
        };
        let tree_err = |source| LayerError::Tree { path: name.clone(), source };
        let (dir, base) = name.rsplit_once('/').unwrap_or(("", &name));
        if base == OPAQUE {
            let at = tree.resolve(dir, true).map_err(tree_err)?;
            tree.prune(&at, &|p| added.contains(p));
            continue;
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT) {
            if !hidden.starts_with(WHITEOUT) && !hidden.is_empty() {
                let at = tree.resolve(&format!("{dir}/{hidden}"), false).map_err(tree_err)?;
                if !added.contains(&at) {
                    tree.remove(&at);
                }
            }
            continue;
        }
        let mode = entry.header().mode().map_err(LayerError::Tar)? & 0o7777;
        let kind = entry.header().entry_type();
        let node = match kind {
            tar::EntryType::Directory => Node::Dir { mode, children: BTreeMap::new() },
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                totals.file_bytes = totals.file_bytes.saturating_add(size);
                if totals.file_bytes > MAX_TOTAL_BYTES {
                    return Err(LayerError::TooBig);
                }
                // The header's size is a claim: reserve at most 1 MiB on its word, the read grows the rest.
                let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
                entry.read_to_end(&mut data).map_err(LayerError::Tar)?;
                Node::File { mode, data }
            }
            tar::EntryType::Symlink => {
                let target = link_name(&entry)?;
                let depth = split(dir).count();
                if target.is_empty() || climbs_out(if target.starts_with('/') { 0 } else { depth }, &target) {
                    return Err(LayerError::LinkEscapes { path: name, target });
                }
                Node::Symlink { target }
            }
            tar::EntryType::Link => {
                let target = link_name(&entry)?;
                let bad = || LayerError::HardLink { path: name.clone(), target: target.clone() };
                if target.starts_with('/') || climbs_out(0, &target) {
                    return Err(bad());
                }
                let at = tree.resolve(&target, false).map_err(|_| bad())?;
                match tree.get(&at) {
                    Some(Node::File { mode, data }) => {
                        totals.file_bytes = totals.file_bytes.saturating_add(data.len() as u64);
                        if totals.file_bytes > MAX_TOTAL_BYTES {
                            return Err(LayerError::TooBig);
                        }
                        Node::File { mode: *mode, data: data.clone() }
                    }
                    _ => return Err(bad()),
                }
            }
            _ => {
                totals.specials += 1;
                continue;
            }
        };
        let at = tree.insert(&name, node).map_err(tree_err)?;
        added.insert(at);
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, LayerError> {
    let raw = entry.link_name_bytes().unwrap_or_default();
    std::str::from_utf8(&raw)
        .map(str::to_string)
        .map_err(|_| LayerError::NotUtf8(String::from_utf8_lossy(&raw).into_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar stream of `entries`: (name, kind, data or link target).
    pub fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for &(name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    // Set by hand: the builder's own setters refuse `..` and absolute names, which these tests need.
                    let field = &mut h.as_old_mut().linkname;
                    field[..data.len()].copy_from_slice(data);
                    let field = &mut h.as_old_mut().name;
                    field[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    let field = &mut h.as_old_mut().name;
                    field[..name.len()].copy_from_slice(name.as_bytes());
                    h.set_cksum();
                    b.append(&h, data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    const F: tar::EntryType = tar::EntryType::Regular;
    const D: tar::EntryType = tar::EntryType::Directory;
    const L: tar::EntryType = tar::EntryType::Symlink;
    const H: tar::EntryType = tar::EntryType::Link;

    fn apply_all(layers: &[Vec<u8>]) -> Result<Tree, LayerError> {
        let mut tree = Tree::default();
        let mut totals = Totals::default();
        for layer in layers {
            let mut reader = LayerReader::new(layer, false)?;
            apply(&mut tree, &mut reader, &mut totals)?;
        }
        Ok(tree)
    }

    fn listing(tree: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        tree.walk(|p, n| {
            out.push(match n {
                Node::Dir { .. } => format!("{p}/"),
                Node::File { data, .. } => format!("{p}={}", String::from_utf8_lossy(data)),
                Node::Symlink { target } => format!("{p}->{target}"),
            })
        });
        out
    }

    #[test]
    fn whiteouts_remove_what_lower_layers_put_there() {
        let lower = tar_of(&[
            ("etc/", D, b""),
            ("etc/keep", F, b"k"),
            ("etc/gone", F, b"g"),
            ("var/", D, b""),
            ("var/cache/", D, b""),
            ("var/cache/old", F, b"o"),
            ("var/cache/sub/", D, b""),
            ("var/cache/sub/deep", F, b"d"),
        ]);
        // The opaque marker comes after an entry of its own layer in the same directory: that entry stays.
        let upper = tar_of(&[
            ("etc/.wh.gone", F, b""),
            ("var/cache/new", F, b"n"),
            ("var/cache/.wh..wh..opq", F, b""),
            ("var/cache/sub/", D, b""),
        ]);
        let tree = apply_all(&[lower, upper]).unwrap();
        assert_eq!(
            listing(&tree),
            ["/etc/", "/etc/keep=k", "/var/", "/var/cache/", "/var/cache/new=n", "/var/cache/sub/"]
        );
    }

    #[test]
    fn hard_links_are_copies_and_links_stay_links() {
        let layer = tar_of(&[
            ("bin/", D, b""),
            ("bin/busybox", F, b"bb"),
            ("bin/sh", H, b"bin/busybox"),
            ("bin/ls", L, b"busybox"),
            ("lib64", L, b"/usr/lib"),
        ]);
        let tree = apply_all(&[layer]).unwrap();
        assert_eq!(listing(&tree), ["/bin/", "/bin/busybox=bb", "/bin/ls->busybox", "/bin/sh=bb", "/lib64->/usr/lib"]);
    }

    #[test]
    fn hostile_layers_are_refused() {
        let err = |entries: &[(&str, tar::EntryType, &[u8])]| apply_all(&[tar_of(entries)]).unwrap_err().to_string();
        assert_eq!(
            err(&[("../etc/passwd", F, b"x")]),
            r#"entry "../etc/passwd" climbs out of the image's root with `..`"#
        );
        assert_eq!(err(&[("a/../../x", F, b"x")]), r#"entry "a/../../x" climbs out of the image's root with `..`"#);
        assert_eq!(err(&[("/etc/passwd", F, b"x")]), r#"entry "/etc/passwd" has an absolute name"#);
        assert_eq!(
            err(&[("lib/evil", L, b"../../host")]),
            r#"symbolic link "lib/evil" -> "../../host" points outside the image's root"#
        );
        assert_eq!(
            err(&[("evil", L, b"/../../etc")]),
            r#"symbolic link "evil" -> "/../../etc" points outside the image's root"#
        );
        assert_eq!(
            err(&[("sh", H, b"/etc/shadow")]),
            r#"hard link "sh" -> "/etc/shadow": no regular file there in this or an earlier layer"#
        );
        assert_eq!(
            err(&[("sh", H, b"nothing")]),
            r#"hard link "sh" -> "nothing": no regular file there in this or an earlier layer"#
        );
        assert!(matches!(LayerReader::new(&[0x28, 0xb5, 0x2f, 0xfd, 0], false), Err(LayerError::Zstd)));
        // An absolute link inside the root is an ordinary link (Debian's /lib64/ld-linux-x86-64.so.2 is one).
        assert!(apply_all(&[tar_of(&[("lib64/ld.so", L, b"/usr/lib/ld.so")])]).is_ok());
    }

    #[test]
    fn gzip_layers_are_read_and_hashed_uncompressed() {
        use std::io::Write;
        let raw = tar_of(&[("a", F, b"1")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let mut tree = Tree::default();
        let mut reader = LayerReader::new(&gz, true).unwrap();
        apply(&mut tree, &mut reader, &mut Totals::default()).unwrap();
        assert_eq!(reader.finish().unwrap().unwrap(), crate::hex(&Sha256::digest(&raw)));
        assert_eq!(listing(&tree), ["/a=1"]);
    }
}
