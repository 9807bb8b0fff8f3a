//! A cache of prepared (rewritten) programs, keyed by the SHA-256 of the executable and of this kiln's version. The
//! rewrite depends only on those, and decoding is the costliest part of a boot (the decoder builds its tables first),
//! so `kiln run` of a binary it has run before skips it. Entries are checked on the way in, at a cost in proportion
//! to their metadata ([`Check::Hit`]): a truncated one, one of another format or made from another input, or one
//! whose head or metadata is damaged is a miss, never an error, and is replaced. The cache holds at most a limit of bytes (256 MiB
//! by default): storing an entry deletes the least recently used ones beyond it (by modification time, which a hit
//! renews). An entry holds only what the rewrite changed in the program's code (`PreparedProgram::code`), a few bytes per
//! syscall site: a hit reads little, and the code itself comes from the program's file.

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
pub(crate) const FORMAT: u32 = 5;

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
        let alias = self.dir.join(hex(&key(&[b"identity\0", identity].concat())));
        let named = std::fs::read_to_string(&alias).ok().and_then(|k| unhex(&k));
        if let Some(prepared) = named.and_then(|k| self.lookup(&k, elf)) {
            return Ok((prepared, true));
        }
        let content = key(file);
        let prepared = self.prepare_keyed(&content, elf, file)?;
        if let Err(e) = store(&alias, hex(&content).as_bytes()) {
            tracing::debug!("cannot store the program's alias in {}: {e}", alias.display());
        }
        Ok(prepared)
    }

    /// The entry made from the input whose key is `input`, if it is there, whole, and fits `elf`.
    fn lookup(&self, input: &[u8; 32], elf: &ElfImage) -> Option<PreparedProgram> {
        let path = self.dir.join(hex(input));
        let prepared = read_entry(&path, input).filter(|p| p.fits(elf))?;
        touch(&path);
        Some(prepared)
    }

    fn prepare_keyed(
        &self,
        input: &[u8; 32],
        elf: &ElfImage,
        file: &[u8],
    ) -> Result<(PreparedProgram, bool), LoaderError> {
        if let Some(prepared) = self.lookup(input, elf) {
            return Ok((prepared, true));
        }
        let prepared = loader::prepare_program(elf, file)?;
        let entry = encode_keyed(&prepared, input);
        if entry.len() as u64 > self.limit {
            return Ok((prepared, false));
        }
        let path = self.dir.join(hex(input));
        match store_durable(&path, &entry) {
            Ok(()) => self.evict(&path),
            Err(e) => tracing::debug!("cannot store the rewritten program in {}: {e}", path.display()),
        }
        Ok((prepared, false))
    }

    /// The shared object `file` rewritten (`shared_object`), from the cache if it has it (`true`), else freshly
    /// rewritten and stored (`false`). Keyed like programs, by content, in the same directory and limit.
    pub fn rewrite_object(&self, file: &[u8]) -> Result<(RewrittenObject, bool), SharedObjectError> {
        let input = key(&[b"shared object\0", file].concat());
        let path = self.dir.join(hex(&input));
        if let Some(object) = std::fs::read(&path).ok().and_then(|b| decode_object(&b, Check::Hit(input))) {
            touch(&path);
            return Ok((object, true));
        }
        let object = shared_object::rewrite_object(file)?;
        let entry = encode_object(&object, &input);
        if entry.len() as u64 <= self.limit {
            match store_durable(&path, &entry) {
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

/// The SHA-256 of `file` with this kiln's version and format: an entry's name (in hex) and the input it records.
fn key(file: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kiln rewrite cache\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(FORMAT.to_le_bytes());
    h.update(file);
    h.finalize().into()
}

fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key an entry's name (or an alias's contents) spells, if it is one.
fn unhex(name: &str) -> Option<[u8; 32]> {
    if !is_key(name) {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&name[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Marks the entry at `path` used now: its modification time is its last use, which eviction goes by.
fn touch(path: &Path) {
    let _ = std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
}

/// [`store`], with the bytes flushed to disk before the rename: an entry under its name is then whole even after a
/// crash, which is what lets a hit skip the bulk's digest ([`Check::Hit`]). Only on a miss, which costs far more.
fn store_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    store_with(path, &[(0, bytes)], true).map(drop)
}

/// Writes the whole entry under a temporary name, then renames it: readers see all of it or nothing.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    store_with(path, &[(0, bytes)], false).map(drop)
}

/// [`store`] of `parts`, each at its file offset (in increasing order; what lies between them is a hole, which reads
/// as zeros and takes no disk space); returns the file written, open for reading.
pub(crate) fn store_placed(path: &Path, parts: &[(u64, &[u8])]) -> std::io::Result<std::fs::File> {
    store_with(path, parts, false)
}

fn store_with(path: &Path, parts: &[(u64, &[u8])], durable: bool) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}", std::process::id(), path.file_name().unwrap_or_default().to_string_lossy()));
    let written = (|| {
        let mut f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        for &(at, part) in parts {
            f.seek(SeekFrom::Start(at))?;
            f.write_all(part)?;
        }
        if durable {
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(f)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn put_addrs(out: &mut Vec<u8>, addrs: &[u64]) {
    out.extend((addrs.len() as u64).to_le_bytes());
    addrs.iter().for_each(|a| out.extend(a.to_le_bytes()));
}

/// The entry of `p` with no input named: how an image stores its prepared program (the image store vouches for the
/// input). See [`seal`] for the layout.
pub fn encode(p: &PreparedProgram) -> Vec<u8> {
    encode_keyed(p, &[0; 32])
}

/// The entry of `p`, prepared from the input whose [`key`] is `input`.
fn encode_keyed(p: &PreparedProgram, input: &[u8; 32]) -> Vec<u8> {
    let mut meta = Vec::with_capacity(p.code.len() * 16 + 128);
    meta.extend(p.base.to_le_bytes());
    meta.extend(p.span_start.to_le_bytes());
    meta.extend(p.span_len.to_le_bytes());
    meta.extend((p.code.len() as u64).to_le_bytes());
    for (at, bytes) in &p.code {
        meta.extend(at.to_le_bytes());
        meta.extend((bytes.len() as u64).to_le_bytes());
    }
    meta.extend((p.stubs.len() as u64).to_le_bytes());
    put_report(&mut meta, &p.report);
    let mut bulk: Vec<&[u8]> = p.code.iter().map(|(_, bytes)| bytes.as_slice()).collect();
    bulk.push(&p.stubs);
    seal(MAGIC, input, &meta, &bulk)
}

/// Bytes before an entry's metadata: magic, format, input key, metadata length, bulk length.
const HEAD_LEN: usize = 8 + 4 + 32 + 8 + 8;
/// Bytes after its bulk: the two digests.
const TAIL_LEN: usize = 32 + 32;

/// An entry: the head ([`HEAD_LEN`]: `magic`, format, the input's key, the metadata's and the bulk's lengths), the
/// metadata (addresses and lengths, the rewrite report), the bulk (the rewritten bytes), then the SHA-256 of
/// everything before the bulk and the SHA-256 of the bulk. A cache hit checks the head, the lengths and the first
/// digest only, so it costs in proportion to the metadata, not to the program (python3: 8-14 MB of bulk); see
/// [`Check`].
fn seal(magic: &[u8; 8], input: &[u8; 32], meta: &[u8], bulk: &[&[u8]]) -> Vec<u8> {
    let bulk_len: usize = bulk.iter().map(|b| b.len()).sum();
    let mut out = Vec::with_capacity(HEAD_LEN + meta.len() + bulk_len + TAIL_LEN);
    out.extend(magic);
    out.extend(FORMAT.to_le_bytes());
    out.extend(input);
    out.extend((meta.len() as u64).to_le_bytes());
    out.extend((bulk_len as u64).to_le_bytes());
    out.extend(meta);
    let head_digest = Sha256::digest(&out);
    let mut h = Sha256::new();
    for part in bulk {
        out.extend(*part);
        h.update(part);
    }
    out.extend(head_digest);
    out.extend(h.finalize());
    out
}

/// How much of an entry [`unseal`] checks.
#[derive(Clone, Copy)]
enum Check {
    /// A cache hit: the magic and format, that it was made from the input whose key is given, that its length is
    /// exactly what its head says (catches truncation and anything appended), and the digest of everything but the
    /// bulk. Entries are written whole, flushed to disk and only then renamed into place ([`store_durable`]), so a
    /// damaged bulk would take something other than kiln writing into the cache directory; it is not looked for.
    Hit([u8; 32]),
    /// Also the bulk's digest, and any input: an image's prepared program, whose cost is paid once per image.
    Whole,
}

/// The metadata's and the bulk's lengths an entry's head (its first [`HEAD_LEN`] bytes) gives, if it is one `seal`
/// made with `magic` in this format (and from `check`'s input, for a hit), and where its tail starts.
fn head_lengths(magic: &[u8; 8], head: &[u8], check: Check) -> Option<(usize, usize, usize)> {
    let head = head.get(..HEAD_LEN)?;
    if &head[..8] != magic || head[8..12] != FORMAT.to_le_bytes() {
        return None;
    }
    if let Check::Hit(input) = check {
        (head[12..44] == input).then_some(())?;
    }
    let meta_len = usize::try_from(u64::from_le_bytes(head[44..52].try_into().ok()?)).ok()?;
    let bulk_len = usize::try_from(u64::from_le_bytes(head[52..60].try_into().ok()?)).ok()?;
    let tail_at = HEAD_LEN.checked_add(meta_len)?.checked_add(bulk_len)?;
    Some((meta_len, bulk_len, tail_at))
}

/// The metadata and the bulk of an entry [`seal`] made with `magic`, if it passes `check`.
fn unseal<'a>(magic: &[u8; 8], entry: &'a [u8], check: Check) -> Option<(&'a [u8], &'a [u8])> {
    let (meta_len, _, tail_at) = head_lengths(magic, entry, check)?;
    if tail_at.checked_add(TAIL_LEN)? != entry.len() {
        return None;
    }
    let bulk_at = HEAD_LEN + meta_len;
    let (head_digest, bulk_digest) = entry[tail_at..].split_at(32);
    if Sha256::digest(&entry[..bulk_at]).as_slice() != head_digest {
        return None;
    }
    let bulk = &entry[bulk_at..tail_at];
    if matches!(check, Check::Whole) && Sha256::digest(bulk).as_slice() != bulk_digest {
        return None;
    }
    Some((&entry[HEAD_LEN..bulk_at], bulk))
}

/// The program entry at `path`, checked as a hit from `input` ([`Check::Hit`]), the metadata first, then its bulk
/// read straight into the pieces it holds: the code is copied once, from the page cache.
fn read_entry(path: &Path, input: &[u8; 32]) -> Option<PreparedProgram> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut head = [0; HEAD_LEN];
    file.read_exact_at(&mut head, 0).ok()?;
    let (meta_len, bulk_len, tail_at) = head_lengths(MAGIC, &head, Check::Hit(*input))?;
    if tail_at.checked_add(TAIL_LEN)? as u64 != size {
        return None;
    }
    let mut checked = head.to_vec();
    checked.resize(HEAD_LEN + meta_len, 0);
    file.read_exact_at(&mut checked[HEAD_LEN..], HEAD_LEN as u64).ok()?;
    let mut head_digest = [0; 32];
    file.read_exact_at(&mut head_digest, tail_at as u64).ok()?;
    if Sha256::digest(&checked).as_slice() != head_digest {
        return None;
    }
    let layout = Layout::read(&checked[HEAD_LEN..], bulk_len)?;
    let mut at = (HEAD_LEN + meta_len) as u64;
    let mut read = |n: usize| {
        let mut bytes = vec![0; n];
        file.read_exact_at(&mut bytes, at).ok()?;
        at += n as u64;
        Some(bytes)
    };
    let code = layout.pieces.iter().map(|&(vaddr, n)| Some((vaddr, read(n)?))).collect::<Option<Vec<_>>>()?;
    let stubs = read(layout.stubs_len)?;
    Some(layout.program(code, stubs))
}

fn put_report(out: &mut Vec<u8>, report: &RewriteReport) {
    put_addrs(out, &report.relocated);
    put_addrs(out, &report.red_zone);
    put_addrs(out, &report.in_place);
    put_addrs(out, &report.unsafe_sites);
}

fn encode_object(object: &RewrittenObject, input: &[u8; 32]) -> Vec<u8> {
    let mut meta = Vec::with_capacity(64);
    put_report(&mut meta, &object.report);
    seal(OBJECT_MAGIC, input, &meta, &[&object.bytes])
}

fn decode_object(entry: &[u8], check: Check) -> Option<RewrittenObject> {
    let (meta, bulk) = unseal(OBJECT_MAGIC, entry, check)?;
    let mut r = Reader(meta);
    let object = RewrittenObject { bytes: bulk.to_vec(), report: r.report()? };
    r.0.is_empty().then_some(object)
}

/// Reads what `seal` wrote, field by field.
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
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }
    /// The code pieces' addresses and lengths.
    fn code(&mut self) -> Option<Vec<(u64, usize)>> {
        let n = self.len()?;
        // Each piece takes 16 bytes: a damaged count cannot ask for a huge allocation.
        (n <= self.0.len() / 16).then(|| (0..n).map(|_| Some((self.u64()?, self.len()?))).collect::<Option<_>>())?
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
        let n = self.len()?;
        // Bounded by what is left, so a damaged count cannot ask for a huge allocation.
        (n <= self.0.len() / 8).then(|| (0..n).map(|_| self.u64()).collect::<Option<_>>())?
    }
}

/// Reads what [`encode`] wrote (by this kiln's format), checking all of it; `None` for anything else.
pub fn decode(entry: &[u8]) -> Option<PreparedProgram> {
    decode_checked(entry, Check::Whole)
}

fn decode_checked(entry: &[u8], check: Check) -> Option<PreparedProgram> {
    let (meta, bulk) = unseal(MAGIC, entry, check)?;
    let layout = Layout::read(meta, bulk.len())?;
    let mut rest = bulk;
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    let code = layout.pieces.iter().map(|&(vaddr, n)| (vaddr, take(n))).collect();
    let stubs = take(layout.stubs_len);
    Some(layout.program(code, stubs))
}

/// A program entry's metadata: everything but the bytes of its code and stubs.
struct Layout {
    base: u64,
    span_start: u64,
    span_len: u64,
    /// The code pieces' addresses and lengths, in the bulk's order.
    pieces: Vec<(u64, usize)>,
    stubs_len: usize,
    report: RewriteReport,
}

impl Layout {
    /// The metadata `meta`, if it is whole and its pieces and stubs make up exactly `bulk_len` bytes.
    fn read(meta: &[u8], bulk_len: usize) -> Option<Layout> {
        let mut r = Reader(meta);
        let (base, span_start, span_len) = (r.u64()?, r.u64()?, r.u64()?);
        let pieces = r.code()?;
        let stubs_len = r.len()?;
        let report = r.report()?;
        let total = pieces.iter().try_fold(stubs_len, |sum, &(_, n)| sum.checked_add(n))?;
        (r.0.is_empty() && total == bulk_len).then_some(Layout {
            base,
            span_start,
            span_len,
            pieces,
            stubs_len,
            report,
        })
    }

    fn program(self, code: Vec<(u64, Vec<u8>)>, stubs: Vec<u8>) -> PreparedProgram {
        let Layout { base, span_start, span_len, report, .. } = self;
        PreparedProgram { base, span_start, span_len, code, stubs, report }
    }
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

    const INPUT: [u8; 32] = [7; 32];

    #[test]
    fn shared_object_entries_round_trip_and_damage_is_a_miss() {
        let object = RewrittenObject { bytes: vec![0x7f, b'E', b'L', b'F', 1, 2, 3], report: sample().report };
        let entry = encode_object(&object, &INPUT);
        let back = decode_object(&entry, Check::Hit(INPUT)).unwrap();
        assert_eq!((back.bytes, back.report.relocated), (object.bytes, object.report.relocated));
        let mut damaged = entry.clone();
        damaged[HEAD_LEN + 1] ^= 1;
        assert!(decode_object(&damaged, Check::Hit(INPUT)).is_none());
        assert!(decode_object(&entry, Check::Hit([8; 32])).is_none(), "another input's");
        // A program's entry is no object's, and the other way round.
        assert!(decode_object(&encode_keyed(&sample(), &INPUT), Check::Hit(INPUT)).is_none());
        assert!(decode_checked(&entry, Check::Hit(INPUT)).is_none());
    }

    #[test]
    fn entries_round_trip() {
        for (entry, check) in [(encode(&sample()), Check::Whole), (encode_keyed(&sample(), &INPUT), Check::Hit(INPUT))]
        {
            let p = decode_checked(&entry, check).unwrap();
            let s = sample();
            assert_eq!(
                (p.base, p.span_start, p.span_len, p.code, p.stubs),
                (s.base, s.span_start, s.span_len, s.code, s.stubs)
            );
            assert_eq!(p.report.relocated, s.report.relocated);
            assert_eq!(p.report.red_zone, s.report.red_zone);
            assert_eq!(p.report.in_place, s.report.in_place);
        }
    }

    /// Where `sample()`'s bulk (its code and stubs) starts and ends in its entry.
    fn bulk_of(entry: &[u8]) -> std::ops::Range<usize> {
        let bulk_len: usize = sample().code.iter().map(|(_, b)| b.len()).sum::<usize>() + sample().stubs.len();
        entry.len() - TAIL_LEN - bulk_len..entry.len() - TAIL_LEN
    }

    /// Whether `entry` is refused under `check`: as bytes, and for a hit also as a file read piece by piece.
    fn refused(entry: &[u8], check: Check) -> bool {
        let refused = decode_checked(entry, check).is_none();
        let Check::Hit(input) = check else { return refused };
        let dir = cache_dir("refused");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("entry"), entry).unwrap();
        let read = read_entry(&dir.join("entry"), &input);
        assert_eq!(read.is_none(), refused, "the file is read as the bytes are decoded");
        std::fs::remove_dir_all(&dir).unwrap();
        refused
    }

    #[test]
    fn damaged_entries_are_misses() {
        let good = encode_keyed(&sample(), &INPUT);
        assert!(!refused(&good, Check::Hit(INPUT)) && !refused(&good, Check::Whole));
        let dir = cache_dir("read");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("entry"), &good).unwrap();
        let read = read_entry(&dir.join("entry"), &INPUT).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((read.code, read.stubs), (sample().code, sample().stubs), "read from a file");
        for check in [Check::Hit(INPUT), Check::Whole] {
            assert!(refused(&good[..good.len() - 1], check), "truncated");
            assert!(refused(&[&good[..], &[0]].concat(), check), "a byte appended");
            let bulk = bulk_of(&good);
            assert!(refused(&[&good[..bulk.start], &good[bulk.end..]].concat(), check), "no bulk");
            // Every byte of the head and the metadata, and the head's digest, are checked on every hit.
            for at in (0..bulk.start).chain(bulk.end..bulk.end + 32) {
                let mut flipped = good.clone();
                flipped[at] ^= 1;
                assert!(refused(&flipped, check), "a flipped bit at {at}");
            }
            let mut other_format = good.clone();
            other_format[8] = 99;
            assert!(refused(&other_format, check), "another format");
            assert!(refused(b"KILNPREP", check) && refused(b"", check));
        }
        assert!(refused(&good, Check::Hit([8; 32])), "made from another input");
        // The bulk's digest is checked only when all of the entry is (an image's prepared program).
        let mut flipped = good.clone();
        flipped[bulk_of(&good).start + 3] ^= 1;
        assert!(decode(&flipped).is_none(), "a flipped bit in the code");
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
        let path = |i: usize| dir.join(hex(&key(&programs[i].1)));
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
        let entry_len = encode(&loader::prepare_program(&elf, &file).unwrap()).len() as u64;
        let cache = RewriteCache::with_limit(&dir, entry_len - 1);
        assert!(!cache.prepare(&elf, &file).unwrap().1);
        assert!(!cache.prepare(&elf, &file).unwrap().1, "still a miss");
        assert!(!dir.join(hex(&key(&file))).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_identity_finds_the_entry_without_hashing_and_a_bad_alias_is_a_miss() {
        let dir = cache_dir("identity");
        let cache = RewriteCache::new(&dir);
        let (elf, file) = program(0);
        assert!(!cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "a miss");
        let alias = dir.join(hex(&key(b"identity\0/bin/p 1")));
        assert_eq!(std::fs::read_to_string(&alias).unwrap(), hex(&key(&file)), "the alias names the entry");
        assert!(cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "a hit through the alias");
        assert!(cache.prepare_identified(b"/bin/p 2", &elf, &file).unwrap().1, "a new identity, the same bytes");
        std::fs::write(&alias, "not a key").unwrap();
        assert!(cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "hashed again, found by content");
        assert_eq!(std::fs::read_to_string(&alias).unwrap(), hex(&key(&file)), "the alias is written again");
        std::fs::remove_file(dir.join(hex(&key(&file)))).unwrap();
        assert!(!cache.prepare_identified(b"/bin/p 1", &elf, &file).unwrap().1, "an alias to an evicted entry");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_entry_made_from_another_input_is_a_miss() {
        let dir = cache_dir("other-input");
        let cache = RewriteCache::new(&dir);
        // Two programs of the same layout and code (they differ past their segments): each entry fits the other.
        let (a, b) = (program(0), program(1));
        assert!(!cache.prepare(&a.0, &a.1).unwrap().1);
        std::fs::copy(dir.join(hex(&key(&a.1))), dir.join(hex(&key(&b.1)))).unwrap();
        assert!(!cache.prepare(&b.0, &b.1).unwrap().1, "a's entry under b's name");
        assert!(cache.prepare(&b.0, &b.1).unwrap().1, "replaced by b's own");
        assert!(cache.prepare(&a.0, &a.1).unwrap().1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_depend_on_every_byte() {
        assert_ne!(key(b"\x7fELF one"), key(b"\x7fELF onf"));
        assert_eq!(hex(&key(b"same")).len(), 64);
        assert_eq!(unhex(&hex(&key(b"same"))), Some(key(b"same")));
        assert_eq!(unhex("not a key"), None);
    }
}
