//! ext2, revision 1, as `mkfs.ext2` from e2fsprogs makes it: enough to read and write files and directories on a
//! volume so that `e2fsck` calls it clean, and, for crash safety, so that a sync writes file data (and directory
//! blocks) before the metadata that points at them, with a device flush after each, leaving nothing that `e2fsck`
//! cannot repair without losing what was synced. `no_std` with `alloc`: the library OS runs it over its virtio-blk
//! driver, and the host tests run it over a file that `mkfs.ext2` made and `e2fsck` checks afterwards.
//!
//! Symbolic links (fast ones in the inode, slow ones in a block), hard links and FIFOs are made and read here; device
//! nodes are listed, not made. What is not here: hashed directory indexes (a volume
//! with `dir_index` directories is read linearly, which ext2 allows, and the index flag dropped on change), journals
//! and extents (ext3/ext4 volumes are refused), extended attributes, ownership (everything is root's).

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod alloc_map;
mod bmap;
mod cache;
mod dir;
mod fs;
mod layout;
mod links;
#[cfg(test)]
mod tests;

pub use fs::{Ext2, FileType, Stat, ROOT_INO};

/// What a volume's storage provides: whole sectors (512 bytes) by byte offset.
pub trait BlockDevice {
    /// Fills `buf` (a multiple of 512 bytes) from byte `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> core::result::Result<(), IoError>;
    /// Writes each `(offset, bytes)` in the order given, then, if `flush`, makes them durable before returning.
    fn write(&mut self, writes: &[(u64, &[u8])], flush: bool) -> core::result::Result<(), IoError>;
}

/// The device failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the volume's device failed a request")]
pub struct IoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ext2Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("no space left on the volume")]
    NoSpace,
    #[error("name too long")]
    NameTooLong,
    #[error("file too large")]
    FileTooBig,
    #[error("invalid argument")]
    Invalid,
    #[error("too many links")]
    TooManyLinks,
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the volume is not ext2 as Kiln reads it: {0}")]
    Corrupt(&'static str),
    #[error("not supported on Kiln's ext2: {0}")]
    Unsupported(&'static str),
}

pub type Result<T> = core::result::Result<T, Ext2Error>;
