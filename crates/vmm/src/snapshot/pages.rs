//! Which pages of guest RAM a snapshot writes: the ones the guest touched. The host knows them: /proc/self/pagemap
//! says for each page of guest RAM's mapping whether it is present (or swapped out); where /proc is not there (a
//! jail), mincore says which are resident. A VM that was itself restored has the rest of its RAM in its snapshot
//! file, whose data extents (SEEK_DATA) count as touched too. Pages that read as all zero are left out later.

use crate::memory::GuestRam;
use kiln_abi::layout::PAGE_SIZE;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::fd::AsRawFd;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
/// Pagemap entries read at a time (512 KiB of them).
const BATCH: usize = 64 << 10;

/// Guest-physical ranges (page-aligned, sorted, disjoint) the guest touched; `source` is the snapshot file and its
/// RAM offset this VM was restored from, if it was.
pub(crate) fn touched(ram: &GuestRam, source: Option<(&std::fs::File, u64)>) -> Vec<Range<u64>> {
    let pages = (ram.size() / PAGE_SIZE) as usize;
    let mut present = pagemap(ram.host_base(), pages).unwrap_or_else(|| mincore(ram.host_base(), pages));
    if let Some((file, offset)) = source {
        for extent in data_extents(file, offset, ram.size()) {
            for page in (extent.start / PAGE_SIZE)..extent.end.div_ceil(PAGE_SIZE) {
                if let Some(p) = present.get_mut(page as usize) {
                    *p = true;
                }
            }
        }
    }
    ranges(&present)
}

/// Runs of `true` as guest-physical ranges.
fn ranges(present: &[bool]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (page, _) in present.iter().enumerate().filter(|(_, &p)| p) {
        let at = page as u64 * PAGE_SIZE;
        match out.last_mut() {
            Some(last) if last.end == at => last.end = at + PAGE_SIZE,
            _ => out.push(at..at + PAGE_SIZE),
        }
    }
    out
}

fn pagemap(host_base: u64, pages: usize) -> Option<Vec<bool>> {
    let mut file = std::fs::File::open("/proc/self/pagemap").ok()?;
    file.seek(SeekFrom::Start(host_base / PAGE_SIZE * 8)).ok()?;
    let mut present = Vec::with_capacity(pages);
    let mut buf = vec![0u8; BATCH.min(pages) * 8];
    while present.len() < pages {
        let n = (pages - present.len()).min(BATCH);
        file.read_exact(&mut buf[..n * 8]).ok()?;
        present.extend(buf[..n * 8].chunks_exact(8).map(|e| {
            let entry = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            entry & (PRESENT | SWAPPED) != 0
        }));
    }
    Some(present)
}

/// Every page counts where mincore fails too: the snapshot is then larger, never wrong.
fn mincore(host_base: u64, pages: usize) -> Vec<bool> {
    let mut vec = vec![0u8; pages];
    // SAFETY: [host_base, +pages pages) is guest RAM's mapping, which the caller's `GuestRam` keeps mapped; mincore
    // only writes one byte per page into `vec`, which has one per page.
    let r = unsafe { libc::mincore(host_base as *mut libc::c_void, pages * PAGE_SIZE as usize, vec.as_mut_ptr()) };
    if r != 0 {
        return vec![true; pages];
    }
    vec.iter().map(|&b| b & 1 != 0).collect()
}

/// The data extents of `file` in `[offset, offset+len)`, relative to `offset`.
pub(super) fn data_extents(file: &std::fs::File, offset: u64, len: u64) -> Vec<Range<u64>> {
    let end = offset + len;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        // SAFETY: lseek on a descriptor this function borrows; it moves only the file's offset, which nothing else
        // of the VMM uses (the snapshot's RAM is read through its mapping).
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { (hole as u64).min(end) };
        out.push(data as u64 - offset..hole - offset);
        at = hole;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_touched_pages_count() {
        let ram = GuestRam::new(4 << 20).unwrap();
        ram.write(3 * PAGE_SIZE + 5, b"x").unwrap();
        ram.write(4 * PAGE_SIZE, b"y").unwrap();
        ram.write(100 * PAGE_SIZE, b"z").unwrap();
        let touched = touched(&ram, None);
        assert!(touched.contains(&(3 * PAGE_SIZE..5 * PAGE_SIZE)), "{touched:x?}");
        assert!(touched.contains(&(100 * PAGE_SIZE..101 * PAGE_SIZE)), "{touched:x?}");
        let pages: u64 = touched.iter().map(|r| (r.end - r.start) / PAGE_SIZE).sum();
        assert!(pages < 64, "{pages} pages counted of 3 touched");
    }

    #[test]
    fn runs_merge() {
        assert_eq!(
            ranges(&[false, true, true, false, true]),
            vec![PAGE_SIZE..3 * PAGE_SIZE, 4 * PAGE_SIZE..5 * PAGE_SIZE]
        );
    }

    #[test]
    fn a_sparse_files_data_is_found() {
        let dir = std::env::temp_dir().join(format!("kiln-extents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let file = std::fs::File::options().create(true).read(true).write(true).truncate(true).open(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, b"data", (2 << 20) + (8 << 20)).unwrap();
        let extents = data_extents(&file, 2 << 20, 32 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(extents.len(), 1, "{extents:x?}");
        assert!(extents[0].contains(&(8 << 20)), "{extents:x?}");
    }
}
