//! A cache of built root filesystem images, so that `kiln run` of the same files again neither reads nor packs them,
//! and the guest maps the entry's file instead of a copy (`rootfs_image`).
//!
//! An entry is named by its [`Recipe`]: the SHA-256 of everything that decides the image's bytes that the caller
//! knows before building (this kiln, the `--file`/`--dir` trees as `stat` describes every entry of them: path, type,
//! mode, size, modification and change times in ns, inode and device, link target; an image's digest; ...), so that
//! a repeat run only walks `stat`s. What the build found out for itself (a dynamic program's libraries, and every
//! place the search for them looked) is listed in the entry with the SHA-256 of those paths' `stat`s, checked again
//! on every use. A changed input gives another name or fails that check: the image is built again.
//!
//! Entries are written under a temporary name and renamed, so a concurrent run sees a whole entry or none, and one
//! never changes in place, so a VM that maps it keeps the bytes it started with. A hit is checked before use: magic,
//! format, lengths against the file's, the list of paths, and every image entry's header (the contents are not
//! hashed again: that would read them all, which is what the cache is for). Anything wrong is a miss, and the entry
//! is replaced. The cache holds at most a limit of bytes, least recently used entries going first.

use crate::rewrite_cache;
use crate::rootfs_image::MappedImage;
use kiln_abi::layout::HUGE_PAGE_SIZE;
use sha2::{Digest, Sha256};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const MAGIC: &[u8; 8] = b"KILNRFSC";
/// Bumped whenever the entry layout, the image format, or what a recipe covers changes.
const FORMAT: u32 = 2;
/// magic, format u32, path count u32, image offset u64, image length u64, extra length u64, length of the header
/// with its paths and extra u64, paths' digest. The image starts on a 2 MiB boundary of the file (after a hole), so
/// that the host can map it with 2 MiB entries (`boot::map_rootfs`).
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 32;
/// More paths than any build consults (python3 with its libraries: a few hundred); bounds a damaged entry.
const MAX_PATHS: usize = 1 << 16;
const MAX_EXTRA: usize = 1 << 16;

/// Bytes the cache keeps at most unless told otherwise: a few images of a large standard library.
pub const DEFAULT_LIMIT: u64 = 1 << 30;

/// What an image is built from, hashed as it is described.
pub struct Recipe(Sha256);

impl Default for Recipe {
    fn default() -> Self {
        Self::new()
    }
}

impl Recipe {
    /// A recipe that starts with this kiln: its version, the cache's and the rewriter's formats, and its executable's
    /// `stat` (a rebuilt kiln may rewrite shared objects differently).
    pub fn new() -> Recipe {
        let mut r = Recipe(Sha256::new());
        r.add("kiln rootfs cache", env!("CARGO_PKG_VERSION").as_bytes());
        r.add("formats", &[FORMAT.to_le_bytes(), rewrite_cache::FORMAT.to_le_bytes()].concat());
        let exe = std::env::current_exe().and_then(std::fs::metadata);
        r.add("executable", &exe.map(|m| stat_bytes(&m)).unwrap_or_default());
        r
    }

