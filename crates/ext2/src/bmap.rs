//! Where a file's blocks are: 12 direct pointers in the inode, then trees of indirect blocks one, two and three
//! levels deep. Finding a block (allocating it, and the indirect blocks on its way, for a write) and freeing the
//! blocks past a new end (truncate, delete).

use crate::cache::Class;
use crate::fs::Ext2;
use crate::layout::{put_u32, u32_at, Inode, DIRECT_BLOCKS};
use crate::{BlockDevice, Ext2Error, Result};

impl<D: BlockDevice> Ext2<D> {
    fn pointers(&self) -> u64 {
        u64::from(self.sb.block_size / 4)
    }

    /// Highest number of blocks a file can have.
    pub(crate) fn max_file_blocks(&self) -> u64 {
        let p = self.pointers();
        DIRECT_BLOCKS as u64 + p + p * p + p * p * p
    }

    fn sectors_per_block(&self) -> u32 {
        self.sb.block_size / 512
    }

    fn check_pointer(&self, block: u32) -> Result<u32> {
        if block < self.sb.first_data_block || block >= self.sb.blocks_count {
            return Err(Ext2Error::Corrupt("a block pointer outside the volume"));
        }
        Ok(block)
    }

    /// The disk block holding file block `fb`, or `None` for a hole; with `allocate`, a hole is filled (with a
    /// zeroed block near `goal`) and the inode's pointers and block count updated in `inode`, which the caller
    /// writes back.
    pub(crate) fn map_block(&mut self, inode: &mut Inode, fb: u64, allocate: bool, goal: u32) -> Result<Option<u32>> {
        let p = self.pointers();
        let (slot, depth, mut rel) = if fb < DIRECT_BLOCKS as u64 {
            (fb as usize, 0u32, 0u64)
        } else if fb < DIRECT_BLOCKS as u64 + p {
            (12, 1, fb - DIRECT_BLOCKS as u64)
        } else if fb < DIRECT_BLOCKS as u64 + p + p * p {
            (13, 2, fb - DIRECT_BLOCKS as u64 - p)
        } else if fb < self.max_file_blocks() {
            (14, 3, fb - DIRECT_BLOCKS as u64 - p - p * p)
        } else {
            return Err(Ext2Error::FileTooBig);
        };
        let class_at = |level: u32| if level == depth { Class::Data } else { Class::Meta };
        let mut block = inode.block(slot);
        if block == 0 {
            if !allocate {
                return Ok(None);
            }
            block = self.alloc_block(goal, class_at(0))?;
            inode.set_block(slot, block);
            inode.set_sectors(inode.sectors() + self.sectors_per_block());
        } else {
            self.check_pointer(block)?;
        }
        for level in 1..=depth {
            let span = p.pow(depth - level);
            let index = (rel / span) as usize;
            rel %= span;
            let mut next = u32_at(self.cache.read(block)?, index * 4);
            if next == 0 {
                if !allocate {
                    return Ok(None);
                }
                next = self.alloc_block(block, class_at(level))?;
                put_u32(self.cache.modify(block, Class::Meta)?, index * 4, next);
                inode.set_sectors(inode.sectors() + self.sectors_per_block());
            } else {
                self.check_pointer(next)?;
            }
            block = next;
        }
        Ok(Some(block))
    }

    /// Frees every block of file block `keep` and after (and indirect blocks left pointing at nothing).
    pub(crate) fn free_blocks_from(&mut self, inode: &mut Inode, keep: u64) -> Result<()> {
        let p = self.pointers();
        let mut freed = 0u32;
        for i in 0..DIRECT_BLOCKS {
            let b = inode.block(i);
            if i as u64 >= keep && b != 0 {
                self.free_block(b)?;
                inode.set_block(i, 0);
                freed += 1;
            }
        }
        let mut first = DIRECT_BLOCKS as u64;
        for (slot, depth) in [(12usize, 1u32), (13, 2), (14, 3)] {
            let span = p.pow(depth);
            let b = inode.block(slot);
            if b != 0 && keep < first + span {
                self.check_pointer(b)?;
                if self.free_tree(b, depth, keep.saturating_sub(first), &mut freed)? {
                    self.free_block(b)?;
                    inode.set_block(slot, 0);
                    freed += 1;
                }
            }
            first += span;
        }
        inode.set_sectors(inode.sectors().saturating_sub(freed * self.sectors_per_block()));
        Ok(())
    }

    /// Frees the blocks of the `depth`-level tree under `block` from its file block `start` on; whether the whole
    /// tree went (so that `block` itself can go).
    fn free_tree(&mut self, block: u32, depth: u32, start: u64, freed: &mut u32) -> Result<bool> {
        let p = self.pointers();
        let span = p.pow(depth - 1);
        let first = (start / span) as usize;
        for index in first..p as usize {
            let child = u32_at(self.cache.read(block)?, index * 4);
            if child == 0 {
                continue;
            }
            self.check_pointer(child)?;
            let child_start = if index == first { start - index as u64 * span } else { 0 };
            let gone = depth == 1 || self.free_tree(child, depth - 1, child_start, freed)?;
            if gone {
                self.free_block(child)?;
                *freed += 1;
                if start != 0 {
                    put_u32(self.cache.modify(block, Class::Meta)?, index * 4, 0);
                }
            }
        }
        Ok(start == 0)
    }
}
