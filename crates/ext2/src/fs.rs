//! A mounted volume: the superblock and group descriptors in memory, blocks through the cache, and the operations
//! the library OS's file syscalls need, by inode number and name (path walking is the caller's).

use crate::cache::{Cache, Class, READ_AHEAD};
use crate::layout::*;
use crate::{BlockDevice, Ext2Error, Result};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

pub const ROOT_INO: u32 = 2;
/// Size of the inode's extra fields Kiln writes in inodes larger than 128 bytes (as mkfs.ext2 does for the root).
const EXTRA_ISIZE: u16 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    /// Device nodes and sockets: listed and stat'ed, not opened.
    Other,
}

#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub ino: u32,
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
    pub size: u64,
    pub links: u32,
    pub atime: u32,
    pub mtime: u32,
    /// 512-byte sectors held.
    pub sectors: u64,
}

pub struct Ext2<D> {
    pub(crate) cache: Cache<D>,
    pub(crate) sb: Superblock,
    pub(crate) groups: Vec<GroupDesc>,
    /// Counters in the superblock or group descriptors changed since the last sync.
    pub(crate) meta_changed: bool,
    clock: fn() -> u32,
    /// Open handles per inode, and inodes unlinked while open (freed when the last handle goes).
    open: BTreeMap<u32, u32>,
    orphans: BTreeSet<u32>,
    /// Blocks freed since the last sync, not handed out again before it: until then the metadata on the device may
    /// still point at them, and new data written there first (data goes before metadata) would land in a file that
    /// has not yet let go of them.
    pub(crate) freed_since_sync: BTreeSet<u32>,
}

pub(crate) fn check_name(name: &str) -> Result<&[u8]> {
    let name = name.as_bytes();
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return Err(Ext2Error::Invalid);
    }
    if name.len() > 255 {
        return Err(Ext2Error::NameTooLong);
    }
    Ok(name)
}

impl<D: BlockDevice> Ext2<D> {
    /// Mounts the ext2 filesystem on `dev` (`device_bytes` long), keeping up to `cache_blocks` blocks in memory;
    /// `clock` gives the time for timestamps (seconds since the epoch).
    pub fn mount(mut dev: D, device_bytes: u64, cache_blocks: usize, clock: fn() -> u32) -> Result<Self> {
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        if device_bytes < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64 {
            return Err(Ext2Error::Corrupt("the device is too small to hold a superblock"));
        }
        dev.read(SUPERBLOCK_OFFSET, &mut raw)?;
        let sb = Superblock::parse(&raw, device_bytes)?;
        let mut fs = Ext2 {
            cache: Cache::new(dev, sb.block_size, cache_blocks.max(64)),
            sb,
            groups: Vec::new(),
            meta_changed: false,
            clock,
            open: BTreeMap::new(),
            orphans: BTreeSet::new(),
            freed_since_sync: BTreeSet::new(),
        };
        let count = fs.sb.groups() as usize;
        if u64::from(fs.sb.inodes_count) > count as u64 * u64::from(fs.sb.inodes_per_group) {
            return Err(Ext2Error::Corrupt("more inodes than the groups hold"));
        }
        let bs = fs.sb.block_size as usize;
        let per_block = bs / GROUP_DESC_SIZE;
        for i in 0..count {
            let block = fs.gdt_block(i / per_block);
            let at = (i % per_block) * GROUP_DESC_SIZE;
            let g = GroupDesc::parse(&fs.cache.read(block)?[at..at + GROUP_DESC_SIZE]);
            let inside = |b: u64| b >= u64::from(fs.sb.first_data_block) && b < u64::from(fs.sb.blocks_count);
            let table_bytes = u64::from(fs.sb.inodes_per_group) * u64::from(fs.sb.inode_size);
            let table_end = u64::from(g.inode_table) + table_bytes.div_ceil(u64::from(fs.sb.block_size));
            let fits = inside(g.block_bitmap.into()) && inside(g.inode_bitmap.into()) && inside(table_end - 1);
            if !fits || g.inode_table == 0 {
                return Err(Ext2Error::Corrupt("a group descriptor points outside the volume"));
            }
            fs.groups.push(g);
        }
        if !fs.read_inode(ROOT_INO)?.is_dir() {
            return Err(Ext2Error::Corrupt("the root inode is not a directory"));
        }
        Ok(fs)
    }

