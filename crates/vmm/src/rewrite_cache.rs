//! A cache of prepared (rewritten) programs, keyed by the SHA-256 of the executable and of this kiln's version. The
//! rewrite depends only on those, and decoding is the costliest part of a boot (the decoder builds its tables first),
//! so `kiln run` of a binary it has run before skips it. Entries are checked on the way in: a damaged, truncated or
//! mismatched entry is a miss, never an error, and is replaced. The cache holds at most a limit of bytes (256 MiB
//! by default): storing an entry deletes the least recently used ones beyond it (by modification time, which a hit
//! renews). An entry holds only the program's executable bytes, so it is about as large as the file's code.

use crate::elf::ElfImage;
use crate::loader::{self, LoaderError, PreparedProgram};
use crate::rewrite::RewriteReport;
use crate::shared_object::{self, RewrittenObject, SharedObjectError};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const MAGIC: &[u8; 8] = b"KILNPREP";
/// A rewritten shared object (`shared_object`): the whole file, as the guest's root filesystem holds it.
const OBJECT_MAGIC: &[u8; 8] = b"KILNSOBJ";
/// Bumped whenever the entry layout or what the rewriter produces changes.
pub(crate) const FORMAT: u32 = 4;

/// Bytes the cache keeps at most unless told otherwise.
pub const DEFAULT_LIMIT: u64 = 256 << 20;

pub struct RewriteCache {
    dir: PathBuf,
    limit: u64,
}

impl RewriteCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_limit(dir, DEFAULT_LIMIT)
    }

    /// A cache in `dir` that keeps at most `limit` bytes of entries.
    pub fn with_limit(dir: impl Into<PathBuf>, limit: u64) -> Self {
        Self { dir: dir.into(), limit }
    }

    /// The prepared program, from the cache if it has it (`true`), else freshly prepared and stored (`false`).
    pub fn prepare(&self, elf: &ElfImage, file: &[u8]) -> Result<(PreparedProgram, bool), LoaderError> {
        self.prepare_keyed(&key(file), elf, file)
    }

    /// [`RewriteCache::prepare`], looking the entry up by `identity` first: what the caller vouches identifies
    /// `file`'s bytes (its host path and `stat`: [`crate::rootfs_cache::identity`]), so that a run of an unchanged
    /// program reads a small alias (the entry's name) instead of hashing the whole file (python3: 6.6 MB).
    pub fn prepare_identified(
        &self,
        identity: &[u8],
        elf: &ElfImage,
        file: &[u8],
    ) -> Result<(PreparedProgram, bool), LoaderError> {
        let alias = self.dir.join(key(&[b"identity\0", identity].concat()));
        let named = std::fs::read_to_string(&alias).ok().filter(|k| is_key(k));
        if let Some(prepared) = named.and_then(|k| self.lookup(&self.dir.join(k), elf)) {
            return Ok((prepared, true));
        }
        let content = key(file);
        let prepared = self.prepare_keyed(&content, elf, file)?;
        if let Err(e) = store(&alias, content.as_bytes()) {
            tracing::debug!("cannot store the program's alias in {}: {e}", alias.display());
        }
        Ok(prepared)
    }

    fn lookup(&self, path: &Path, elf: &ElfImage) -> Option<PreparedProgram> {
        let prepared = std::fs::read(path).ok().and_then(|b| decode(&b)).filter(|p| p.fits(elf))?;
        // Its modification time is its last use, which eviction goes by.
        let _ = std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
        Some(prepared)
    }

    fn prepare_keyed(&self, key: &str, elf: &ElfImage, file: &[u8]) -> Result<(PreparedProgram, bool), LoaderError> {
        let path = self.dir.join(key);
        if let Some(prepared) = self.lookup(&path, elf) {
            return Ok((prepared, true));
        }
        let prepared = loader::prepare_program(elf, file)?;
        let entry = encode(&prepared);
        if entry.len() as u64 > self.limit {
            return Ok((prepared, false));
        }
        match store(&path, &entry) {
            Ok(()) => self.evict(&path),
            Err(e) => tracing::debug!("cannot store the rewritten program in {}: {e}", path.display()),
        }
        Ok((prepared, false))
    }

    /// The shared object `file` rewritten (`shared_object`), from the cache if it has it (`true`), else freshly
    /// rewritten and stored (`false`). Keyed like programs, by content, in the same directory and limit.
    pub fn rewrite_object(&self, file: &[u8]) -> Result<(RewrittenObject, bool), SharedObjectError> {
        let path = self.dir.join(key(&[b"shared object\0", file].concat()));
        if let Some(object) = std::fs::read(&path).ok().and_then(|b| decode_object(&b)) {
            let _ = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
            return Ok((object, true));
        }
        let object = shared_object::rewrite_object(file)?;
        let entry = encode_object(&object);
        if entry.len() as u64 <= self.limit {
            match store(&path, &entry) {
                Ok(()) => self.evict(&path),
                Err(e) => tracing::debug!("cannot store the rewritten object in {}: {e}", path.display()),
            }
        }
        Ok((object, false))
    }

    /// Deletes entries, least recently used first, until the cache holds at most its limit; `kept` (just stored)
    /// stays. Another kiln may be doing the same: an entry already gone is simply not counted.
    fn evict(&self, kept: &Path) {
        evict(&self.dir, self.limit, kept);
    }
}

