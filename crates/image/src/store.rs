//! The local store under `$KILN_HOME`: content-addressed blobs (`blobs/sha256/<hex>`), tags (`refs/<name>:<tag>`,
//! each holding a manifest digest, with `/` in names kept as `+`) and instance records (`instances/`, see
//! [`crate::instance`]). Every write goes to a temporary file first and is renamed into place, so a reader sees a
//! whole file or none; blobs are checked against their digest when read, once per change of their file
//! ([`crate::verified`]).

use crate::manifest::{BlobRef, Manifest, ManifestError};
use crate::reference::{Reference, ReferenceError};
use crate::{verified, Digest};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store is damaged: blob {digest} ({path}) does not match its digest; remove the image (kiln rmi) and build it again")]
    Corrupt { digest: Digest, path: PathBuf },
    #[error("the store is damaged: blob {0} is missing; remove the image (kiln rmi) and build it again")]
    MissingBlob(Digest),
    #[error("the store is damaged: blob {digest} holds {actual} bytes, and its image's manifest says {expected}; remove the image (kiln rmi) and build it again")]
    WrongSize { digest: Digest, actual: u64, expected: u64 },
    #[error("the store is damaged: tag {reference} ({path}) holds no image id; kiln rmi {reference} removes it")]
    DamagedTag { reference: Reference, path: PathBuf },
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("{0} names more than one image; give more of its id")]
    Ambiguous(String),
    #[error("image {digest} has a bad manifest")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

pub struct Store {
    root: PathBuf,
}

/// Held while a command changes tags or removes blobs ([`Store::lock`], exclusive), so that two `kiln` processes
/// never interleave those, or while one reads an image ([`Store::read_lock`], shared), so that `kiln rmi` never
/// removes its blobs halfway through. A process must drop one before it takes another: `flock` locks of two
/// descriptors of one process exclude each other too.
pub struct StoreLock {
    _file: std::fs::File,
}

/// Temporary files are `.tmp.<pid>.<n>`: the pid tells a live writer's from one a killed process left.
const TMP_PREFIX: &str = ".tmp.";

/// A fresh temporary file name in `dir`, which [`Store::collect_garbage`] removes once this process is gone.
fn temp_name(dir: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TMP_PREFIX}{}.{n}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = temp_name(dir);
    let result =
        std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes)).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// Whether `name` is a temporary file whose writer is gone (killed while storing a blob).
fn left_by_dead_writer(name: &str) -> bool {
    let pid = name.strip_prefix(TMP_PREFIX).and_then(|rest| rest.split_once('.')).map(|(pid, _)| pid);
    pid.and_then(|pid| pid.parse::<u32>().ok()).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Every `sha256:<64 hex digits>` in `bytes`, however damaged the JSON around them is.
fn digests_in(bytes: &[u8]) -> impl Iterator<Item = Digest> + '_ {
    const LEN: usize = "sha256:".len() + 64;
    bytes.windows(LEN).filter_map(|w| std::str::from_utf8(w).ok()?.parse().ok())
}

fn ref_file_name(r: &Reference) -> String {
    format!("{}:{}", r.name.replace('/', "+"), r.tag)
}

