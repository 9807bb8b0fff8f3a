//! A disk image held as its written blocks, so that a disk of many GiB (GCE takes only whole GiB) costs what it
//! holds: the GPT writer and FAT image write into it through `Read`/`Write`/`Seek`, and the raw and qcow2 writers
//! store only the blocks that are not all zeroes.

use std::collections::BTreeMap;
use std::io;

/// The block size: a qcow2 cluster, so each block is a cluster there.
pub const BLOCK: u64 = 64 << 10;

#[derive(Debug)]
pub struct Disk {
    size: u64,
    blocks: BTreeMap<u64, Box<[u8]>>,
    position: u64,
}

impl Disk {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self { size, blocks: BTreeMap::new(), position: 0 }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `bytes` at `offset`, which must lie within the disk.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(bytes.len() as u64).filter(|&e| e <= self.size);
        if end.is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write past the end of the disk"));
        }
        let mut done = 0;
        while done < bytes.len() {
            let at = offset + done as u64;
            let (index, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(bytes.len() - done);
            let block = self.blocks.entry(index).or_insert_with(|| vec![0u8; BLOCK as usize].into_boxed_slice());
            block[within..within + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Reads into `buf` from `offset`, up to the end of the disk; returns how much it read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let len = (buf.len() as u64).min(self.size.saturating_sub(offset)) as usize;
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let (index, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(len - done);
            match self.blocks.get(&index) {
                Some(block) => buf[done..done + n].copy_from_slice(&block[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        len
    }

    /// The blocks that hold something, in order: their offset and bytes (the last one cut at the disk's end).
    pub fn data(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.blocks.iter().filter(|(_, b)| b.iter().any(|&x| x != 0)).map(|(&index, block)| {
            let offset = index * BLOCK;
            let len = (self.size - offset).min(BLOCK) as usize;
            (offset, &block[..len])
        })
    }

    /// The whole disk as bytes (for small disks and tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size as usize];
        for (offset, bytes) in self.data() {
            out[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        }
        out
    }
}

impl io::Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.position, buf);
        self.position += n as u64;
        Ok(n)
    }
}

impl io::Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.position, buf)?;
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for Disk {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(at) => Some(at),
            io::SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            io::SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the disk"))?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

    #[test]
    fn a_large_disk_holds_only_what_was_written() {
        let mut disk = Disk::new(1 << 40);
        disk.seek(SeekFrom::End(-3)).unwrap();
        disk.write_all(b"end").unwrap();
        disk.write_at(BLOCK - 2, b"span").unwrap();
        let data: Vec<(u64, usize)> = disk.data().map(|(o, b)| (o, b.len())).collect();
        assert_eq!(data, vec![(0, BLOCK as usize), (BLOCK, BLOCK as usize), ((1 << 40) - BLOCK, BLOCK as usize)]);
        let mut buf = [0u8; 6];
        disk.seek(SeekFrom::Start(BLOCK - 3)).unwrap();
        disk.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"\0span\0");
        assert!(disk.write_at((1 << 40) - 1, b"xy").is_err());
        assert_eq!(disk.read_at((1 << 40) - 1, &mut buf), 1);
    }
}