/// Deletes the entries (files named by 64 hex digits) of `dir`, least recently used first, until it holds at most
/// `limit` bytes; `kept` (just stored) stays. Another kiln may be doing the same: an entry already gone is simply not
/// counted.
pub(crate) fn evict(dir: &Path, limit: u64, kept: &Path) {
    let Ok(dir) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let is_key = e.file_name().to_str().is_some_and(is_key);
            let meta = e.metadata().ok().filter(|m| is_key && m.is_file())?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|&(_, len, _)| len).sum();
    entries.sort();
    for (_, len, path) in entries {
        if total <= limit {
            break;
        }
        if path != kept && std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// Whether `name` is an entry's name: 64 hex digits.
fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn key(file: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln rewrite cache\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(FORMAT.to_le_bytes());
    h.update(file);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the whole entry under a temporary name, then renames it: readers see all of it or nothing.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    store_parts(path, &[bytes]).map(drop)
}

/// [`store`] of the concatenation of `parts`; returns the file written, open for reading.
pub(crate) fn store_parts(path: &Path, parts: &[&[u8]]) -> std::io::Result<std::fs::File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}", std::process::id(), path.file_name().unwrap_or_default().to_string_lossy()));
    let written = (|| {
        let mut f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        parts.iter().try_for_each(|part| f.write_all(part))?;
        std::fs::rename(&tmp, path)?;
        Ok(f)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u64).to_le_bytes());
    out.extend(bytes);
}

fn put_addrs(out: &mut Vec<u8>, addrs: &[u64]) {
    out.extend((addrs.len() as u64).to_le_bytes());
    addrs.iter().for_each(|a| out.extend(a.to_le_bytes()));
}

/// Magic, format, payload, then the SHA-256 of the payload. Also how an image stores its prepared program.
pub fn encode(p: &PreparedProgram) -> Vec<u8> {
    let code: usize = p.code.iter().map(|(_, bytes)| bytes.len() + 16).sum();
    let mut payload = Vec::with_capacity(code + p.stubs.len() + 128);
    payload.extend(p.base.to_le_bytes());
    payload.extend(p.span_start.to_le_bytes());
    payload.extend(p.span_len.to_le_bytes());
    payload.extend((p.code.len() as u64).to_le_bytes());
    for (at, bytes) in &p.code {
        payload.extend(at.to_le_bytes());
        put_bytes(&mut payload, bytes);
    }
    put_bytes(&mut payload, &p.stubs);
    put_report(&mut payload, &p.report);
    seal(MAGIC, &payload)
}

fn seal(magic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 44);
    out.extend(magic);
    out.extend(FORMAT.to_le_bytes());
    out.extend(payload);
    out.extend(Sha256::digest(payload));
    out
}

