//! How a restore fills the new VM's RAM from the snapshot file. The pages the file holds are copied into the VM's own
//! anonymous memory (in huge pages where the RAM has them), so the guest's first touches cost what a cold boot's do:
//! one shadow fault per page, or per 2 MiB with huge pages. A private mapping of the file costs more on resume: a
//! page the guest writes faults twice (read from the page cache, then copied on write), and a file's pages are never
//! mapped 2 MiB at a time: an idle HTTP server took 184 faults to resume and answer, against 91 for its whole cold boot
//! (docs/benchmarks.md). Only a snapshot holding more than [`COPY_UP_TO`] is mapped, so that its restore does not read
//! it all before the guest runs.

use super::pages::data_extents;
use super::SnapshotError;
use crate::memory::GuestRam;
use std::fs::File;
use std::path::Path;

/// The most data a restore copies up front (a copy from the page cache takes ~0.2 ms per MiB here).
pub(crate) const COPY_UP_TO: u64 = 64 << 20;

/// What a restore did with the snapshot's RAM.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Filled {
    /// Its data (this many bytes) was copied into RAM.
    Copied(u64),
    /// RAM is a private mapping of the file (its pages come in as the guest touches them).
    Mapped,
}

/// Fills `ram` with the guest RAM the file holds from `offset` on, copied or mapped (see the module's comment).
pub(crate) fn fill(ram: &GuestRam, file: &File, offset: u64, path: &Path) -> Result<Filled, SnapshotError> {
    fill_with_limit(ram, file, offset, path, COPY_UP_TO)
}

fn fill_with_limit(ram: &GuestRam, file: &File, offset: u64, path: &Path, limit: u64) -> Result<Filled, SnapshotError> {
    let extents = data_extents(file, offset, ram.size());
    let bytes: u64 = extents.iter().map(|r| r.end - r.start).sum();
    let memory = |source| SnapshotError::Load { path: path.display().to_string(), source };
    if bytes > limit {
        ram.map_file(0, file, offset, ram.size()).map_err(memory)?;
        return Ok(Filled::Mapped);
    }
    for extent in extents {
        ram.read_file(extent.start, file, offset + extent.start, extent.end - extent.start).map_err(memory)?;
    }
    Ok(Filled::Copied(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::layout::PAGE_SIZE;

    /// A sparse "snapshot": 2 pages of header, then RAM of 64 pages with data in pages 3 and 40.
    fn sparse(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("kiln-fill-{name}-{}", std::process::id()));
        let file = File::options().create(true).read(true).write(true).truncate(true).open(&path).unwrap();
        file.set_len(66 * PAGE_SIZE).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, b"three", 5 * PAGE_SIZE + 7).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, b"forty", 42 * PAGE_SIZE).unwrap();
        (path, file)
    }

    #[test]
    fn a_small_snapshot_is_copied_and_a_large_one_mapped_with_the_same_contents() {
        for (limit, copied) in [(COPY_UP_TO, true), (0, false)] {
            let (path, file) = sparse(if copied { "copied" } else { "mapped" });
            let ram = GuestRam::new(64 * PAGE_SIZE).unwrap();
            let filled = fill_with_limit(&ram, &file, 2 * PAGE_SIZE, &path, limit).unwrap();
            assert_eq!(matches!(filled, Filled::Copied(_)), copied, "{filled:?}");
            if let Filled::Copied(bytes) = filled {
                assert!((2 * PAGE_SIZE..=2 << 20).contains(&bytes), "{bytes} bytes copied of 2 pages of data");
            }
            assert_eq!(ram.read_vec(3 * PAGE_SIZE + 6, 7).unwrap(), b"\0three\0");
            assert_eq!(ram.read_vec(40 * PAGE_SIZE, 5).unwrap(), b"forty");
            assert_eq!(ram.read_vec(20 * PAGE_SIZE, 8).unwrap(), [0; 8]);
            // The guest's writes stay in its RAM.
            ram.write(40 * PAGE_SIZE, b"FORTY").unwrap();
            let mut on_disk = [0u8; 5];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut on_disk, 42 * PAGE_SIZE).unwrap();
            assert_eq!(&on_disk, b"forty");
            std::fs::remove_file(&path).unwrap();
        }
    }
}