fn ref_from_file_name(name: &str) -> Option<Reference> {
    let (n, tag) = name.rsplit_once(':')?;
    Reference::new(&n.replace('+', "/"), tag).ok()
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        self.flock(libc::LOCK_EX)
    }

    /// A shared lock for reading an image, none when there is no store yet (so nothing to read).
    pub fn read_lock(&self) -> Result<Option<StoreLock>, StoreError> {
        if !self.root.is_dir() {
            return Ok(None);
        }
        self.flock(libc::LOCK_SH).map(Some)
    }

    fn flock(&self, operation: libc::c_int) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        // SAFETY: flock on a file descriptor this function owns; the lock is released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(StoreLock { _file: file })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Stores `bytes` (a no-op when the store already has them) and returns their digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) && self.blob(&digest).is_ok() {
            return Ok(digest);
        }
        write_atomically(&path, bytes)?;
        Ok(digest)
    }

    /// A temporary file in the blob directory for a blob that arrives in pieces (`kiln pull`); see [`BlobWriter`].
    pub fn blob_writer(&self, expected: &BlobRef) -> Result<BlobWriter, StoreError> {
        let dir = self.blobs_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = temp_name(&dir);
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            path: self.blob_path(&expected.digest),
            expected: expected.clone(),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Whether the store has the blob, whole (checked against its digest).
    pub fn has_blob(&self, blob: &BlobRef) -> bool {
        std::fs::metadata(self.blob_path(&blob.digest)).is_ok_and(|m| m.len() == blob.size)
            && self.blob(&blob.digest).is_ok()
    }

    /// The blob's bytes, checked against its digest.
    /// The blob's bytes, checked against its digest: hashed on the first read after its file changed (see
    /// [`crate::verified`]), taken on the strength of that check while the file stats the same.
    pub fn blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        self.blob_as_of(digest, std::time::SystemTime::now())
    }

    /// [`Store::blob`], with `now` the time against which the file's last change counts as settled.
    fn blob_as_of(&self, digest: &Digest, now: std::time::SystemTime) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let missing_or = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingBlob(digest.clone()),
            _ => io(&path)(e),
        };
        let mut file = std::fs::File::open(&path).map_err(missing_or)?;
        let meta = file.metadata().map_err(io(&path))?;
        let before = verified::stat_stamp(&meta);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        // Stat again after reading: a file damaged while it was read is not taken on an older check.
        let unchanged = file.metadata().is_ok_and(|m| verified::stat_stamp(&m) == before);
        let dir = self.blobs_dir();
        if unchanged && verified::is_verified(&dir, digest.hex(), &before) {
            return Ok(bytes);
        }
        if Digest::of(&bytes) != *digest {
            return Err(StoreError::Corrupt { digest: digest.clone(), path });
        }
        if unchanged && verified::settled(&meta, now) {
            verified::note_verified(&dir, digest.hex(), &before);
        }
        Ok(bytes)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// A blob a manifest names, checked against its digest and against the size the manifest gives.
    pub fn image_blob(&self, blob: &BlobRef) -> Result<Vec<u8>, StoreError> {
        let bytes = self.blob(&blob.digest)?;
        if bytes.len() as u64 != blob.size {
            return Err(StoreError::WrongSize {
                digest: blob.digest.clone(),
                actual: bytes.len() as u64,
                expected: blob.size,
            });
        }
        Ok(bytes)
    }

    pub fn manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        let bytes = self.blob(digest)?;
        Manifest::from_bytes(&bytes).map_err(|source| StoreError::Manifest { digest: digest.clone(), source })
    }

    pub fn tag(&self, reference: &Reference, digest: &Digest) -> Result<(), StoreError> {
        write_atomically(&self.root.join("refs").join(ref_file_name(reference)), format!("{digest}\n").as_bytes())
    }

    /// Removes the tag and returns the image it named.
    pub fn untag(&self, reference: &Reference) -> Result<Digest, StoreError> {
        let digest = self.tagged(reference)?.ok_or_else(|| StoreError::NoSuchImage(reference.to_string()))?;
        self.remove_tag(reference)?;
        Ok(digest)
    }

    /// Removes the tag's file, whatever it holds (`kiln rmi` of a damaged tag).
    pub fn remove_tag(&self, reference: &Reference) -> Result<(), StoreError> {
        let path = self.root.join("refs").join(ref_file_name(reference));
        std::fs::remove_file(&path).map_err(io(&path))
    }

    /// The image the tag names; none when there is no such tag, an error when its file holds no image id.
    fn tagged(&self, reference: &Reference) -> Result<Option<Digest>, StoreError> {
        let path = self.root.join("refs").join(ref_file_name(reference));
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8_lossy(&bytes).trim().parse() {
                Ok(digest) => Ok(Some(digest)),
                Err(_) => Err(StoreError::DamagedTag { reference: reference.clone(), path }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every tag and the image it names, sorted by name and tag; damaged tags are left out (see
    /// [`Store::damaged_tags`]), so that one of them hides only its own image.
    pub fn tags(&self) -> Result<Vec<(Reference, Digest)>, StoreError> {
        let mut tags = Vec::new();
        for reference in self.tag_names()? {
            match self.tagged(&reference) {
                Ok(Some(digest)) => tags.push((reference, digest)),
                Ok(None) | Err(StoreError::DamagedTag { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        tags.sort();
        Ok(tags)
    }

    /// The errors of the tags whose files hold no image id.
    pub fn damaged_tags(&self) -> Result<Vec<StoreError>, StoreError> {
        let mut damaged = Vec::new();
        for reference in self.tag_names()? {
            if let Err(e @ StoreError::DamagedTag { .. }) = self.tagged(&reference) {
                damaged.push(e);
            }
        }
        Ok(damaged)
    }

    fn tag_names(&self) -> Result<Vec<Reference>, StoreError> {
        let dir = self.root.join("refs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(io(&dir))?.file_name();
            names.extend(ref_from_file_name(&name.to_string_lossy()));
        }
        Ok(names)
    }

    /// The image `what` names: `NAME[:TAG]`, a full digest, or a unique prefix (at least 4 hex digits) of an id.
    pub fn resolve(&self, what: &str) -> Result<Digest, StoreError> {
        if let Ok(digest) = what.parse::<Digest>() {
            return self
                .tags()?
                .into_iter()
                .any(|(_, d)| d == digest)
                .then_some(digest)
                .ok_or_else(|| StoreError::NoSuchImage(what.to_string()));
        }
        if let Ok(reference) = what.parse::<Reference>() {
            if let Some(digest) = self.tagged(&reference)? {
                return Ok(digest);
            }
        }
        let prefix = what.strip_prefix("sha256:").unwrap_or(what);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: BTreeSet<Digest> =
                self.tags()?.into_iter().map(|(_, d)| d).filter(|d| d.hex().starts_with(prefix)).collect();
            match matches.len() {
                1 => return Ok(matches.into_iter().next().expect("one match")),
                0 => {}
                _ => return Err(StoreError::Ambiguous(what.to_string())),
            }
        }
        Err(StoreError::NoSuchImage(what.to_string()))
    }

    /// Removes every blob no tagged image needs (`keep` names more to keep); returns the bytes freed. A damaged
    /// manifest, or one of another schema (a newer kiln's), keeps every digest written in it, and a manifest that
    /// cannot be read just now stops the collection: an image is never collected because it could not be read.
    pub fn collect_garbage(&self, keep: &[Digest]) -> Result<u64, StoreError> {
        let mut live: BTreeSet<Digest> = keep.iter().cloned().collect();
        for (_, digest) in self.tags()? {
            match self.manifest(&digest) {
                Ok(manifest) => live.extend(manifest.blobs().iter().map(|(_, b)| b.digest.clone())),
                Err(StoreError::Corrupt { .. } | StoreError::Manifest { .. }) => {
                    let path = self.blob_path(&digest);
                    live.extend(digests_in(&std::fs::read(&path).map_err(io(&path))?));
                }
                Err(StoreError::MissingBlob(_)) => {}
                Err(e) => return Err(e),
            }
            live.insert(digest);
        }
        let dir = self.blobs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut freed = 0;
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only files are blobs: anything else there is not the store's to remove.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let unneeded = match format!("sha256:{name}").parse::<Digest>() {
                Ok(digest) => !live.contains(&digest),
                Err(_) => left_by_dead_writer(&name),
            };
            if unneeded {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                verified::forget(&dir, &name);
                std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        self.collect_stamps(&live);
        Ok(freed)
    }

    /// Removes the verification stamps of blobs the store no longer has, and temporary files a killed writer left
    /// among them; best effort, since a stamp left over costs a few bytes and proves nothing without its blob.
    fn collect_stamps(&self, live: &BTreeSet<Digest>) {
        let stamps = verified::stamps_dir(&self.blobs_dir());
        let Ok(entries) = std::fs::read_dir(&stamps) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let unneeded = match format!("sha256:{name}").parse::<Digest>() {
                Ok(digest) => !live.contains(&digest),
                Err(_) => left_by_dead_writer(&name),
            };
            if unneeded && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A blob being written from the network: bytes go to a temporary file (left by a killed writer, it is garbage for
/// [`Store::collect_garbage`]), are hashed on the way, and become the blob only when [`BlobWriter::finish`] found them
/// to be exactly the expected size and digest. More bytes than expected are refused as they come, so a hostile
/// source cannot fill the disk. Dropped before `finish`, the temporary file goes.
pub struct BlobWriter {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    expected: BlobRef,
    hasher: Sha256,
    written: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.expected.size {
            return Err(std::io::Error::other(format!(
                "blob {} is longer than the {} bytes its manifest says",
                self.expected.digest, self.expected.size
            )));
        }
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl BlobWriter {
    /// Whether as many bytes as expected have been written.
    pub fn is_complete(&self) -> bool {
        self.written == self.expected.size
    }

    /// Checks what was written against the expected size and digest and, if it matches, renames it into place.
    pub fn finish(mut self) -> Result<(), StoreError> {
        drop(self.file.take());
        if self.written != self.expected.size {
            return Err(StoreError::WrongSize {
                digest: self.expected.digest.clone(),
                actual: self.written,
                expected: self.expected.size,
            });
        }
        let hex: String = std::mem::take(&mut self.hasher).finalize().iter().map(|b| format!("{b:02x}")).collect();
        if hex != self.expected.digest.hex() {
            return Err(StoreError::Corrupt { digest: self.expected.digest.clone(), path: self.tmp.clone() });
        }
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn temp_store(name: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("kiln-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Store::new(dir)
    }

    #[test]
    fn blobs_are_checked_on_every_read() {
        let store = temp_store("blobs");
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(store.blob(&d).unwrap(), b"hello");
        std::fs::write(store.blob_path(&d), b"hellp").unwrap();
        let err = store.blob(&d).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert!(err.to_string().contains("does not match its digest"), "{err}");
        // Storing the same bytes again repairs it.
        store.put_blob(b"hello").unwrap();
        assert_eq!(store.blob(&d).unwrap(), b"hello");
        // A manifest that gives another size for the blob is refused.
        let wrong = BlobRef { digest: d.clone(), size: 4 };
        assert!(matches!(store.image_blob(&wrong), Err(StoreError::WrongSize { actual: 5, expected: 4, .. })));
        assert_eq!(store.image_blob(&BlobRef { digest: d.clone(), size: 5 }).unwrap(), b"hello");
        std::fs::remove_file(store.blob_path(&d)).unwrap();
        assert!(matches!(store.blob(&d), Err(StoreError::MissingBlob(_))));
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn a_settled_blob_is_hashed_once_until_its_file_changes() {
        let store = temp_store("verified");
        let d = store.put_blob(b"hello").unwrap();
        let stamp = verified::stamp_path(&store.blobs_dir(), d.hex());
        store.blob(&d).unwrap();
        assert!(
            !stamp.exists(),
            "a file changed just now is not stamped: a change in the same clock tick keeps its times"
        );
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        assert_eq!(store.blob_as_of(&d, later).unwrap(), b"hello");
        assert!(stamp.exists(), "a settled file that matched is stamped");
        let held = std::fs::read(&stamp).unwrap();
        // A stamp that describes another state of the file is not taken: the bytes are hashed, and stamped anew ...
        std::fs::write(&stamp, b"another file").unwrap();
        assert_eq!(store.blob_as_of(&d, later).unwrap(), b"hello");
        assert_eq!(std::fs::read(&stamp).unwrap(), held);
        // ... and damage in place (a later clock tick) changes the file's times: hashed again, and refused.
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(store.blob_path(&d), b"hellp").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
        assert!(matches!(store.blob_as_of(&d, later), Err(StoreError::Corrupt { .. })));
        // The garbage collector takes a removed blob's stamp with it.
        store.put_blob(b"hello").unwrap();
        store.blob_as_of(&d, later + std::time::Duration::from_secs(3)).unwrap();
        assert!(stamp.exists());
        store.collect_garbage(&[]).unwrap();
        assert!(!stamp.exists() && !store.blob_path(&d).exists());
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn blobs_written_in_pieces_are_checked_before_they_are_stored() {
        let store = temp_store("writer");
        let blob = |b: &[u8]| BlobRef { digest: Digest::of(b), size: b.len() as u64 };
        let temps = || std::fs::read_dir(store.root().join("blobs/sha256")).unwrap().count();
        let good = blob(b"hello world");
        let mut w = store.blob_writer(&good).unwrap();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        w.finish().unwrap();
        assert!(store.has_blob(&good));

        let mut w = store.blob_writer(&blob(b"other bytes")).unwrap();
        w.write_all(b"other byte!").unwrap();
        assert!(matches!(w.finish(), Err(StoreError::Corrupt { .. })));
        let mut w = store.blob_writer(&blob(b"short")).unwrap();
        w.write_all(b"shor").unwrap();
        assert!(matches!(w.finish(), Err(StoreError::WrongSize { actual: 4, expected: 5, .. })));
        let mut w = store.blob_writer(&blob(b"short")).unwrap();
        assert!(w.write_all(b"shorter").is_err(), "more than the manifest says is refused as it comes");
        drop(w);
        assert_eq!(temps(), 1, "only the good blob is left; no temporary file");
        assert!(!store.has_blob(&blob(b"short")));
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn tags_resolve_by_name_digest_and_prefix() {
        let store = temp_store("tags");
        let a = store.put_blob(b"a").unwrap();
        let b = store.put_blob(b"b").unwrap();
        store.tag(&"web".parse().unwrap(), &a).unwrap();
        store.tag(&"team/web:2".parse().unwrap(), &b).unwrap();
        assert_eq!(store.resolve("web").unwrap(), a);
        assert_eq!(store.resolve("web:latest").unwrap(), a);
        assert_eq!(store.resolve("team/web:2").unwrap(), b);
        assert_eq!(store.resolve(&b.to_string()).unwrap(), b);
        assert_eq!(store.resolve(&a.hex()[..6]).unwrap(), a);
        assert!(matches!(store.resolve("web:3"), Err(StoreError::NoSuchImage(_))));
        let names: Vec<_> = store.tags().unwrap().into_iter().map(|(r, _)| r.to_string()).collect();
        assert_eq!(names, ["team/web:2", "web:latest"]);
        // A damaged tag hides only its own image, and says so when it is named.
        std::fs::write(store.root().join("refs/bad:1"), b"sha256:\xff\n").unwrap();
        assert_eq!(store.tags().unwrap().len(), 2);
        let err = store.resolve("bad:1").unwrap_err();
        assert!(err.to_string().ends_with("holds no image id; kiln rmi bad:1 removes it"), "{err}");
        assert_eq!(store.damaged_tags().unwrap().len(), 1);
        store.remove_tag(&"bad:1".parse().unwrap()).unwrap();
        assert!(store.damaged_tags().unwrap().is_empty());
        assert_eq!(store.untag(&"web".parse().unwrap()).unwrap(), a);
        assert!(store.resolve("web").is_err());
        // Only b is tagged now (its "manifest" is junk, so only the blob itself is kept).
        assert_eq!(store.collect_garbage(&[]).unwrap(), 1);
        assert!(store.blob(&b).is_ok() && matches!(store.blob(&a), Err(StoreError::MissingBlob(_))));
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    #[test]
    fn readers_share_the_lock_and_keep_a_writer_waiting() {
        let store = temp_store("locks");
        assert!(store.read_lock().unwrap().is_none(), "no store yet: nothing to lock");
        drop(store.lock().unwrap());
        let reading = store.read_lock().unwrap().expect("a store now");
        let also_reading = store.read_lock().unwrap().expect("shared");
        let (done, writer_done) = std::sync::mpsc::channel();
        let root = store.root().to_path_buf();
        let writer = std::thread::spawn(move || {
            let _lock = Store::new(root).lock().unwrap();
            done.send(()).unwrap();
        });
        let timeout = std::time::Duration::from_millis(200);
        assert!(writer_done.recv_timeout(timeout).is_err(), "the writer waits for the readers");
        drop((reading, also_reading));
        writer_done.recv_timeout(std::time::Duration::from_secs(30)).expect("the writer goes on");
        writer.join().unwrap();
        std::fs::remove_dir_all(store.root()).unwrap();
    }

    /// A manifest that fails its digest check, or that a newer kiln wrote, still keeps the blobs it names; one that
    /// cannot be read at all stops the collection rather than freeing its image's blobs.
    #[test]
    fn garbage_collection_keeps_what_unreadable_manifests_name() {
        let store = temp_store("gc");
        let program = store.put_blob(b"program").unwrap();
        let junk = store.put_blob(b"junk").unwrap();
        let newer = format!("{{\"schema\": 99, \"program\": {{\"digest\": \"{program}\"}}}}\n");
        let manifest = store.put_blob(newer.as_bytes()).unwrap();
        store.tag(&"newer".parse().unwrap(), &manifest).unwrap();
        assert_eq!(store.collect_garbage(&[]).unwrap(), 4, "only the junk goes");
        assert!(store.blob(&program).is_ok() && matches!(store.blob(&junk), Err(StoreError::MissingBlob(_))));

        std::fs::write(store.blob_path(&manifest), newer.replace("schema", "schemb")).unwrap();
        assert_eq!(store.collect_garbage(&[]).unwrap(), 0, "a damaged manifest keeps what it names");
        assert!(store.blob(&program).is_ok());

        std::fs::remove_file(store.blob_path(&manifest)).unwrap();
        std::fs::create_dir(store.blob_path(&manifest)).unwrap();
        assert!(matches!(store.collect_garbage(&[]), Err(StoreError::Io { .. })));
        assert!(store.blob(&program).is_ok(), "an unreadable manifest stops the collection");
        std::fs::remove_dir(store.blob_path(&manifest)).unwrap();

        // What a writer killed mid-blob left is junk once it is gone; a live writer's file is not.
        let blobs = store.root().join("blobs/sha256");
        std::fs::write(blobs.join(format!(".tmp.{}.7", u32::MAX)), b"half").unwrap();
        std::fs::write(blobs.join(format!(".tmp.{}.8", std::process::id())), b"being written").unwrap();
        assert_eq!(store.collect_garbage(&[]).unwrap(), 4 + "program".len() as u64);
        let left: Vec<String> =
            std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, [format!(".tmp.{}.8", std::process::id())]);
        std::fs::remove_dir_all(store.root()).unwrap();
    }
}
