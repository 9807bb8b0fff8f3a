//! The bytes of an in-memory file that is mapped MAP_SHARED: 4 KiB frames of guest memory that every shared
//! mapping maps (`mm::vma::map_borrowed`), so that the mappings, `read` and `write` all see the same bytes. A file
//! turns into pages on its first shared mapping; each mapping holds the pages (an `Arc`), so they outlive an unlinked
//! file until the last munmap. Truncating keeps the frames (zeroed past the new end) while a mapping may reach them;
//! growing adds frames that mappings made before do not map.

use crate::errno::Errno;
use crate::mm;
use crate::sync::SpinLock;
use alloc::sync::Arc;
use alloc::vec::Vec;
use kiln_abi::layout::{direct_map, PAGE_SIZE};

pub struct Pages {
    frames: SpinLock<Vec<u64>>,
}

/// The bytes of the frame `frame` from `offset`, `len` of them.
fn frame_bytes(frame: u64, offset: u64, len: u64) -> *mut u8 {
    debug_assert!(offset + len <= PAGE_SIZE);
    (direct_map(frame) + offset) as *mut u8
}

impl Pages {
    /// Pages holding `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Arc<Pages>, Errno> {
        let pages = Arc::new(Pages { frames: SpinLock::new(Vec::new()) });
        pages.write(0, bytes)?;
        Ok(pages)
    }

    /// Makes sure frames cover the first `len` bytes (new frames read as zero).
    pub fn cover(&self, len: u64) -> Result<(), Errno> {
        let needed = len.div_ceil(PAGE_SIZE) as usize;
        let mut frames = self.frames.lock();
        if frames.len() >= needed {
            return Ok(());
        }
        // Room first: the heap takes the memory lock to grow.
        let more = needed - frames.len();
        frames.try_reserve(more).map_err(|_| Errno::ENOSPC)?;
        let mut m = mm::memory();
        while frames.len() < needed {
            frames.push(m.frames.alloc(PAGE_SIZE).ok_or(Errno::ENOSPC)?);
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from `offset` (which frames cover) into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) {
        let frames = self.frames.lock();
        let mut done = 0u64;
        while done < out.len() as u64 {
            let at = offset + done;
            let (page, within) = ((at / PAGE_SIZE) as usize, at % PAGE_SIZE);
            let n = (PAGE_SIZE - within).min(out.len() as u64 - done);
            let Some(&frame) = frames.get(page) else { break };
            // SAFETY: a frame of this file, in the direct map; `n` stays inside it and inside `out`.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    frame_bytes(frame, within, n),
                    out[done as usize..].as_mut_ptr(),
                    n as usize,
                )
            };
            done += n;
        }
    }

    /// Writes `data` at `offset`, adding frames as needed.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        self.cover(end)?;
        let frames = self.frames.lock();
        let mut done = 0u64;
        while done < data.len() as u64 {
            let at = offset + done;
            let (page, within) = ((at / PAGE_SIZE) as usize, at % PAGE_SIZE);
            let n = (PAGE_SIZE - within).min(data.len() as u64 - done);
            // SAFETY: a frame of this file (covered above), in the direct map; `n` stays inside it and `data`.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data[done as usize..].as_ptr(),
                    frame_bytes(frames[page], within, n),
                    n as usize,
                )
            };
            done += n;
        }
        Ok(())
    }

    /// Zeroes the bytes from `from` to the end of the frames (what lies past a truncated file's end).
    pub fn zero_from(&self, from: u64) {
        let frames = self.frames.lock();
        for (i, &frame) in frames.iter().enumerate() {
            let start = i as u64 * PAGE_SIZE;
            if start + PAGE_SIZE <= from {
                continue;
            }
            let within = from.saturating_sub(start);
            // SAFETY: a frame of this file, in the direct map.
            unsafe {
                core::ptr::write_bytes(frame_bytes(frame, within, PAGE_SIZE - within), 0, (PAGE_SIZE - within) as usize)
            };
        }
    }

    /// The frames of pages `first..first+count` (those that exist).
    pub fn frames(&self, first: u64, count: u64) -> Vec<u64> {
        let frames = self.frames.lock();
        frames.iter().skip(first as usize).take(count as usize).copied().collect()
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let frames = core::mem::take(&mut *self.frames.lock());
        for &frame in &frames {
            // SAFETY: the file's frame, which nothing maps any more (every mapping held these pages).
            unsafe { core::ptr::write_bytes(direct_map(frame) as *mut u8, 0, PAGE_SIZE as usize) };
        }
        let mut m = mm::memory();
        for &frame in &frames {
            m.frames.free_zeroed(frame, PAGE_SIZE);
        }
        drop(m);
    }
}
