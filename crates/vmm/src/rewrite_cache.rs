//! A cache of prepared (rewritten) programs, keyed by the SHA-256 of the executable and of this kiln's version. The
//! rewrite depends only on those, and decoding is the costliest part of a boot (the decoder builds its tables first),
//! so `kiln run` of a binary it has run before skips it. Entries are checked on the way in: a damaged, truncated or
//! mismatched entry is a miss, never an error, and is replaced.

use crate::elf::ElfImage;
use crate::loader::{self, LoaderError, PreparedProgram};
use crate::rewrite::RewriteReport;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KILNPREP";
/// Bumped whenever the entry layout or what the rewriter produces changes.
const FORMAT: u32 = 1;

pub struct RewriteCache {
    dir: PathBuf,
}

impl RewriteCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The prepared program, from the cache if it has it (`true`), else freshly prepared and stored (`false`).
    pub fn prepare(&self, elf: &ElfImage, file: &[u8]) -> Result<(PreparedProgram, bool), LoaderError> {
        let path = self.dir.join(key(file));
        if let Some(prepared) = std::fs::read(&path).ok().and_then(|b| decode(&b)).filter(|p| p.fits(elf)) {
            return Ok((prepared, true));
        }
        let prepared = loader::prepare_program(elf, file)?;
        if let Err(e) = store(&path, &encode(&prepared)) {
            tracing::debug!("cannot store the rewritten program in {}: {e}", path.display());
        }
        Ok((prepared, false))
    }
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
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}", std::process::id(), path.file_name().unwrap_or_default().to_string_lossy()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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
    let mut payload = Vec::with_capacity(p.bytes.len() + p.stubs.len() + 128);
    payload.extend(p.base.to_le_bytes());
    payload.extend(p.span_start.to_le_bytes());
    put_bytes(&mut payload, &p.bytes);
    put_bytes(&mut payload, &p.stubs);
    put_addrs(&mut payload, &p.report.rewritten);
    put_addrs(&mut payload, &p.report.relocated);
    put_addrs(&mut payload, &p.report.unsafe_sites);
    let mut out = Vec::with_capacity(payload.len() + 44);
    out.extend(MAGIC);
    out.extend(FORMAT.to_le_bytes());
    out.extend(&payload);
    out.extend(Sha256::digest(&payload));
    out
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
    fn addrs(&mut self) -> Option<Vec<u64>> {
        let n = usize::try_from(self.u64()?).ok()?;
        // Bounded by what is left, so a damaged count cannot ask for a huge allocation.
        (n <= self.0.len() / 8).then(|| (0..n).map(|_| self.u64()).collect::<Option<_>>())?
    }
}

/// Reads what [`encode`] wrote (by this kiln's format); `None` for anything else.
pub fn decode(entry: &[u8]) -> Option<PreparedProgram> {
    let body = entry.strip_prefix(MAGIC)?;
    let (format, rest) = body.split_at_checked(4)?;
    if format != FORMAT.to_le_bytes() || rest.len() < 32 {
        return None;
    }
    let (payload, digest) = rest.split_at(rest.len() - 32);
    if Sha256::digest(payload).as_slice() != digest {
        return None;
    }
    let mut r = Reader(payload);
    let prepared = PreparedProgram {
        base: r.u64()?,
        span_start: r.u64()?,
        bytes: r.bytes()?,
        stubs: r.bytes()?,
        report: RewriteReport { rewritten: r.addrs()?, relocated: r.addrs()?, unsafe_sites: r.addrs()? },
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
            bytes: vec![0x90; 0x2000],
            stubs: vec![0xcc; 16],
            report: RewriteReport {
                rewritten: vec![0x401000, 0x401010],
                relocated: vec![0x401100],
                unsafe_sites: vec![],
            },
        }
    }

    #[test]
    fn entries_round_trip() {
        let p = decode(&encode(&sample())).unwrap();
        let s = sample();
        assert_eq!((p.base, p.span_start, p.bytes, p.stubs), (s.base, s.span_start, s.bytes, s.stubs));
        assert_eq!(p.report.rewritten, s.report.rewritten);
        assert_eq!(p.report.relocated, s.report.relocated);
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

    #[test]
    fn keys_depend_on_every_byte() {
        assert_ne!(key(b"\x7fELF one"), key(b"\x7fELF onf"));
        assert_eq!(key(b"same").len(), 64);
    }
}
