//! Directories: blocks of variable-length entries (inode, record length, name length, file type, name), each
//! block's records covering it exactly. An entry is removed by merging its record into the one before it (or, first
//! in its block, by clearing its inode), and added in the slack of a record or a new block at the end.

use crate::cache::Class;
use crate::fs::Ext2;
use crate::layout::{dirent_len, put_u16, put_u32, u16_at, u32_at, Inode, DIRENT_HEADER, INDEX_FL};
use crate::{BlockDevice, Ext2Error, Result};
use alloc::string::String;
use alloc::vec::Vec;

/// One record of a directory block, checked against the block's bounds.
#[derive(Clone, Copy, Debug)]
struct Record {
    at: usize,
    ino: u32,
    rec_len: usize,
    name_len: usize,
    file_type: u8,
}

/// The records of one directory block; an error for one that breaks the format.
fn records(block: &[u8]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < block.len() {
        if block.len() - at < DIRENT_HEADER {
            return Err(Ext2Error::Corrupt("a directory record crosses its block's end"));
        }
        let rec_len = usize::from(u16_at(block, at + 4));
        let name_len = usize::from(block[at + 6]);
        if rec_len < DIRENT_HEADER
            || !rec_len.is_multiple_of(4)
            || at + rec_len > block.len()
            || DIRENT_HEADER + name_len > rec_len
        {
            return Err(Ext2Error::Corrupt("a directory record with a bad length"));
        }
        out.push(Record { at, ino: u32_at(block, at), rec_len, name_len, file_type: block[at + 7] });
        at += rec_len;
    }
    Ok(out)
}

fn name_of<'a>(block: &'a [u8], r: &Record) -> &'a [u8] {
    &block[r.at + DIRENT_HEADER..r.at + DIRENT_HEADER + r.name_len]
}

fn write_record(block: &mut [u8], at: usize, ino: u32, rec_len: usize, name: &[u8], file_type: u8) {
    put_u32(block, at, ino);
    put_u16(block, at + 4, rec_len as u16);
    block[at + 6] = name.len() as u8;
    block[at + 7] = file_type;
    block[at + DIRENT_HEADER..at + DIRENT_HEADER + name.len()].copy_from_slice(name);
}

impl<D: BlockDevice> Ext2<D> {
    /// The directory's blocks, in order (a hole in a directory is a format error).
    fn dir_blocks(&mut self, dir: &mut Inode) -> Result<Vec<u32>> {
        let count = dir.size().div_ceil(u64::from(self.sb.block_size));
        let mut blocks = Vec::new();
        for fb in 0..count {
            match self.map_block(dir, fb, false, 0)? {
                Some(b) => blocks.push(b),
                None => return Err(Ext2Error::Corrupt("a hole in a directory")),
            }
        }
        Ok(blocks)
    }

    /// The entry `name` in `dir`: its inode and file type.
    pub(crate) fn dir_find(&mut self, dir: &mut Inode, name: &[u8]) -> Result<Option<(u32, u8)>> {
        for b in self.dir_blocks(dir)? {
            let block = self.cache.read(b)?;
            for r in records(block)? {
                if r.ino != 0 && name_of(block, &r) == name {
                    return Ok(Some((r.ino, r.file_type)));
                }
            }
        }
        Ok(None)
    }

    /// Every entry but "." and "..": name, inode, file type.
    pub(crate) fn dir_list(&mut self, dir: &mut Inode) -> Result<Vec<(String, u32, u8)>> {
        let mut out = Vec::new();
        for b in self.dir_blocks(dir)? {
            let block = self.cache.read(b)?;
            for r in records(block)? {
                let name = name_of(block, &r);
                if r.ino != 0 && name != b"." && name != b".." {
                    out.push((String::from_utf8_lossy(name).into_owned(), r.ino, r.file_type));
                }
            }
        }
        Ok(out)
    }

