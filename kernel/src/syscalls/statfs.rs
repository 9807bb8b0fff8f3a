//! statfs and fstatfs: files in guest memory report a tmpfs sized by the VM's RAM, with what the frame allocator has
//! free as its free space; files on a volume report its ext2 filesystem.

use super::fs::AT_FDCWD;
use super::Args;
use crate::errno::SysResult;
use crate::file::Object;
use crate::vfs::{self, Inode};
use crate::{file, mm, user};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const EXT2_SUPER_MAGIC: i64 = 0xef53;
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

/// What a file's filesystem reports: its volume's, or the in-memory tree's.
fn of_inode(inode: &Inode) -> StatFs {
    let Some((bytes, free, inodes, free_inodes, block)) = inode.volume_usage() else { return current() };
    let block = u64::from(block);
    StatFs {
        kind: EXT2_SUPER_MAGIC,
        block_size: block as i64,
        blocks: bytes / block,
        blocks_free: free / block,
        blocks_available: free / block,
        files: inodes,
        files_free: free_inodes,
        name_max: NAME_MAX,
        fragment_size: block as i64,
        ..StatFs::default()
    }
}

pub fn statfs(a: &Args) -> SysResult {
    super::path::stat_of(a[0])?;
    // Devices (/dev/null) exist without an inode of the tree: they are in memory.
    let fs = match vfs::lookup(&super::path::resolve(AT_FDCWD as u64, a[0])?) {
        Ok(inode) => of_inode(&inode),
        Err(_) => current(),
    };
    user::write(a[1], fs).map(|()| 0)
}

pub fn fstatfs(a: &Args) -> SysResult {
    let f = file::get_including_path(a[0])?;
    let fs = match &f.object {
        Object::Regular { inode, .. } | Object::Directory { inode, .. } => of_inode(inode),
        _ => current(),
    };
    user::write(a[1], fs).map(|()| 0)
}
