//! The on-disk structures (all little-endian): the superblock, block group descriptors, inodes and directory
//! entries, as byte offsets into their blocks. Only the fields Kiln reads or keeps up to date are named.

use crate::{Ext2Error, Result};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;
pub const MAGIC: u16 = 0xef53;
pub const GROUP_DESC_SIZE: usize = 32;
/// Block pointers in an inode: 12 direct, then single, double and triple indirect.
pub const DIRECT_BLOCKS: usize = 12;

const INCOMPAT_FILETYPE: u32 = 0x2;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;

pub const S_IFMT: u16 = 0o170000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFIFO: u16 = 0o010000;
/// `i_flags`: the directory has a hashed index (`dir_index`), which Kiln does not keep up.
pub const INDEX_FL: u32 = 0x1000;

/// `file_type` of a directory entry.
pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_FIFO: u8 = 5;
pub const FT_SYMLINK: u8 = 7;

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The superblock fields Kiln uses; the rest of the 1 KiB stays as read.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub raw: [u8; SUPERBLOCK_SIZE],
    pub inodes_count: u32,
    pub blocks_count: u32,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub first_data_block: u32,
    pub block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub first_ino: u32,
    pub inode_size: u16,
    /// `s_state`: [`STATE_VALID`] while no one has the volume mounted for writing (or after a clean unmount).
    pub state: u16,
}

/// `s_state`: cleanly unmounted.
pub const STATE_VALID: u16 = 1;

impl Superblock {
    /// Parses and checks the superblock: ext2 revision 1 with no feature Kiln would break by writing.
    pub fn parse(raw: &[u8; SUPERBLOCK_SIZE], device_bytes: u64) -> Result<Superblock> {
        if u16_at(raw, 56) != MAGIC {
            return Err(Ext2Error::Corrupt("no ext2 superblock (bad magic)"));
        }
        if u32_at(raw, 76) != 1 {
            return Err(Ext2Error::Unsupported("ext2 revision 0 (make it with mkfs.ext2 from e2fsprogs)"));
        }
        let log = u32_at(raw, 24);
        if log > 2 {
            return Err(Ext2Error::Unsupported("blocks larger than 4 KiB"));
        }
        let incompat = u32_at(raw, 96);
        if incompat & !INCOMPAT_FILETYPE != 0 {
            return Err(Ext2Error::Unsupported(
                "incompatible features (a journal, extents, 64-bit or flex_bg: ext3/ext4)",
            ));
        }
        if incompat & INCOMPAT_FILETYPE == 0 {
            return Err(Ext2Error::Unsupported("directory entries without file types"));
        }
        if u32_at(raw, 100) & !(RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE) != 0 {
            return Err(Ext2Error::Unsupported(
                "read-only-compatible features Kiln would break (checksums, huge files)",
            ));
        }
        let sb = Superblock {
            raw: *raw,
            inodes_count: u32_at(raw, 0),
            blocks_count: u32_at(raw, 4),
            free_blocks: u32_at(raw, 12),
            free_inodes: u32_at(raw, 16),
            first_data_block: u32_at(raw, 20),
            block_size: 1024 << log,
            blocks_per_group: u32_at(raw, 32),
            inodes_per_group: u32_at(raw, 40),
            first_ino: u32_at(raw, 84),
            inode_size: u16_at(raw, 88),
            state: u16_at(raw, 58),
        };
        let sane = sb.blocks_per_group != 0
            && sb.blocks_per_group <= sb.block_size * 8
            && sb.inodes_per_group != 0
            && sb.inodes_per_group <= sb.block_size * 8
            && sb.inode_size >= 128
            && sb.inode_size.is_power_of_two()
            && u32::from(sb.inode_size) <= sb.block_size
            && sb.first_ino > 2
            && sb.blocks_count > sb.first_data_block
            && u64::from(sb.blocks_count) * u64::from(sb.block_size) <= device_bytes;
        if !sane {
            return Err(Ext2Error::Corrupt("superblock geometry out of range or larger than the device"));
        }
        Ok(sb)
    }

