//! The root filesystem image (`kiln_abi::rootfs`) as the VMM hands it to the guest: bytes built for this run, copied
//! into guest RAM, or a file (an entry of `rootfs_cache`) that guest RAM maps privately instead. A mapped image is
//! neither read nor copied before the guest touches it, and every VM that maps the same file shares the host's page
//! cache for it; the library OS never writes the image (it copies a file on its first write), and a write would
//! only make a private copy of that page.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// A root filesystem image for one VM.
#[derive(Clone, Debug, Default)]
pub enum Rootfs {
    /// No root filesystem.
    #[default]
    None,
    Bytes(Vec<u8>),
    Mapped(Arc<MappedImage>),
}

impl Rootfs {
    /// The image's bytes, for the host's own reading (the mapped image through a read-only view of the file).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Rootfs::None => &[],
            Rootfs::Bytes(bytes) => bytes,
            Rootfs::Mapped(image) => image.bytes(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Rootfs {
    fn from(bytes: Vec<u8>) -> Self {
        match bytes.is_empty() {
            true => Rootfs::None,
            false => Rootfs::Bytes(bytes),
        }
    }
}

/// `len` bytes of a file from a page-aligned `offset`, with a read-only view of them in the host. The file must not
/// shrink while mapped: `rootfs_cache` only ever replaces an entry by renaming a new file over it.
#[derive(Debug)]
pub struct MappedImage {
    file: File,
    offset: u64,
    len: usize,
    view: *const u8,
}

// SAFETY: the view is a read-only private mapping that this object owns and unmaps only on drop; nothing writes
// through it, so sharing it between threads is sharing immutable bytes.
unsafe impl Send for MappedImage {}
// SAFETY: as above.
unsafe impl Sync for MappedImage {}

impl MappedImage {
    /// Maps `[offset, offset+len)` of `file`, which must hold that much; `offset` must be page-aligned.
    pub fn new(file: File, offset: u64, len: usize) -> std::io::Result<MappedImage> {
        let page = kiln_abi::layout::PAGE_SIZE;
        let size = file.metadata()?.len();
        let fits = offset.is_multiple_of(page) && offset.checked_add(len as u64).is_some_and(|end| end <= size);
        if !fits || len == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "image outside its file"));
        }
        // SAFETY: a new private read-only mapping at an address the kernel picks, of a range the file holds (checked
        // above); it aliases no Rust object.
        let view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if view == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedImage { file, offset, len, view: view.cast() })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `view` maps `len` readable bytes for as long as `self` lives, and nothing writes them (the mapping
        // is private and read-only; the file is never rewritten in place).
        unsafe { std::slice::from_raw_parts(self.view, self.len) }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Drop for MappedImage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the slices `bytes` gave borrowed `self`, so none is left.
        unsafe { libc::munmap(self.view.cast_mut().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_a_page_aligned_range_of_a_file() {
        let path = std::env::temp_dir().join(format!("kiln-mapped-image-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.write_all(b"KILNFS1\0rest").unwrap();
        drop(f);
        let image = MappedImage::new(File::open(&path).unwrap(), 4096, 12).unwrap();
        assert_eq!(image.bytes(), b"KILNFS1\0rest");
        assert_eq!(Rootfs::Mapped(Arc::new(image)).len(), 12);
        assert!(MappedImage::new(File::open(&path).unwrap(), 4096, 13).is_err(), "past the end");
        assert!(MappedImage::new(File::open(&path).unwrap(), 8, 4).is_err(), "unaligned");
        std::fs::remove_file(&path).unwrap();
        assert!(Rootfs::from(Vec::new()).is_empty());
    }
}
