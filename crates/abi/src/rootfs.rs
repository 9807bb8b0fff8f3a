//! The root filesystem image the VMM puts in guest memory (files from `kiln run --file/--dir` and images): a magic,
//! the end of the index, the index (one entry per file, directory or link: a fixed header and the path, padded to 8
//! bytes), then the data (the VMM starts it at the next page boundary) (file contents, link targets, each padded to 8 bytes), where the
//! entries' headers point. All headers lie together, so that reading the tree touches few pages, and only the data of
//! the files read is touched at all (the VMM maps the image from a file: `kiln_vmm::rootfs_image`).
//! The library OS reads file contents in place. This module parses; the VMM builds (`kiln_vmm::rootfs`).
//!
//! [`MAGIC_V1`] images (each entry's data right after its header), which images built before carry, still parse.

pub const MAGIC: [u8; 8] = *b"KILNFS2\0";
pub const MAGIC_V1: [u8; 8] = *b"KILNFS1\0";
pub const KIND_DIR: u32 = 1;
pub const KIND_FILE: u32 = 2;
/// A symbolic link: its data is the target, as the host link has it (not resolved).
pub const KIND_SYMLINK: u32 = 3;
/// magic, then the index's end (u64); the data lies after it.
pub const PREFIX_LEN: usize = 16;
/// kind u32, permission bits u32, path length u32, reserved u32, data offset u64 (from the image's start), data
/// length u64.
pub const HEADER_LEN: usize = 32;
/// A version 1 entry's header: kind u32, permission bits u32, path length u32, reserved u32, data length u64.
const HEADER_LEN_V1: usize = 24;

/// `len` rounded up to a multiple of 8 (saturating, so that a hostile length cannot wrap).
pub const fn padded(len: usize) -> usize {
    len.saturating_add(7) & !7
}

/// Where the index of `image` ends; 0 for a version 1 image or junk.
pub fn index_end(image: &[u8]) -> usize {
    match image.get(..8) == Some(&MAGIC[..]) {
        true => u64_at(image, 8).map_or(0, |end| end as usize),
        false => 0,
    }
}

/// Whether `image` has no entries (or is no image).
pub fn is_empty(image: &[u8]) -> bool {
    !entries(image).is_ok_and(|mut e| e.next().is_some())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub kind: u32,
    pub perm: u32,
    /// Absolute path inside the guest.
    pub path: &'a str,
    /// Offset of the contents from the start of the image.
    pub data_offset: usize,
    pub data_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootfsError {
    BadMagic,
    /// The entry at this offset runs past the end, or has a bad kind or path.
    BadEntry(usize),
}

/// The entries of `image`, in order; stops at the first malformed one.
pub fn entries(image: &[u8]) -> Result<Entries<'_>, RootfsError> {
    if image.get(..8) == Some(&MAGIC_V1[..]) {
        return Ok(Entries { image, at: 8, index_end: image.len(), len: image.len(), v1: true });
    }
    entries_of_index(image, image.len())
}

/// The entries of a version 2 image `len` bytes long of which `head` holds the first bytes, at least up to its
/// [`index_end`] (all headers and paths lie before it): what the host reads of an image in guest memory to find a
/// file without copying the rest.
pub fn entries_of_index(head: &[u8], len: usize) -> Result<Entries<'_>, RootfsError> {
    if head.get(..8) != Some(&MAGIC[..]) {
        return Err(RootfsError::BadMagic);
    }
    match u64_at(head, 8).and_then(|end| usize::try_from(end).ok()) {
        Some(end) if (PREFIX_LEN..=head.len().min(len)).contains(&end) => {
            Ok(Entries { image: head, at: PREFIX_LEN, index_end: end, len, v1: false })
        }
        _ => Err(RootfsError::BadEntry(8)),
    }
}

