//! Where an image's files come from: a tar archive read into memory (an `oci-archive` or a `docker save` tarball),
//! or an OCI layout directory. Both hand out files by their name in the archive or layout; blobs by digest go
//! through [`blob_name`], which takes only well-formed SHA-256 digests, so a digest cannot name another file.

use crate::ContainerError;
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Most members an archive may have (an image's layers, configs and manifests: a few dozen).
const MAX_MEMBERS: usize = 100_000;
/// Symbolic links followed for one member (old `docker save` links repeated layers to the first copy).
const MAX_MEMBER_LINKS: usize = 8;

pub trait Blobs {
    /// The file `name` (relative, `/`-separated).
    fn get(&self, name: &str) -> Result<Cow<'_, [u8]>, ContainerError>;
}

/// `blobs/sha256/HEX` for a digest `sha256:HEX`.
pub fn blob_name(digest: &str) -> Result<String, ContainerError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| ContainerError::BadDigest(digest.to_string()))?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// A tar archive in memory, its regular members indexed by name (a leading `./` dropped).
pub struct Archive {
    path: PathBuf,
    bytes: Vec<u8>,
    members: HashMap<String, Member>,
}

enum Member {
    File(Range<usize>),
    Link(String),
}

impl Archive {
    pub fn open(path: &Path) -> Result<Archive, ContainerError> {
        let bytes = std::fs::read(path).map_err(|source| ContainerError::Read { path: path.into(), source })?;
        Archive::from_bytes(path, bytes)
    }

    /// The archive whose bytes are `bytes` (`path` names it in errors).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Archive, ContainerError> {
        let not_tar = |source| ContainerError::NotArchive { path: path.into(), source };
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(&bytes[..]);
        for entry in archive.entries().map_err(not_tar)? {
            let entry = entry.map_err(not_tar)?;
            if members.len() >= MAX_MEMBERS {
                return Err(ContainerError::TooManyMembers(path.into()));
            }
            let name = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let start = entry.raw_file_position() as usize;
                    let end = start.saturating_add(entry.size() as usize);
                    if end > bytes.len() {
                        return Err(not_tar(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    Member::File(start..end)
                }
                tar::EntryType::Symlink => {
                    let target = String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default()).into_owned();
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    Member::Link(normalise(&format!("{dir}/{target}")))
                }
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(Archive { path: path.into(), bytes, members })
    }
}

/// `a/./b/../c` → `a/c`, no leading or trailing `/`.
fn normalise(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

impl Blobs for Archive {
    fn get(&self, name: &str) -> Result<Cow<'_, [u8]>, ContainerError> {
        let mut name = normalise(name);
        for _ in 0..=MAX_MEMBER_LINKS {
            match self.members.get(&name) {
                Some(Member::File(range)) => return Ok(Cow::Borrowed(&self.bytes[range.clone()])),
                Some(Member::Link(target)) => name = target.clone(),
                None => break,
            }
        }
        Err(ContainerError::Missing { place: self.path.display().to_string(), name })
    }
}

/// An OCI image layout: a directory with `oci-layout`, `index.json` and `blobs/`.
pub struct Layout {
    pub dir: PathBuf,
}

impl Blobs for Layout {
    fn get(&self, name: &str) -> Result<Cow<'_, [u8]>, ContainerError> {
        let path = self.dir.join(name);
        std::fs::read(&path).map(Cow::Owned).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                ContainerError::Missing { place: self.dir.display().to_string(), name: name.to_string() }
            }
            _ => ContainerError::Read { path, source },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digests_name_blobs() {
        let hex = "a".repeat(64);
        assert_eq!(blob_name(&format!("sha256:{hex}")).unwrap(), format!("blobs/sha256/{hex}"));
        for bad in ["sha256:../../etc/passwd", "sha512:abc", &format!("sha256:{}", "A".repeat(64)), "sha256:"] {
            assert!(matches!(blob_name(bad), Err(ContainerError::BadDigest(_))), "{bad}");
        }
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalise("./blobs//sha256/../sha256/x"), "blobs/sha256/x");
        assert_eq!(normalise("/manifest.json"), "manifest.json");
    }
}
