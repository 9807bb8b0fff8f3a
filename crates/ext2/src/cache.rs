//! The block cache between the filesystem and the device: every block the filesystem reads or changes passes
//! through it, since each device request costs the guest a VM exit. Changed blocks stay here until a sync, which
//! writes them in two ordered, flushed batches: first file data and directory blocks, then the metadata that points
//! at them (indirect blocks, inode tables, bitmaps, group descriptors, superblock), each batch in the order its
//! blocks were first changed. Clean blocks are dropped when the cache is over its limit.

use crate::{BlockDevice, Result};
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// Which batch of a sync a changed block goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Data,
    Meta,
}

struct Entry {
    bytes: Vec<u8>,
    /// When changed since the last sync: its batch, and the order in which it was first changed.
    dirty: Option<(Class, u64)>,
}

/// Blocks read on a miss past the one asked for, when the caller expects more (a file read front to back).
pub const READ_AHEAD: u32 = 31;

pub struct Cache<D> {
    pub dev: D,
    block_size: usize,
    entries: BTreeMap<u32, Entry>,
    next_seq: u64,
    dirty: usize,
    /// Clean blocks kept at most; changed blocks past this many make the filesystem sync.
    pub limit: usize,
}

impl<D: BlockDevice> Cache<D> {
    pub fn new(dev: D, block_size: u32, limit: usize) -> Self {
        Cache { dev, block_size: block_size as usize, entries: BTreeMap::new(), next_seq: 0, dirty: 0, limit }
    }

    fn offset(&self, block: u32) -> u64 {
        u64::from(block) * self.block_size as u64
    }

    /// Makes `block` present, reading it (and up to `ahead` following blocks not yet cached, up to `end`) on a miss.
    fn load(&mut self, block: u32, ahead: u32, end: u32) -> Result<()> {
        if self.entries.contains_key(&block) {
            return Ok(());
        }
        self.evict();
        let mut count = 1u32;
        while count <= ahead && block + count < end && !self.entries.contains_key(&(block + count)) {
            count += 1;
        }
        let mut buf = vec![0u8; count as usize * self.block_size];
        self.dev.read(self.offset(block), &mut buf)?;
        for (i, chunk) in buf.chunks_exact(self.block_size).enumerate() {
            self.entries.insert(block + i as u32, Entry { bytes: chunk.to_vec(), dirty: None });
        }
        Ok(())
    }

    /// Drops clean blocks while over the limit.
    fn evict(&mut self) {
        if self.entries.len() < self.limit {
            return;
        }
        let clean: Vec<u32> =
            self.entries.iter().filter(|(_, e)| e.dirty.is_none()).map(|(&b, _)| b).take(self.limit / 4 + 1).collect();
        for b in clean {
            self.entries.remove(&b);
        }
    }

    pub fn read(&mut self, block: u32) -> Result<&[u8]> {
        self.read_ahead(block, 0, 0)
    }

    /// Reads `block`, and on a miss up to `ahead` blocks after it below `end`.
    pub fn read_ahead(&mut self, block: u32, ahead: u32, end: u32) -> Result<&[u8]> {
        self.load(block, ahead, end)?;
        Ok(&self.entries[&block].bytes)
    }

    /// `block`'s bytes to change, in batch `class` of the next sync.
    pub fn modify(&mut self, block: u32, class: Class) -> Result<&mut [u8]> {
        self.load(block, 0, 0)?;
        Ok(self.mark(block, class))
    }

    /// A block whose old contents do not matter (freshly allocated): zeroed, without reading it.
    pub fn fresh(&mut self, block: u32, class: Class) -> &mut [u8] {
        let size = self.block_size;
        let entry = self.entries.entry(block).or_insert_with(|| Entry { bytes: vec![0; size], dirty: None });
        entry.bytes.fill(0);
        self.mark(block, class)
    }

    fn mark(&mut self, block: u32, class: Class) -> &mut [u8] {
        let entry = self.entries.get_mut(&block).expect("loaded above");
        match &mut entry.dirty {
            Some((c, _)) => *c = (*c).max(class),
            None => {
                entry.dirty = Some((class, self.next_seq));
                self.next_seq += 1;
                self.dirty += 1;
            }
        }
        &mut entry.bytes
    }

    pub fn dirty_blocks(&self) -> usize {
        self.dirty
    }

    /// Writes every changed block: data, flush, metadata, flush.
    pub fn sync(&mut self) -> Result<()> {
        let mut order: Vec<(Class, u64, u32)> =
            self.entries.iter().filter_map(|(&b, e)| e.dirty.map(|(c, seq)| (c, seq, b))).collect();
        if order.is_empty() {
            return Ok(());
        }
        order.sort_unstable();
        let split = order.partition_point(|&(c, _, _)| c == Class::Data);
        for batch in [&order[..split], &order[split..]] {
            if batch.is_empty() {
                continue;
            }
            let size = self.block_size as u64;
            let entries = &self.entries;
            let writes: Vec<(u64, &[u8])> =
                batch.iter().map(|&(_, _, b)| (u64::from(b) * size, entries[&b].bytes.as_slice())).collect();
            self.dev.write(&writes, true)?;
        }
        for (_, _, b) in order {
            if let Some(e) = self.entries.get_mut(&b) {
                e.dirty = None;
            }
        }
        self.dirty = 0;
        Ok(())
    }
}