    /// Adds `name` -> `ino` to directory `dir_ino` (whose inode is `dir`, written back by the caller).
    pub(crate) fn dir_add(&mut self, dir_ino: u32, dir: &mut Inode, name: &[u8], ino: u32, ft: u8) -> Result<()> {
        let need = dirent_len(name.len());
        self.drop_index(dir);
        for b in self.dir_blocks(dir)? {
            let recs = records(self.cache.read(b)?)?;
            for r in recs {
                let used = if r.ino == 0 { 0 } else { dirent_len(r.name_len) };
                if r.rec_len - used >= need {
                    let block = self.cache.modify(b, Class::Data)?;
                    if r.ino == 0 {
                        write_record(block, r.at, ino, r.rec_len, name, ft);
                    } else {
                        put_u16(block, r.at + 4, used as u16);
                        write_record(block, r.at + used, ino, r.rec_len - used, name, ft);
                    }
                    return Ok(());
                }
            }
        }
        // No room: a new block at the end.
        let bs = u64::from(self.sb.block_size);
        let fb = dir.size() / bs;
        let goal = self.inode_group_start(dir_ino);
        let b = self.map_block(dir, fb, true, goal)?.ok_or(Ext2Error::NoSpace)?;
        let block = self.cache.modify(b, Class::Data)?;
        write_record(block, 0, ino, bs as usize, name, ft);
        dir.set_size((fb + 1) * bs);
        Ok(())
    }

    /// Points the existing entry `name` at `ino` instead (rename over a name, a moved directory's "..").
    pub(crate) fn dir_set(&mut self, dir: &mut Inode, name: &[u8], ino: u32, ft: u8) -> Result<()> {
        self.drop_index(dir);
        for b in self.dir_blocks(dir)? {
            let recs = records(self.cache.read(b)?)?;
            let block_name = |blk: &[u8], r: &Record| name_of(blk, r) == name;
            let found = {
                let blk = self.cache.read(b)?;
                recs.iter().find(|r| r.ino != 0 && block_name(blk, r)).copied()
            };
            if let Some(r) = found {
                let block = self.cache.modify(b, Class::Data)?;
                put_u32(block, r.at, ino);
                block[r.at + 7] = ft;
                return Ok(());
            }
        }
        Err(Ext2Error::NotFound)
    }

    /// Removes the entry `name`; the inode it named.
    pub(crate) fn dir_remove(&mut self, dir: &mut Inode, name: &[u8]) -> Result<u32> {
        self.drop_index(dir);
        for b in self.dir_blocks(dir)? {
            let recs = records(self.cache.read(b)?)?;
            let found = {
                let blk = self.cache.read(b)?;
                recs.iter().position(|r| r.ino != 0 && name_of(blk, r) == name)
            };
            if let Some(i) = found {
                let r = recs[i];
                let block = self.cache.modify(b, Class::Data)?;
                if i == 0 {
                    put_u32(block, r.at, 0);
                } else {
                    let prev = recs[i - 1];
                    put_u16(block, prev.at + 4, (prev.rec_len + r.rec_len) as u16);
                }
                return Ok(r.ino);
            }
        }
        Err(Ext2Error::NotFound)
    }

    /// Writes the first block of a new directory: "." and "..".
    pub(crate) fn dir_init(&mut self, block: u32, ino: u32, parent: u32) -> Result<()> {
        let bs = self.sb.block_size as usize;
        let b = self.cache.modify(block, Class::Data)?;
        let dot = dirent_len(1);
        write_record(b, 0, ino, dot, b".", crate::layout::FT_DIR);
        write_record(b, dot, parent, bs - dot, b"..", crate::layout::FT_DIR);
        Ok(())
    }

    /// A directory Kiln changes loses its hashed index (as ext2 drivers without one do); e2fsck rebuilds it.
    fn drop_index(&mut self, dir: &mut Inode) {
        if dir.flags() & INDEX_FL != 0 {
            dir.set_flags(dir.flags() & !INDEX_FL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_bounds_checked() {
        let mut block = alloc::vec![0u8; 64];
        write_record(&mut block, 0, 2, 12, b".", 2);
        write_record(&mut block, 12, 2, 52, b"..", 2);
        assert_eq!(records(&block).unwrap().len(), 2);
        put_u16(&mut block, 16, 60); // past the block's end
        assert!(records(&block).is_err());
        put_u16(&mut block, 16, 6); // shorter than a header
        assert!(records(&block).is_err());
    }
}
