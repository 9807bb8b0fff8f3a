//! Which blobs were found to match their digest, and as what file: a stamp per blob (`blobs/verified/<hex>`) holds
//! what `stat` said of the blob's file (size, modification and change times, inode, device) when its bytes last
//! hashed to its name. A read whose file still stats the same skips the hash, so booting an image does not hash its
//! program, library OS and prepared blobs on every run. Damage in place changes the change time (which no process
//! can set back), and a new file is a new inode: either sends the next read through the hash again. File times tick
//! in the kernel's coarse clock (milliseconds), so a file changed within [`SETTLE`] of its check is not stamped: a
//! second change in the same tick would keep every time it has (git's index has the same "racy" case).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long ago a blob's file must have last changed for its check to be stamped.
const SETTLE: Duration = Duration::from_secs(2);

/// Whether the file `meta` describes last changed long enough before `now` that a change now would change its times.
pub(crate) fn settled(meta: &Metadata, now: SystemTime) -> bool {
    let changed = SystemTime::UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32);
    now.duration_since(changed).is_ok_and(|age| age >= SETTLE)
}

/// What a blob file's `stat` says, as the bytes a stamp holds (the rewrite cache's file identity, without the path).
pub(crate) fn stat_stamp(meta: &Metadata) -> Vec<u8> {
    kiln_vmm::rootfs_cache::stat_bytes(meta)
}

/// The stamps' directory in a store whose blobs are under `blobs_dir` (`blobs/sha256`).
pub(crate) fn stamps_dir(blobs_dir: &Path) -> PathBuf {
    blobs_dir.with_file_name("verified")
}

pub(crate) fn stamp_path(blobs_dir: &Path, hex: &str) -> PathBuf {
    stamps_dir(blobs_dir).join(hex)
}

/// Whether the stamp for blob `hex` says its file, as `stamp` describes it now, was hashed and matched.
pub(crate) fn is_verified(blobs_dir: &Path, hex: &str, stamp: &[u8]) -> bool {
    std::fs::read(stamp_path(blobs_dir, hex)).is_ok_and(|held| held == stamp)
}

/// Notes that blob `hex`'s file, as `stamp` describes it, matched its digest. A store that cannot be written to (a
/// read-only `$KILN_HOME`) just keeps hashing: the stamp saves time and proves nothing on its own.
pub(crate) fn note_verified(blobs_dir: &Path, hex: &str, stamp: &[u8]) {
    let _ = crate::store::write_atomically(&stamp_path(blobs_dir, hex), stamp);
}

/// Forgets blob `hex`'s stamp (the blob is being removed).
pub(crate) fn forget(blobs_dir: &Path, hex: &str) {
    let _ = std::fs::remove_file(stamp_path(blobs_dir, hex));
}