    pub fn groups(&self) -> u32 {
        (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    /// The raw bytes with the counters Kiln keeps written back in.
    pub fn serialize(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut raw = self.raw;
        put_u32(&mut raw, 12, self.free_blocks);
        put_u32(&mut raw, 16, self.free_inodes);
        put_u16(&mut raw, 58, self.state);
        raw
    }

    pub fn set_large_file(&mut self) {
        let ro = u32_at(&self.raw, 100);
        put_u32(&mut self.raw, 100, ro | RO_COMPAT_LARGE_FILE);
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct GroupDesc {
    pub block_bitmap: u32,
    pub inode_bitmap: u32,
    pub inode_table: u32,
    pub free_blocks: u16,
    pub free_inodes: u16,
    pub used_dirs: u16,
}

impl GroupDesc {
    pub fn parse(b: &[u8]) -> GroupDesc {
        GroupDesc {
            block_bitmap: u32_at(b, 0),
            inode_bitmap: u32_at(b, 4),
            inode_table: u32_at(b, 8),
            free_blocks: u16_at(b, 12),
            free_inodes: u16_at(b, 14),
            used_dirs: u16_at(b, 16),
        }
    }

    /// Writes the fields into a descriptor's 32 bytes, leaving the rest (padding, unused) as it was.
    pub fn write(&self, b: &mut [u8]) {
        put_u32(b, 0, self.block_bitmap);
        put_u32(b, 4, self.inode_bitmap);
        put_u32(b, 8, self.inode_table);
        put_u16(b, 12, self.free_blocks);
        put_u16(b, 14, self.free_inodes);
        put_u16(b, 16, self.used_dirs);
    }
}

/// The first 128 bytes of an inode (the "good old" inode; bytes past them stay as they are on disk).
#[derive(Clone, Debug)]
pub struct Inode {
    pub raw: [u8; 128],
}

impl Inode {
    pub fn mode(&self) -> u16 {
        u16_at(&self.raw, 0)
    }
    pub fn set_mode(&mut self, v: u16) {
        put_u16(&mut self.raw, 0, v)
    }
    pub fn is_dir(&self) -> bool {
        self.mode() & S_IFMT == S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.mode() & S_IFMT == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode() & S_IFMT == S_IFLNK
    }
    pub fn size(&self) -> u64 {
        let high = if self.is_reg() { u64::from(u32_at(&self.raw, 108)) } else { 0 };
        u64::from(u32_at(&self.raw, 4)) | high << 32
    }
    pub fn set_size(&mut self, v: u64) {
        put_u32(&mut self.raw, 4, v as u32);
        put_u32(&mut self.raw, 108, (v >> 32) as u32);
    }
    pub fn links(&self) -> u16 {
        u16_at(&self.raw, 26)
    }
    pub fn set_links(&mut self, v: u16) {
        put_u16(&mut self.raw, 26, v)
    }
    /// 512-byte sectors of every block the inode holds, indirect ones included.
    pub fn sectors(&self) -> u32 {
        u32_at(&self.raw, 28)
    }
    pub fn set_sectors(&mut self, v: u32) {
        put_u32(&mut self.raw, 28, v)
    }
    pub fn flags(&self) -> u32 {
        u32_at(&self.raw, 32)
    }
    pub fn set_flags(&mut self, v: u32) {
        put_u32(&mut self.raw, 32, v)
    }
    pub fn block(&self, i: usize) -> u32 {
        u32_at(&self.raw, 40 + 4 * i)
    }
    pub fn set_block(&mut self, i: usize, v: u32) {
        put_u32(&mut self.raw, 40 + 4 * i, v)
    }
    pub fn mtime(&self) -> u32 {
        u32_at(&self.raw, 16)
    }
    pub fn atime(&self) -> u32 {
        u32_at(&self.raw, 8)
    }
    pub fn set_atime(&mut self, secs: u32) {
        put_u32(&mut self.raw, 8, secs)
    }
    pub fn set_mtime(&mut self, secs: u32) {
        put_u32(&mut self.raw, 16, secs)
    }
    pub fn set_ctime(&mut self, secs: u32) {
        put_u32(&mut self.raw, 12, secs)
    }
    /// Sets modification and change time (access time too: nothing updates it separately).
    pub fn touch(&mut self, now: u32) {
        for at in [8, 12, 16] {
            put_u32(&mut self.raw, at, now);
        }
    }
    pub fn set_dtime(&mut self, now: u32) {
        put_u32(&mut self.raw, 20, now)
    }
    /// A fresh inode: `mode`, one link, times `now`, no blocks.
    pub fn new(mode: u16, now: u32) -> Inode {
        let mut inode = Inode { raw: [0; 128] };
        inode.set_mode(mode);
        inode.set_links(1);
        inode.touch(now);
        inode
    }
}

/// A directory entry's fixed part: inode, record length, name length, file type; then the name.
pub const DIRENT_HEADER: usize = 8;

/// Bytes an entry with a `name_len`-byte name needs (4-byte aligned).
pub fn dirent_len(name_len: usize) -> usize {
    (DIRENT_HEADER + name_len).next_multiple_of(4)
}
