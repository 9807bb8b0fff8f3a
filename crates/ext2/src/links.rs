//! Symbolic links, hard links and FIFOs. A symbolic link's target shorter than the 60 bytes of block pointers is
//! kept in them (a "fast" link, no blocks); a longer one in one data block, as Linux's ext2 does, so that e2fsck and
//! the host's kernel read both.

use crate::cache::Class;
use crate::fs::check_name;
use crate::layout::*;
use crate::{BlockDevice, Ext2, Ext2Error, Result};
use alloc::vec::Vec;

/// Bytes of block pointers in an inode, where a fast link's target lives.
const FAST_LINK_MAX: usize = 60;

impl<D: BlockDevice> Ext2<D> {
    /// Makes a symbolic link `name` in `dir` whose target is `target`; its inode.
    pub fn symlink(&mut self, dir: u32, name: &str, target: &[u8]) -> Result<u32> {
        if target.is_empty() || target.contains(&0) {
            return Err(Ext2Error::Invalid);
        }
        if target.len() >= self.sb.block_size as usize {
            return Err(Ext2Error::NameTooLong);
        }
        let mut inode = Inode::new(S_IFLNK | 0o777, self.now());
        inode.set_size(target.len() as u64);
        self.make(dir, name, FT_SYMLINK, &mut inode, |fs, ino, inode_ref| {
            if target.len() < FAST_LINK_MAX {
                inode_ref.raw[40..40 + target.len()].copy_from_slice(target);
                return Ok(());
            }
            let goal = fs.inode_group_start(ino);
            let block = fs.map_block(inode_ref, 0, true, goal)?.ok_or(Ext2Error::NoSpace)?;
            let data = fs.cache.modify(block, Class::Data)?;
            data.fill(0);
            data[..target.len()].copy_from_slice(target);
            Ok(())
        })
    }

    /// Makes a FIFO `name` in `dir` with permission bits `perm`; its inode.
    pub fn mkfifo(&mut self, dir: u32, name: &str, perm: u32) -> Result<u32> {
        let mut inode = Inode::new(S_IFIFO | (perm & 0o7777) as u16, self.now());
        self.make(dir, name, FT_FIFO, &mut inode, |_, _, _| Ok(()))
    }

    /// A new inode `inode` named `name` in `dir`, filled by `fill` once it has a number.
    fn make(
        &mut self,
        dir: u32,
        name: &str,
        ft: u8,
        inode: &mut Inode,
        fill: impl FnOnce(&mut Self, u32, &mut Inode) -> Result<()>,
    ) -> Result<u32> {
        let name = check_name(name)?;
        let mut d = self.dir_inode(dir)?;
        if self.dir_find(&mut d, name)?.is_some() {
            return Err(Ext2Error::Exists);
        }
        let ino = self.alloc_inode(dir, false)?;
        if let Err(e) = fill(self, ino, inode) {
            if inode.sectors() != 0 {
                self.free_blocks_from(inode, 0)?;
            }
            self.free_inode(ino, false)?;
            return Err(e);
        }
        self.write_new_inode(ino, inode)?;
        if let Err(e) = self.dir_add(dir, &mut d, name, ino, ft) {
            if inode.sectors() != 0 {
                self.free_blocks_from(inode, 0)?;
            }
            self.free_inode(ino, false)?;
            return Err(e);
        }
        d.touch(self.now());
        self.write_inode(dir, &d)?;
        Ok(ino)
    }

    /// The target of the symbolic link `ino`; Invalid for anything else.
    pub fn read_link(&mut self, ino: u32) -> Result<Vec<u8>> {
        let mut inode = self.read_inode(ino)?;
        if !inode.is_symlink() {
            return Err(Ext2Error::Invalid);
        }
        let len = inode.size() as usize;
        if inode.sectors() == 0 {
            if len >= FAST_LINK_MAX {
                return Err(Ext2Error::Corrupt("a fast symbolic link longer than its inode"));
            }
            return Ok(inode.raw[40..40 + len].to_vec());
        }
        if len >= self.sb.block_size as usize {
            return Err(Ext2Error::Corrupt("a symbolic link longer than a block"));
        }
        let block =
            self.map_block(&mut inode, 0, false, 0)?.ok_or(Ext2Error::Corrupt("a slow link without a block"))?;
        Ok(self.cache.read(block)?[..len].to_vec())
    }

    /// Gives the file `ino` (not a directory) the further name `name` in `dir` (a hard link).
    pub fn link(&mut self, ino: u32, dir: u32, name: &str) -> Result<()> {
        let name = check_name(name)?;
        let mut inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(Ext2Error::IsDir);
        }
        if inode.links() == u16::MAX {
            return Err(Ext2Error::TooManyLinks);
        }
        let mut d = self.dir_inode(dir)?;
        if self.dir_find(&mut d, name)?.is_some() {
            return Err(Ext2Error::Exists);
        }
        let ft = match inode.mode() & S_IFMT {
            S_IFREG => FT_REG,
            S_IFLNK => FT_SYMLINK,
            S_IFIFO => FT_FIFO,
            _ => 0,
        };
        // The entry (a directory block, written first at a sync) before the count (metadata): a crash between
        // leaves a count one short, which e2fsck sets right.
        self.dir_add(dir, &mut d, name, ino, ft)?;
        let now = self.now();
        d.touch(now);
        self.write_inode(dir, &d)?;
        inode.set_links(inode.links() + 1);
        inode.set_ctime(now);
        self.write_inode(ino, &inode)
    }
}
