//! statfs and fstatfs: every file lives in guest memory, so the filesystem reports itself as tmpfs sized by the VM's
//! RAM, with what the frame allocator has free as its free space.

use super::Args;
use crate::errno::SysResult;
use crate::{file, mm, user};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const BLOCK: u64 = 4096;
const NAME_MAX: i64 = 255;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct StatFs {
    kind: i64,
    block_size: i64,
    blocks: u64,
    blocks_free: u64,
    blocks_available: u64,
    files: u64,
    files_free: u64,
    fsid: [i32; 2],
    name_max: i64,
    fragment_size: i64,
    flags: i64,
    spare: [i64; 4],
}

fn current() -> StatFs {
    let blocks = mm::ram_size() / BLOCK;
    let free = mm::memory().frames.free_bytes() / BLOCK;
    StatFs {
        kind: TMPFS_MAGIC,
        block_size: BLOCK as i64,
        blocks,
        blocks_free: free,
        blocks_available: free,
        // As tmpfs: an inode costs memory, so the limits follow the blocks.
        files: blocks,
        files_free: free,
        name_max: NAME_MAX,
        fragment_size: BLOCK as i64,
        ..StatFs::default()
    }
}

pub fn statfs(a: &Args) -> SysResult {
    super::path::stat_of(a[0])?;
    user::write(a[1], current()).map(|()| 0)
}

pub fn fstatfs(a: &Args) -> SysResult {
    file::get(a[0])?;
    user::write(a[1], current()).map(|()| 0)
}