/// The payload of an entry `seal` made with `magic`, if it is whole.
fn unseal<'a>(magic: &[u8], entry: &'a [u8]) -> Option<&'a [u8]> {
    let body = entry.strip_prefix(magic)?;
    let (format, rest) = body.split_at_checked(4)?;
    if format != FORMAT.to_le_bytes() || rest.len() < 32 {
        return None;
    }
    let (payload, digest) = rest.split_at(rest.len() - 32);
    (Sha256::digest(payload).as_slice() == digest).then_some(payload)
}

fn put_report(out: &mut Vec<u8>, report: &RewriteReport) {
    put_addrs(out, &report.relocated);
    put_addrs(out, &report.red_zone);
    put_addrs(out, &report.in_place);
    put_addrs(out, &report.unsafe_sites);
}

fn encode_object(object: &RewrittenObject) -> Vec<u8> {
    let mut payload = Vec::with_capacity(object.bytes.len() + 64);
    put_bytes(&mut payload, &object.bytes);
    put_report(&mut payload, &object.report);
    seal(OBJECT_MAGIC, &payload)
}

fn decode_object(entry: &[u8]) -> Option<RewrittenObject> {
    let mut r = Reader(unseal(OBJECT_MAGIC, entry)?);
    let object = RewrittenObject { bytes: r.bytes()?, report: r.report()? };
    r.0.is_empty().then_some(object)
}

/// Reads what `encode` wrote, field by field.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u64()?).ok()?;
        Some(self.take(n)?.to_vec())
    }
    fn code(&mut self) -> Option<Vec<(u64, Vec<u8>)>> {
        let n = usize::try_from(self.u64()?).ok()?;
        // Each piece takes at least 16 bytes: a damaged count cannot ask for a huge allocation.
        (n <= self.0.len() / 16).then(|| (0..n).map(|_| Some((self.u64()?, self.bytes()?))).collect::<Option<_>>())?
    }
    fn report(&mut self) -> Option<RewriteReport> {
        Some(RewriteReport {
            relocated: self.addrs()?,
            red_zone: self.addrs()?,
            in_place: self.addrs()?,
            unsafe_sites: self.addrs()?,
        })
    }
    fn addrs(&mut self) -> Option<Vec<u64>> {
        let n = usize::try_from(self.u64()?).ok()?;
        // Bounded by what is left, so a damaged count cannot ask for a huge allocation.
        (n <= self.0.len() / 8).then(|| (0..n).map(|_| self.u64()).collect::<Option<_>>())?
    }
}

