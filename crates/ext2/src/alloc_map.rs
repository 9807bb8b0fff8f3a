//! Allocating and freeing blocks and inodes: a bit per block (per inode) in each group's bitmap, and the free counts
//! in the group descriptors and the superblock kept in step.

use crate::cache::Class;
use crate::fs::Ext2;
use crate::{BlockDevice, Ext2Error, Result};

impl<D: BlockDevice> Ext2<D> {
    /// Takes a free block, searching from `goal`'s group on; the block is zeroed in the cache as `class`.
    pub(crate) fn alloc_block(&mut self, goal: u32, class: Class) -> Result<u32> {
        if self.sb.free_blocks == 0 {
            return Err(Ext2Error::NoSpace);
        }
        let groups = self.groups.len() as u32;
        let start = goal.saturating_sub(self.sb.first_data_block) / self.sb.blocks_per_group;
        for i in 0..groups {
            let g = (start.min(groups - 1) + i) % groups;
            if self.groups[g as usize].free_blocks == 0 {
                continue;
            }
            let base = self.sb.first_data_block + g * self.sb.blocks_per_group;
            let count = self.sb.blocks_per_group.min(self.sb.blocks_count - base);
            let bitmap = self.groups[g as usize].block_bitmap;
            let freed = &self.freed_since_sync;
            let reusable = |bit: u32| !freed.contains(&(base + bit));
            let Some(bit) = take_bit(self.cache.modify(bitmap, Class::Meta)?, count, reusable) else { continue };
            self.groups[g as usize].free_blocks -= 1;
            self.sb.free_blocks -= 1;
            self.meta_changed = true;
            let block = base + bit;
            self.cache.fresh(block, class);
            return Ok(block);
        }
        if !self.freed_since_sync.is_empty() {
            // Every free block was freed since the last sync: sync, and they may be used again.
            self.sync()?;
            return self.alloc_block(goal, class);
        }
        Err(Ext2Error::NoSpace)
    }

    pub(crate) fn free_block(&mut self, block: u32) -> Result<()> {
        if block < self.sb.first_data_block || block >= self.sb.blocks_count {
            return Err(Ext2Error::Corrupt("a block pointer outside the volume"));
        }
        let rel = block - self.sb.first_data_block;
        let (g, bit) = ((rel / self.sb.blocks_per_group) as usize, rel % self.sb.blocks_per_group);
        let bitmap = self.groups[g].block_bitmap;
        if clear_bit(self.cache.modify(bitmap, Class::Meta)?, bit) {
            self.freed_since_sync.insert(block);
            // Saturating: the counts are the volume's, whatever it claims (e2fsck puts wrong ones right).
            self.groups[g].free_blocks = self.groups[g].free_blocks.saturating_add(1);
            self.sb.free_blocks = self.sb.free_blocks.saturating_add(1);
            self.meta_changed = true;
        }
        Ok(())
    }

    /// Takes a free inode, searching from `near`'s group on.
    pub(crate) fn alloc_inode(&mut self, near: u32, dir: bool) -> Result<u32> {
        if self.sb.free_inodes == 0 {
            return Err(Ext2Error::NoSpace);
        }
        let groups = self.groups.len() as u32;
        let start = near.saturating_sub(1) / self.sb.inodes_per_group;
        for i in 0..groups {
            let g = (start.min(groups - 1) + i) % groups;
            if self.groups[g as usize].free_inodes == 0 {
                continue;
            }
            let (bitmap, count) = (self.groups[g as usize].inode_bitmap, self.sb.inodes_per_group);
            let Some(bit) = take_bit(self.cache.modify(bitmap, Class::Meta)?, count, |_| true) else { continue };
            let ino = g * self.sb.inodes_per_group + bit + 1;
            if ino < self.sb.first_ino {
                // A reserved inode marked free: leave it to e2fsck rather than hand it out.
                continue;
            }
            let group = &mut self.groups[g as usize];
            group.free_inodes -= 1;
            if dir {
                group.used_dirs += 1;
            }
            self.sb.free_inodes -= 1;
            self.meta_changed = true;
            return Ok(ino);
        }
        Err(Ext2Error::NoSpace)
    }

    pub(crate) fn free_inode(&mut self, ino: u32, dir: bool) -> Result<()> {
        let (g, bit) = (((ino - 1) / self.sb.inodes_per_group) as usize, (ino - 1) % self.sb.inodes_per_group);
        let bitmap = self.groups[g].inode_bitmap;
        if clear_bit(self.cache.modify(bitmap, Class::Meta)?, bit) {
            let group = &mut self.groups[g];
            group.free_inodes = group.free_inodes.saturating_add(1);
            if dir {
                group.used_dirs = group.used_dirs.saturating_sub(1);
            }
            self.sb.free_inodes = self.sb.free_inodes.saturating_add(1);
            self.meta_changed = true;
        }
        Ok(())
    }
}

/// Sets the first clear bit among the first `count` that `usable` accepts; its index.
fn take_bit(bitmap: &mut [u8], count: u32, usable: impl Fn(u32) -> bool) -> Option<u32> {
    let bytes = (count as usize).div_ceil(8).min(bitmap.len());
    for (i, byte) in bitmap[..bytes].iter_mut().enumerate() {
        if *byte == 0xff {
            continue;
        }
        for bit in 0..8 {
            let index = i as u32 * 8 + bit;
            if index >= count {
                return None;
            }
            if *byte & (1 << bit) == 0 && usable(index) {
                *byte |= 1 << bit;
                return Some(index);
            }
        }
    }
    None
}

/// Clears bit `index`; whether it was set.
fn clear_bit(bitmap: &mut [u8], index: u32) -> bool {
    let (byte, mask) = ((index / 8) as usize, 1u8 << (index % 8));
    let was = bitmap[byte] & mask != 0;
    bitmap[byte] &= !mask;
    was
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_taken_in_order_and_within_the_count() {
        let mut map = [0b0000_0111u8, 0];
        assert_eq!(take_bit(&mut map, 16, |_| true), Some(3));
        assert_eq!(map[0], 0b0000_1111);
        assert_eq!(take_bit(&mut map, 16, |i| i != 4 && i != 5), Some(6), "bits refused are skipped");
        let mut full = [0xffu8, 0b0000_0001];
        assert_eq!(take_bit(&mut full, 9, |_| true), None);
        assert_eq!(take_bit(&mut full, 10, |_| true), Some(9));
        assert!(clear_bit(&mut full, 9));
        assert!(!clear_bit(&mut full, 9));
    }
}