    /// A labelled piece of the recipe (labels and lengths keep pieces from running into each other).
    pub fn add(&mut self, label: &str, bytes: &[u8]) {
        for part in [label.as_bytes(), bytes] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    /// A host file as `RootfsBuilder::add_host_file` reads it (following links).
    pub fn add_host_file(&mut self, path: &Path) -> std::io::Result<()> {
        let meta = std::fs::metadata(path)?;
        self.add("file", &stat_bytes(&meta));
        Ok(())
    }

    /// A host directory as `RootfsBuilder::add_host_dir` walks it: the directory itself followed, then every entry
    /// below it in name order, symbolic links not followed (their targets read).
    pub fn add_host_tree(&mut self, path: &Path) -> std::io::Result<()> {
        let meta = std::fs::metadata(path)?;
        self.add("tree", &stat_bytes(&meta));
        if meta.is_dir() {
            self.add_children(path)?;
        }
        self.add("end of tree", &[]);
        Ok(())
    }

    fn add_children(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut children: Vec<_> =
            std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        children.sort();
        for name in children {
            let child = dir.join(&name);
            let meta = std::fs::symlink_metadata(&child)?;
            self.add("name", name.as_bytes());
            self.add("stat", &stat_bytes(&meta));
            if meta.file_type().is_symlink() {
                self.add("target", std::fs::read_link(&child)?.as_os_str().as_bytes());
            } else if meta.is_dir() {
                self.add_children(&child)?;
                self.add("end of directory", &[]);
            }
        }
        Ok(())
    }

    /// The entry's name: 64 hex digits.
    pub fn key(self) -> String {
        self.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What identifies the bytes of the file at `path` without reading them: the path and what `stat` (following links)
/// says of it. Take it before reading the file and compare after: a file changed meanwhile has no identity.
pub fn identity(path: &Path) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    Ok([path.as_os_str().as_bytes(), b"\0", &stat_bytes(&meta)].concat())
}

/// What `stat` says of a file, as bytes: type and mode, size, modification and change times (ns), inode, device.
pub fn stat_bytes(meta: &Metadata) -> Vec<u8> {
    [
        u64::from(meta.mode()),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
        meta.ino(),
        meta.dev(),
    ]
    .iter()
    .flat_map(|v| v.to_le_bytes())
    .collect()
}

/// The SHA-256 of what `stat` (following links) says of each path now; a missing path counts as such, so that a
/// library appearing where the search looked first is seen.
fn paths_digest(paths: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for path in paths {
        let state = match std::fs::metadata(path) {
            Ok(meta) => stat_bytes(&meta),
            Err(e) => format!("error {:?}", e.kind()).into_bytes(),
        };
        for part in [path.as_os_str().as_bytes(), &state] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

/// An image found in the cache, and what its builder stored with it.
pub struct Hit {
    pub image: MappedImage,
    pub extra: Vec<u8>,
}

pub struct RootfsCache {
    dir: PathBuf,
    limit: u64,
}

impl RootfsCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_limit(dir, DEFAULT_LIMIT)
    }

    pub fn with_limit(dir: impl Into<PathBuf>, limit: u64) -> Self {
        Self { dir: dir.into(), limit }
    }

    /// The image built from `key`'s recipe, if the cache has a sound entry for it whose consulted paths are as they
    /// were.
    pub fn lookup(&self, key: &str) -> Option<Hit> {
        let path = self.dir.join(key);
        let file = std::fs::File::open(&path).ok()?;
        let hit = check(file);
        match &hit {
            Some(hit) => {
                // Its modification time is its last use, which eviction goes by.
                let _ = hit.image.file().set_modified(SystemTime::now());
            }
            None if path.exists() => {
                tracing::debug!("rootfs cache: {} is stale or damaged; building again", path.display())
            }
            None => {}
        }
        hit
    }

    /// Stores `image`, built from `key`'s recipe after consulting `paths` too, with `extra` (the caller's, at most
    /// 64 KiB); returns the stored image, mapped. An error (a full disk, no home) leaves the caller its bytes.
    pub fn store(&self, key: &str, image: &[u8], paths: &[PathBuf], extra: &[u8]) -> std::io::Result<MappedImage> {
        let too_big = |what| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        if paths.len() > MAX_PATHS || extra.len() > MAX_EXTRA {
            return Err(too_big("too many consulted paths or too much extra data"));
        }
        if image.len() as u64 > self.limit || image.is_empty() {
            return Err(too_big("the image is larger than the cache"));
        }
        let mut listed = Vec::new();
        for p in paths {
            let bytes = p.as_os_str().as_bytes();
            listed.extend((bytes.len() as u32).to_le_bytes());
            listed.extend(bytes);
        }
        let header_len = (HEADER_LEN + listed.len() + extra.len()) as u64;
        let offset = header_len.next_multiple_of(HUGE_PAGE_SIZE);
        let mut header = Vec::with_capacity(header_len as usize);
        header.extend(MAGIC);
        header.extend(FORMAT.to_le_bytes());
        header.extend((paths.len() as u32).to_le_bytes());
        header.extend(offset.to_le_bytes());
        header.extend((image.len() as u64).to_le_bytes());
        header.extend((extra.len() as u64).to_le_bytes());
        header.extend(header_len.to_le_bytes());
        header.extend(paths_digest(paths));
        header.extend(listed);
        header.extend(extra);
        let path = self.dir.join(key);
        let file = rewrite_cache::store_placed(&path, &[(0, &header), (offset, image)])?;
        rewrite_cache::evict(&self.dir, self.limit, &path);
        MappedImage::new(file, offset, image.len())
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// The entry in `file`, if it is whole and still describes the host.
fn check(mut file: std::fs::File) -> Option<Hit> {
    use std::io::Read;
    let size = file.metadata().ok()?.len();
    let mut header = vec![0; HEADER_LEN];
    file.read_exact(&mut header).ok()?;
    if header[..8] != MAGIC[..] || u32_at(&header, 8)? != FORMAT {
        return None;
    }
    let count = u32_at(&header, 12)? as usize;
    let offset = u64_at(&header, 16)?;
    let image_len = u64_at(&header, 24)?;
    let extra_len = u64_at(&header, 32)? as usize;
    let header_len = u64_at(&header, 40)?;
    let sound = count <= MAX_PATHS
        && extra_len <= MAX_EXTRA
        && offset.is_multiple_of(HUGE_PAGE_SIZE)
        && offset.checked_add(image_len) == Some(size)
        && (HEADER_LEN as u64) <= header_len
        && header_len <= offset
        && offset <= 64 << 20;
    if !sound {
        return None;
    }
    let mut rest = vec![0; header_len as usize - HEADER_LEN];
    file.read_exact(&mut rest).ok()?;
    let mut at = 0;
    let mut paths = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32_at(&rest, at)? as usize;
        let bytes = rest.get(at + 4..(at + 4).checked_add(len)?)?;
        paths.push(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)));
        at += 4 + len;
    }
    let extra = rest.get(at..at.checked_add(extra_len)?)?.to_vec();
    if header[48..80] != paths_digest(&paths) {
        return None;
    }
    let image = MappedImage::new(file, offset, usize::try_from(image_len).ok()?).ok()?;
    let whole = kiln_abi::rootfs::entries(image.bytes()).ok()?.all(|e| e.is_ok());
    whole.then_some(Hit { image, extra })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::RootfsBuilder;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("kiln-rootfs-cache-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn image(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = RootfsBuilder::default();
        for (path, data) in files {
            b.add_file(path, 0o644, data).unwrap();
        }
        b.finish()
    }

    fn tree_key(dir: &Path) -> String {
        let mut r = Recipe::new();
        r.add_host_tree(dir).unwrap();
        r.key()
    }

    #[test]
    fn a_stored_image_comes_back_mapped_with_its_extra() {
        let t = TempDir::new("roundtrip");
        let cache = RootfsCache::new(t.0.join("cache"));
        let fs = image(&[("/a", b"alpha")]);
        std::fs::write(t.0.join("lib"), "l").unwrap();
        let stored = cache.store("k1", &fs, &[t.0.join("lib"), t.0.join("none")], b"extra").unwrap();
        assert_eq!(stored.bytes(), &fs[..]);
        let hit = cache.lookup("k1").unwrap();
        assert_eq!((hit.image.bytes(), &hit.extra[..]), (&fs[..], &b"extra"[..]));
        assert!(hit.image.offset().is_multiple_of(HUGE_PAGE_SIZE), "the image starts on a 2 MiB boundary");
        assert!(cache.lookup("k2").is_none());
    }

    #[test]
    fn a_consulted_path_that_changes_or_appears_is_a_miss() {
        let t = TempDir::new("consulted");
        let cache = RootfsCache::new(t.0.join("cache"));
        let lib = t.0.join("libx.so");
        let earlier = t.0.join("earlier-libx.so");
        std::fs::write(&lib, "one").unwrap();
        cache.store("k", &image(&[("/a", b"a")]), &[earlier.clone(), lib.clone()], b"").unwrap();
        assert!(cache.lookup("k").is_some());
        std::fs::write(&earlier, "shadows it").unwrap();
        assert!(cache.lookup("k").is_none(), "a file where the search looked first");
        std::fs::remove_file(&earlier).unwrap();
        assert!(cache.lookup("k").is_some());
        std::fs::write(&lib, "two!").unwrap();
        assert!(cache.lookup("k").is_none(), "a changed library");
    }

    #[test]
    fn damaged_entries_are_misses() {
        let t = TempDir::new("damaged");
        let cache = RootfsCache::new(t.0.join("cache"));
        let fs = image(&[("/a", b"alpha"), ("/b", b"beta")]);
        cache.store("k", &fs, &[], b"").unwrap();
        let path = t.0.join("cache/k");
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        assert!(cache.lookup("k").is_none(), "truncated");
        let mut bad_entry = whole.clone();
        let image_at = whole.len() - fs.len();
        bad_entry[image_at + 8..image_at + 12].copy_from_slice(&9u32.to_le_bytes());
        std::fs::write(&path, &bad_entry).unwrap();
        assert!(cache.lookup("k").is_none(), "an image entry with a bad kind");
        let mut bad_magic = whole.clone();
        bad_magic[0] ^= 1;
        std::fs::write(&path, &bad_magic).unwrap();
        assert!(cache.lookup("k").is_none(), "bad magic");
        std::fs::write(&path, b"").unwrap();
        assert!(cache.lookup("k").is_none(), "empty");
        cache.store("k", &fs, &[], b"").unwrap();
        assert!(cache.lookup("k").is_some(), "replaced");
    }

    #[test]
    fn a_tree_recipe_sees_every_change() {
        let t = TempDir::new("tree");
        let dir = t.0.join("lib");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.py"), "a").unwrap();
        std::os::unix::fs::symlink("sub/a.py", dir.join("link")).unwrap();
        let k0 = tree_key(&dir);
        assert_eq!(tree_key(&dir), k0, "the same tree, the same key");
        std::fs::write(dir.join("sub/a.py"), "b").unwrap();
        let k1 = tree_key(&dir);
        assert_ne!(k1, k0, "changed contents");
        std::fs::write(dir.join("sub/new.py"), "").unwrap();
        let k2 = tree_key(&dir);
        assert_ne!(k2, k1, "an added file");
        std::fs::remove_file(dir.join("sub/new.py")).unwrap();
        assert_ne!(tree_key(&dir), k2, "a removed file");
        let k3 = tree_key(&dir);
        std::fs::remove_file(dir.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/b.py", dir.join("link")).unwrap();
        assert_ne!(tree_key(&dir), k3, "a link's target");
        assert!(Recipe::new().add_host_tree(&t.0.join("missing")).is_err());
    }

    #[test]
    fn an_identity_changes_with_the_file() {
        let t = TempDir::new("identity");
        let file = t.0.join("program");
        std::fs::write(&file, "one").unwrap();
        let first = identity(&file).unwrap();
        assert_eq!(identity(&file).unwrap(), first);
        std::fs::write(&file, "two").unwrap();
        assert_ne!(identity(&file).unwrap(), first, "contents of the same size");
        assert!(identity(&t.0.join("missing")).is_err());
    }

    #[test]
    fn eviction_keeps_the_limit() {
        let t = TempDir::new("evict");
        let fs = image(&[("/a", &[1; 6000])]);
        let cache = RootfsCache::with_limit(t.0.join("cache"), 3 * 8192);
        let keys: Vec<String> = (0..4).map(|i| format!("{:064x}", i)).collect();
        for key in &keys {
            cache.store(key, &fs, &[], b"").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(cache.lookup(&keys[0]).is_none(), "the oldest went");
        assert!(cache.lookup(&keys[3]).is_some());
    }
}