/// Reads what [`encode`] wrote (by this kiln's format); `None` for anything else.
pub fn decode(entry: &[u8]) -> Option<PreparedProgram> {
    let mut r = Reader(unseal(MAGIC, entry)?);
    let prepared = PreparedProgram {
        base: r.u64()?,
        span_start: r.u64()?,
        span_len: r.u64()?,
        code: r.code()?,
        stubs: r.bytes()?,
        report: r.report()?,
    };
    r.0.is_empty().then_some(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PreparedProgram {
        PreparedProgram {
            base: 0,
            span_start: 0x400000,
            span_len: 0x3000,
            code: vec![(0x401000, vec![0x90; 0x800]), (0x402000, vec![0x0f, 0x05])],
            stubs: vec![0xcc; 16],
            report: RewriteReport {
                relocated: vec![0x401000, 0x401010],
                red_zone: vec![0x401010],
                in_place: vec![0x401100],
                unsafe_sites: vec![],
            },
        }
    }

    #[test]
    fn shared_object_entries_round_trip_and_damage_is_a_miss() {
        let object = RewrittenObject { bytes: vec![0x7f, b'E', b'L', b'F', 1, 2, 3], report: sample().report };
        let entry = encode_object(&object);
        let back = decode_object(&entry).unwrap();
        assert_eq!((back.bytes, back.report.relocated), (object.bytes, object.report.relocated));
        let mut damaged = entry.clone();
        damaged[14] ^= 1;
        assert!(decode_object(&damaged).is_none());
        // A program's entry is no object's, and the other way round.
        assert!(decode_object(&encode(&sample())).is_none() && decode(&entry).is_none());
    }

    #[test]
    fn entries_round_trip() {
        let p = decode(&encode(&sample())).unwrap();
        let s = sample();
        assert_eq!(
            (p.base, p.span_start, p.span_len, p.code, p.stubs),
            (s.base, s.span_start, s.span_len, s.code, s.stubs)
        );
        assert_eq!(p.report.relocated, s.report.relocated);
        assert_eq!(p.report.red_zone, s.report.red_zone);
        assert_eq!(p.report.in_place, s.report.in_place);
    }

    #[test]
    fn damaged_entries_are_misses() {
        let good = encode(&sample());
        assert!(decode(&good[..good.len() - 1]).is_none(), "truncated");
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        assert!(decode(&flipped).is_none(), "a flipped bit");
        let mut other_format = good.clone();
        other_format[8] = 99;
        assert!(decode(&other_format).is_none(), "another format");
        assert!(decode(b"KILNPREP").is_none() && decode(b"").is_none());
    }

    /// A fresh directory for one test's cache.
    fn cache_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-rewrite-cache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A small program, distinct for each `n` (a byte past its segments differs).
    fn program(n: u8) -> (ElfImage, Vec<u8>) {
        let mut file = crate::loader::tests::program(0x1000);
        *file.last_mut().unwrap() = n;
        (ElfImage::parse(&file).unwrap(), file)
    }

    fn set_age(path: &Path, seconds_ago: u64) {
        let when = SystemTime::now() - std::time::Duration::from_secs(seconds_ago);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
    }

    #[test]
    fn the_least_recently_used_entries_go_beyond_the_limit() {
        let dir = cache_dir("lru");
        let programs: Vec<_> = (0..3).map(program).collect();
        let path = |i: usize| dir.join(key(&programs[i].1));
        let entry_len = encode(&loader::prepare_program(&programs[0].0, &programs[0].1).unwrap()).len() as u64;
        // Room for two entries and a half.
        let cache = RewriteCache::with_limit(&dir, entry_len * 5 / 2);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), vec![0u8; entry_len as usize]).unwrap();
        for (i, (elf, file)) in programs.iter().enumerate().take(2) {
            assert!(!cache.prepare(elf, file).unwrap().1, "a miss");
            set_age(&path(i), 100 - 50 * i as u64);
        }
        // Program 0, the older, is used again: now program 1 is the least recently used.
        assert!(cache.prepare(&programs[0].0, &programs[0].1).unwrap().1, "a hit");
        assert!(
            std::fs::metadata(path(0)).unwrap().modified().unwrap()
                > std::fs::metadata(path(1)).unwrap().modified().unwrap()
        );
        cache.prepare(&programs[2].0, &programs[2].1).unwrap();
        assert!(path(0).exists() && path(2).exists());
        assert!(!path(1).exists(), "the least recently used entry was deleted");
        assert!(dir.join("notes.txt").exists(), "what is not an entry is left alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_larger_than_the_limit_is_not_stored() {
        let dir = cache_dir("small");
        let (elf, file) = program(0);
        let cache = RewriteCache::with_limit(&dir, 1024);
        assert!(!cache.prepare(&elf, &file).unwrap().1);
        assert!(!cache.prepare(&elf, &file).unwrap().1, "still a miss");
        assert!(!dir.join(key(&file)).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_identity_finds_the_entry_without_hashing_and_a_bad_alias_is_a_miss() {
        let dir = cache_dir("identity");
        let cache = RewriteCache::new(&dir);
        let (elf, file) = program(0);
        assert!(!cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "a miss");
        let alias = dir.join(key(b"identity\0/bin/p 1"));
        assert_eq!(std::fs::read_to_string(&alias).unwrap(), key(&file), "the alias names the entry");
        assert!(cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "a hit through the alias");
        assert!(cache.prepare_identified(b"/bin/p 2", &elf, &file).unwrap().1, "a new identity, the same bytes");
        std::fs::write(&alias, "not a key").unwrap();
        assert!(cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "hashed again, found by content");
        assert_eq!(std::fs::read_to_string(&alias).unwrap(), key(&file), "the alias is written again");
        std::fs::remove_file(dir.join(key(&file))).unwrap();
        assert!(!cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "an alias to an evicted entry");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_depend_on_every_byte() {
        assert_ne!(key(b"\x7fELF one"), key(b"\x7fELF onf"));
        assert_eq!(key(b"same").len(), 64);
    }
}