    fn gdt_block(&self, index: usize) -> u32 {
        self.sb.first_data_block + 1 + index as u32
    }

    pub(crate) fn inode_group_start(&self, ino: u32) -> u32 {
        self.sb.first_data_block + (ino - 1) / self.sb.inodes_per_group * self.sb.blocks_per_group
    }

    /// The block holding inode `ino` and the inode's offset in it.
    fn inode_place(&self, ino: u32) -> Result<(u32, usize)> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(Ext2Error::Corrupt("an inode number outside the volume"));
        }
        let index = (ino - 1) % self.sb.inodes_per_group;
        let group = &self.groups[((ino - 1) / self.sb.inodes_per_group) as usize];
        let byte = u64::from(index) * u64::from(self.sb.inode_size);
        let bs = u64::from(self.sb.block_size);
        Ok((group.inode_table + (byte / bs) as u32, (byte % bs) as usize))
    }

    pub(crate) fn read_inode(&mut self, ino: u32) -> Result<Inode> {
        let (block, at) = self.inode_place(ino)?;
        let bytes = self.cache.read(block)?;
        let mut raw = [0u8; 128];
        raw.copy_from_slice(&bytes[at..at + 128]);
        Ok(Inode { raw })
    }

    pub(crate) fn write_inode(&mut self, ino: u32, inode: &Inode) -> Result<()> {
        let (block, at) = self.inode_place(ino)?;
        self.cache.modify(block, Class::Meta)?[at..at + 128].copy_from_slice(&inode.raw);
        Ok(())
    }

    /// Writes a new inode over the whole of its slot (extra fields included).
    pub(crate) fn write_new_inode(&mut self, ino: u32, inode: &Inode) -> Result<()> {
        let (block, at) = self.inode_place(ino)?;
        let size = usize::from(self.sb.inode_size);
        let bytes = &mut self.cache.modify(block, Class::Meta)?[at..at + size];
        bytes.fill(0);
        bytes[..128].copy_from_slice(&inode.raw);
        if size > 128 {
            put_u16(bytes, 128, EXTRA_ISIZE.min(size as u16 - 128));
        }
        Ok(())
    }

    pub(crate) fn now(&self) -> u32 {
        (self.clock)()
    }

    pub(crate) fn dir_inode(&mut self, ino: u32) -> Result<Inode> {
        let inode = self.read_inode(ino)?;
        if !inode.is_dir() {
            return Err(Ext2Error::NotDir);
        }
        Ok(inode)
    }

    pub fn stat(&mut self, ino: u32) -> Result<Stat> {
        let i = self.read_inode(ino)?;
        Ok(Stat {
            ino,
            mode: u32::from(i.mode()),
            size: i.size(),
            links: u32::from(i.links()),
            atime: i.atime(),
            mtime: i.mtime(),
            sectors: u64::from(i.sectors()),
        })
    }

    pub fn file_type(&mut self, ino: u32) -> Result<FileType> {
        let i = self.read_inode(ino)?;
        Ok(if i.is_dir() {
            FileType::Directory
        } else if i.is_reg() {
            FileType::Regular
        } else if i.is_symlink() {
            FileType::Symlink
        } else if i.mode() & S_IFMT == S_IFIFO {
            FileType::Fifo
        } else {
            FileType::Other
        })
    }

    /// The inode `name` names in directory `dir`.
    pub fn lookup(&mut self, dir: u32, name: &str) -> Result<u32> {
        let mut d = self.dir_inode(dir)?;
        let found = self.dir_find(&mut d, name.as_bytes())?;
        found.map(|(ino, _)| ino).ok_or(Ext2Error::NotFound)
    }

    /// Entries of directory `dir` but "." and "..": name, inode, type.
    pub fn read_dir(&mut self, dir: u32) -> Result<Vec<(String, u32, FileType)>> {
        let mut d = self.dir_inode(dir)?;
        let entries = self.dir_list(&mut d)?;
        let mut out = Vec::with_capacity(entries.len());
        for (name, ino, _) in entries {
            out.push((name, ino, self.file_type(ino)?));
        }
        Ok(out)
    }

    /// Reads from `offset` into `buf`; the bytes read (fewer at the end of the file).
    pub fn read(&mut self, ino: u32, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(Ext2Error::IsDir);
        }
        if !inode.is_reg() {
            return Err(Ext2Error::Unsupported("reading symbolic links or device nodes"));
        }
        let size = inode.size();
        if offset >= size {
            return Ok(0);
        }
        let n = (size - offset).min(buf.len() as u64) as usize;
        let bs = u64::from(self.sb.block_size);
        let last_fb = (size - 1) / bs;
        let mut done = 0;
        while done < n {
            let pos = offset + done as u64;
            let (fb, within) = (pos / bs, (pos % bs) as usize);
            let len = (bs as usize - within).min(n - done);
            let out = &mut buf[done..done + len];
            match self.map_block(&mut inode, fb, false, 0)? {
                None => out.fill(0),
                Some(b) => {
                    let ahead = (last_fb - fb).min(u64::from(READ_AHEAD)) as u32;
                    let end = self.sb.blocks_count;
                    out.copy_from_slice(&self.cache.read_ahead(b, ahead, end)?[within..within + len]);
                }
            }
            done += len;
        }
        Ok(n)
    }

    /// Writes `data` at `offset`, growing the file as needed; the bytes written (fewer only if the volume filled
    /// up after some were).
    pub fn write(&mut self, ino: u32, offset: u64, data: &[u8]) -> Result<usize> {
        let mut inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(Ext2Error::IsDir);
        }
        if !inode.is_reg() {
            return Err(Ext2Error::Unsupported("writing symbolic links or device nodes"));
        }
        let before = inode.raw;
        let bs = u64::from(self.sb.block_size);
        let end = offset.checked_add(data.len() as u64).ok_or(Ext2Error::FileTooBig)?;
        if end > self.max_file_blocks() * bs {
            return Err(Ext2Error::FileTooBig);
        }
        let mut done = 0usize;
        let mut failure = None;
        let mut goal = self.inode_group_start(ino);
        while done < data.len() {
            let pos = offset + done as u64;
            let (fb, within) = (pos / bs, (pos % bs) as usize);
            let len = (bs as usize - within).min(data.len() - done);
            if fb > 0 {
                if let Some(prev) = self.map_block(&mut inode, fb - 1, false, 0)? {
                    goal = prev + 1;
                }
            }
            let block = match self.map_block(&mut inode, fb, true, goal) {
                Ok(b) => b.ok_or(Ext2Error::NoSpace)?,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            self.cache.modify(block, Class::Data)?[within..within + len].copy_from_slice(&data[done..done + len]);
            done += len;
        }
        let reached = offset + done as u64;
        if reached > inode.size() {
            if reached > u64::from(u32::MAX) {
                self.sb.set_large_file();
                self.meta_changed = true;
            }
            inode.set_size(reached);
        }
        inode.touch(self.now());
        // An overwrite within the same second changes no metadata: then a sync has data alone to write (one flush).
        if inode.raw != before {
            self.write_inode(ino, &inode)?;
        }
        self.relieve()?;
        match failure {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// Syncs when changed blocks fill the cache (writes must not grow memory without bound).
    fn relieve(&mut self) -> Result<()> {
        if self.cache.dirty_blocks() >= self.cache.limit / 2 {
            self.sync()?;
        }
        Ok(())
    }

    pub fn truncate(&mut self, ino: u32, len: u64) -> Result<()> {
        let mut inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(Ext2Error::IsDir);
        }
        if !inode.is_reg() {
            return Err(Ext2Error::Invalid);
        }
        let bs = u64::from(self.sb.block_size);
        if len > self.max_file_blocks() * bs {
            return Err(Ext2Error::FileTooBig);
        }
        if len < inode.size() {
            self.free_blocks_from(&mut inode, len.div_ceil(bs))?;
            // The rest of the last block must read as zeros if the file grows again.
            if !len.is_multiple_of(bs) {
                if let Some(b) = self.map_block(&mut inode, len / bs, false, 0)? {
                    self.cache.modify(b, Class::Data)?[(len % bs) as usize..].fill(0);
                }
            }
        } else if len > u64::from(u32::MAX) {
            self.sb.set_large_file();
            self.meta_changed = true;
        }
        inode.set_size(len);
        inode.touch(self.now());
        self.write_inode(ino, &inode)
    }

    /// Creates an empty regular file `name` in `dir`; its inode.
    pub fn create(&mut self, dir: u32, name: &str, perm: u32) -> Result<u32> {
        let name = check_name(name)?;
        let mut d = self.dir_inode(dir)?;
        if self.dir_find(&mut d, name)?.is_some() {
            return Err(Ext2Error::Exists);
        }
        let ino = self.alloc_inode(dir, false)?;
        let now = self.now();
        self.write_new_inode(ino, &Inode::new(S_IFREG | (perm & 0o7777) as u16, now))?;
        if let Err(e) = self.dir_add(dir, &mut d, name, ino, FT_REG) {
            self.free_inode(ino, false)?;
            return Err(e);
        }
        d.touch(now);
        self.write_inode(dir, &d)?;
        Ok(ino)
    }

    pub fn mkdir(&mut self, dir: u32, name: &str, perm: u32) -> Result<u32> {
        let name = check_name(name)?;
        let mut d = self.dir_inode(dir)?;
        if self.dir_find(&mut d, name)?.is_some() {
            return Err(Ext2Error::Exists);
        }
        if d.links() == u16::MAX {
            return Err(Ext2Error::NoSpace);
        }
        let ino = self.alloc_inode(dir, true)?;
        let now = self.now();
        let mut inode = Inode::new(S_IFDIR | (perm & 0o7777) as u16, now);
        inode.set_links(2);
        let goal = self.inode_group_start(ino);
        let block = match self.map_block(&mut inode, 0, true, goal) {
            Ok(Some(b)) => b,
            Ok(None) | Err(_) => {
                self.free_inode(ino, true)?;
                return Err(Ext2Error::NoSpace);
            }
        };
        self.dir_init(block, ino, dir)?;
        inode.set_size(u64::from(self.sb.block_size));
        self.write_new_inode(ino, &inode)?;
        self.dir_add(dir, &mut d, name, ino, FT_DIR)?;
        d.set_links(d.links() + 1);
        d.touch(now);
        self.write_inode(dir, &d)?;
        Ok(ino)
    }

    /// Removes the file `name` from `dir`; its inode goes once no link and no open handle is left.
    pub fn unlink(&mut self, dir: u32, name: &str) -> Result<()> {
        let name = check_name(name)?;
        let mut d = self.dir_inode(dir)?;
        let (ino, _) = self.dir_find(&mut d, name)?.ok_or(Ext2Error::NotFound)?;
        let mut inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(Ext2Error::IsDir);
        }
        self.dir_remove(&mut d, name)?;
        d.touch(self.now());
        self.write_inode(dir, &d)?;
        inode.set_links(inode.links().saturating_sub(1));
        self.write_inode(ino, &inode)?;
        self.drop_if_unlinked(ino)
    }

    pub fn rmdir(&mut self, dir: u32, name: &str) -> Result<()> {
        let name = check_name(name)?;
        let mut d = self.dir_inode(dir)?;
        let (ino, _) = self.dir_find(&mut d, name)?.ok_or(Ext2Error::NotFound)?;
        let mut target = self.dir_inode(ino)?;
        if !self.dir_list(&mut target)?.is_empty() {
            return Err(Ext2Error::NotEmpty);
        }
        self.dir_remove(&mut d, name)?;
        d.set_links(d.links().saturating_sub(1));
        d.touch(self.now());
        self.write_inode(dir, &d)?;
        target.set_links(0);
        self.write_inode(ino, &target)?;
        self.drop_if_unlinked(ino)
    }

    /// Moves `from_name` in `from_dir` to `to_name` in `to_dir`, replacing what is there (a file by a file, an
    /// empty directory by a directory). The new name is written before the old one goes, so a crash in between
    /// leaves two names (which e2fsck counts right), never none.
    pub fn rename(&mut self, from_dir: u32, from_name: &str, to_dir: u32, to_name: &str) -> Result<()> {
        let (from_name, to_name) = (check_name(from_name)?, check_name(to_name)?);
        let mut fd = self.dir_inode(from_dir)?;
        let (ino, ft) = self.dir_find(&mut fd, from_name)?.ok_or(Ext2Error::NotFound)?;
        let moving_dir = self.read_inode(ino)?.is_dir();
        let mut td = self.dir_inode(to_dir)?;
        let existing = self.dir_find(&mut td, to_name)?;
        if existing.is_some_and(|(target, _)| target == ino) {
            return Ok(());
        }
        let now = self.now();
        if let Some((target, _)) = existing {
            let mut t = self.read_inode(target)?;
            match (t.is_dir(), moving_dir) {
                (true, false) => return Err(Ext2Error::IsDir),
                (false, true) => return Err(Ext2Error::NotDir),
                (true, true) if !self.dir_list(&mut t)?.is_empty() => return Err(Ext2Error::NotEmpty),
                _ => {}
            }
            self.dir_set(&mut td, to_name, ino, ft)?;
            if t.is_dir() {
                t.set_links(0);
                td.set_links(td.links().saturating_sub(1));
            } else {
                t.set_links(t.links().saturating_sub(1));
            }
            self.write_inode(target, &t)?;
            self.drop_if_unlinked(target)?;
        } else {
            self.dir_add(to_dir, &mut td, to_name, ino, ft)?;
        }
        td.touch(now);
        if from_dir == to_dir {
            self.dir_remove(&mut td, from_name)?;
            return self.write_inode(to_dir, &td);
        }
        self.dir_remove(&mut fd, from_name)?;
        fd.touch(now);
        if moving_dir {
            let mut moved = self.read_inode(ino)?;
            self.dir_set(&mut moved, b"..", to_dir, FT_DIR)?;
            self.write_inode(ino, &moved)?;
            fd.set_links(fd.links().saturating_sub(1));
            td.set_links(td.links() + 1);
        }
        self.write_inode(to_dir, &td)?;
        self.write_inode(from_dir, &fd)
    }

    pub fn set_perm(&mut self, ino: u32, perm: u32) -> Result<()> {
        let mut i = self.read_inode(ino)?;
        i.set_mode((i.mode() & S_IFMT) | (perm & 0o7777) as u16);
        self.write_inode(ino, &i)
    }

    /// Sets the access and modification times that are `Some` (utimensat); the change time becomes now.
    pub fn set_times(&mut self, ino: u32, atime: Option<u32>, mtime: Option<u32>) -> Result<()> {
        let mut i = self.read_inode(ino)?;
        if let Some(secs) = atime {
            i.set_atime(secs);
        }
        if let Some(secs) = mtime {
            i.set_mtime(secs);
        }
        i.set_ctime(self.now());
        self.write_inode(ino, &i)
    }

    /// A handle to `ino` was opened: it outlives an unlink until [`Ext2::close`].
    pub fn open(&mut self, ino: u32) {
        *self.open.entry(ino).or_insert(0) += 1;
    }

    pub fn close(&mut self, ino: u32) -> Result<()> {
        if let Some(n) = self.open.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&ino);
                if self.orphans.remove(&ino) {
                    self.release(ino)?;
                }
            }
        }
        Ok(())
    }

    fn drop_if_unlinked(&mut self, ino: u32) -> Result<()> {
        if self.read_inode(ino)?.links() != 0 {
            return Ok(());
        }
        if self.open.contains_key(&ino) {
            self.orphans.insert(ino);
            return Ok(());
        }
        self.release(ino)
    }

    /// Frees an inode no name refers to, and its blocks.
    fn release(&mut self, ino: u32) -> Result<()> {
        let mut inode = self.read_inode(ino)?;
        let dir = inode.is_dir();
        // A fast symbolic link keeps its target where block pointers would be: it holds no blocks.
        if inode.is_reg() || dir || (inode.is_symlink() && inode.sectors() != 0) {
            self.free_blocks_from(&mut inode, 0)?;
        }
        inode.set_size(0);
        inode.set_dtime(self.now());
        self.write_inode(ino, &inode)?;
        self.free_inode(ino, dir)
    }

    /// Whether the volume was cleanly unmounted when it was mounted: if not, whoever wrote it last stopped without
    /// [`Ext2::unmount`] (a killed VM), and `e2fsck` should check it before it is written again.
    pub fn was_clean(&self) -> bool {
        self.sb.state & STATE_VALID != 0
    }

    /// Records on the device that the volume is in use (as Linux does at mount): until [`Ext2::unmount`], e2fsck
    /// and the next mount see that it was not cleanly unmounted.
    pub fn mark_in_use(&mut self) -> Result<()> {
        self.sb.state &= !STATE_VALID;
        self.meta_changed = true;
        self.sync()
    }

    /// Frees the files unlinked while still open (as the end of the program closes everything), syncs, and records
    /// a clean unmount.
    pub fn unmount(&mut self) -> Result<()> {
        for ino in core::mem::take(&mut self.orphans) {
            self.release(ino)?;
        }
        self.open.clear();
        self.sync()?;
        self.sb.state |= STATE_VALID;
        self.meta_changed = true;
        self.sync()
    }

    /// Writes everything changed to the device, data before metadata, each followed by a flush: when this returns,
    /// every file is on the device as the program left it.
    pub fn sync(&mut self) -> Result<()> {
        if self.meta_changed {
            let per_block = self.sb.block_size as usize / GROUP_DESC_SIZE;
            for i in 0..self.groups.len() {
                let g = self.groups[i];
                let at = (i % per_block) * GROUP_DESC_SIZE;
                let block = self.gdt_block(i / per_block);
                g.write(&mut self.cache.modify(block, Class::Meta)?[at..at + GROUP_DESC_SIZE]);
            }
            let bs = u64::from(self.sb.block_size);
            let (block, at) = ((SUPERBLOCK_OFFSET / bs) as u32, (SUPERBLOCK_OFFSET % bs) as usize);
            let raw = self.sb.serialize();
            self.cache.modify(block, Class::Meta)?[at..at + SUPERBLOCK_SIZE].copy_from_slice(&raw);
            self.meta_changed = false;
        }
        self.cache.sync()?;
        self.freed_since_sync.clear();
        Ok(())
    }

    /// Total and free bytes, and total and free inodes (for statfs).
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        let bs = u64::from(self.sb.block_size);
        (
            u64::from(self.sb.blocks_count) * bs,
            u64::from(self.sb.free_blocks) * bs,
            u64::from(self.sb.inodes_count),
            u64::from(self.sb.free_inodes),
        )
    }

    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }
}