pub struct Entries<'a> {
    image: &'a [u8],
    at: usize,
    index_end: usize,
    /// The whole image's length (the data may lie beyond `image`).
    len: usize,
    v1: bool,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, RootfsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.index_end {
            return None;
        }
        let start = self.at;
        let bad = Some(Err(RootfsError::BadEntry(start)));
        let header_len = if self.v1 { HEADER_LEN_V1 } else { HEADER_LEN };
        let Some(header) = self.image[..self.index_end].get(start..start + header_len) else {
            self.at = usize::MAX;
            return bad;
        };
        let kind = u32_at(header, 0);
        let perm = u32_at(header, 4);
        let path_len = u32_at(header, 8) as usize;
        let path_at = start + header_len;
        let path_end = path_at.saturating_add(padded(path_len));
        let (data_offset, data_len, next, data_ok) = if self.v1 {
            let data_len = u64_at(header, 16).unwrap_or(u64::MAX) as usize;
            let end = path_end.saturating_add(padded(data_len));
            (path_end, data_len, end, end <= self.len)
        } else {
            let data_offset = u64_at(header, 16).unwrap_or(u64::MAX) as usize;
            let data_len = u64_at(header, 24).unwrap_or(u64::MAX) as usize;
            let ok = data_offset >= self.index_end && data_offset.saturating_add(data_len) <= self.len;
            (data_offset, data_len, path_end, ok && path_end <= self.index_end)
        };
        let path = self.image.get(path_at..path_at.saturating_add(path_len)).and_then(|p| core::str::from_utf8(p).ok());
        match path {
            Some(path) if data_ok && path.starts_with('/') && matches!(kind, KIND_DIR | KIND_FILE | KIND_SYMLINK) => {
                self.at = next;
                Some(Ok(Entry { kind, perm, path, data_offset, data_len }))
            }
            _ => {
                self.at = usize::MAX;
                bad
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// An image of `entries` (kind, path, data) as the VMM lays one out.
    fn image(entries: &[(u32, &str, &[u8])]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        let index_len: usize = entries.iter().map(|(_, p, _)| HEADER_LEN + padded(p.len())).sum();
        let index_end = PREFIX_LEN + index_len;
        let data_start = index_end.next_multiple_of(4096);
        for (kind, path, bytes) in entries {
            index.extend(kind.to_le_bytes());
            index.extend(0o644u32.to_le_bytes());
            index.extend((path.len() as u32).to_le_bytes());
            index.extend(0u32.to_le_bytes());
            index.extend(((data_start + data.len()) as u64).to_le_bytes());
            index.extend((bytes.len() as u64).to_le_bytes());
            index.extend(path.as_bytes());
            index.resize(padded(index.len()), 0);
            data.extend(*bytes);
            data.resize(padded(data.len()), 0);
        }
        let mut out = MAGIC.to_vec();
        out.extend((index_end as u64).to_le_bytes());
        out.extend(index);
        out.resize(data_start, 0);
        out.extend(data);
        out
    }

    #[test]
    fn the_index_alone_finds_the_data_beyond_it() {
        let image = image(&[(KIND_FILE, "/lib/libc.so.6", b"\x7fELF...")]);
        let head = &image[..index_end(&image)];
        let file = entries_of_index(head, image.len()).unwrap().next().unwrap().unwrap();
        assert_eq!(&image[file.data_offset..][..file.data_len], b"\x7fELF...");
        // The data must still lie within the image's length.
        assert!(entries_of_index(head, file.data_offset).unwrap().next().unwrap().is_err());
        assert!(entries_of_index(&head[..20], image.len()).is_err(), "the index is cut short");
    }

    #[test]
    fn parses_what_the_format_says() {
        let image = image(&[(KIND_DIR, "/etc", b""), (KIND_FILE, "/etc/app.conf", b"key = 1\n")]);
        let all: Vec<_> = entries(&image).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].kind, all[0].path), (KIND_DIR, "/etc"));
        let f = all[1];
        assert_eq!(&image[f.data_offset..f.data_offset + f.data_len], b"key = 1\n");
        assert_eq!(index_end(&image), 16 + 32 + 8 + 32 + 16);
        assert!(!is_empty(&image) && is_empty(&self::image(&[])) && is_empty(b"junk"));
    }

    #[test]
    fn parses_version_1() {
        let mut image = MAGIC_V1.to_vec();
        for (kind, path, data) in [(KIND_DIR, "/etc", &b""[..]), (KIND_FILE, "/etc/a", b"v1 data")] {
            image.extend(kind.to_le_bytes());
            image.extend(0o644u32.to_le_bytes());
            image.extend((path.len() as u32).to_le_bytes());
            image.extend(0u32.to_le_bytes());
            image.extend((data.len() as u64).to_le_bytes());
            image.extend(path.as_bytes());
            image.resize(padded(image.len()), 0);
            image.extend(data);
            image.resize(padded(image.len()), 0);
        }
        let all: Vec<_> = entries(&image).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(all.iter().map(|e| e.path).collect::<Vec<_>>(), ["/etc", "/etc/a"]);
        assert_eq!(&image[all[1].data_offset..all[1].data_offset + all[1].data_len], b"v1 data");
        assert_eq!(index_end(&image), 0);
    }

    #[test]
    fn refuses_damage() {
        assert_eq!(entries(b"NOTKILN!").err(), Some(RootfsError::BadMagic));
        let good = image(&[(KIND_FILE, "/a", b"0123456789")]);
        let truncated = &good[..good.len() - 9];
        assert!(matches!(entries(truncated).unwrap().next(), Some(Err(RootfsError::BadEntry(16)))));
        let relative = image(&[(KIND_FILE, "a", b"")]);
        assert!(matches!(entries(&relative).unwrap().next(), Some(Err(_))));
        let mut huge = good.clone();
        huge[16 + 24..16 + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(entries(&huge).unwrap().next(), Some(Err(_))));
        let mut into_index = good.clone();
        into_index[16 + 16..16 + 24].copy_from_slice(&16u64.to_le_bytes());
        assert!(matches!(entries(&into_index).unwrap().next(), Some(Err(_))), "data inside the index");
        let mut long_index = good.clone();
        long_index[8..16].copy_from_slice(&(good.len() as u64 + 1).to_le_bytes());
        assert!(entries(&long_index).is_err());
    }
}
