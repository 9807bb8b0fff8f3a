//! The root filesystem image the VMM puts in guest memory (files from `kiln run --file/--dir`, later from images):
//! a magic, then entries, each a fixed header, the path, and for files the contents (for symbolic links the target),
//! every part padded to 8 bytes.
//! The library OS reads file contents in place. This module parses; the VMM builds (`kiln_vmm::rootfs`).

pub const MAGIC: [u8; 8] = *b"KILNFS1\0";
pub const KIND_DIR: u32 = 1;
pub const KIND_FILE: u32 = 2;
/// A symbolic link: its data is the target, as the host link has it (not resolved).
pub const KIND_SYMLINK: u32 = 3;
/// kind u32, permission bits u32, path length u32, reserved u32, data length u64.
pub const HEADER_LEN: usize = 24;

/// `len` rounded up to a multiple of 8 (saturating, so that a hostile length cannot wrap).
pub const fn padded(len: usize) -> usize {
    len.saturating_add(7) & !7
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
    if image.get(..8) != Some(&MAGIC[..]) {
        return Err(RootfsError::BadMagic);
    }
    Ok(Entries { image, at: 8 })
}

pub struct Entries<'a> {
    image: &'a [u8],
    at: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, RootfsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.image.len() {
            return None;
        }
        let start = self.at;
        let bad = Some(Err(RootfsError::BadEntry(start)));
        let Some(header) = self.image.get(start..start + HEADER_LEN) else {
            self.at = usize::MAX;
            return bad;
        };
        let kind = u32_at(header, 0);
        let perm = u32_at(header, 4);
        let path_len = u32_at(header, 8) as usize;
        let data_len = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default()) as usize;
        let path_at = start + HEADER_LEN;
        let data_offset = path_at.saturating_add(padded(path_len));
        let end = data_offset.saturating_add(padded(data_len));
        let path = self.image.get(path_at..path_at.saturating_add(path_len)).and_then(|p| core::str::from_utf8(p).ok());
        match path {
            Some(path)
                if end <= self.image.len()
                    && path.starts_with('/')
                    && matches!(kind, KIND_DIR | KIND_FILE | KIND_SYMLINK) =>
            {
                self.at = end;
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

    fn entry(out: &mut Vec<u8>, kind: u32, path: &str, data: &[u8]) {
        out.extend(kind.to_le_bytes());
        out.extend(0o644u32.to_le_bytes());
        out.extend((path.len() as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        out.extend(path.as_bytes());
        out.resize(padded(out.len()), 0);
        out.extend(data);
        out.resize(padded(out.len()), 0);
    }

    #[test]
    fn parses_what_the_format_says() {
        let mut image = MAGIC.to_vec();
        entry(&mut image, KIND_DIR, "/etc", b"");
        entry(&mut image, KIND_FILE, "/etc/app.conf", b"key = 1\n");
        let all: Vec<_> = entries(&image).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].kind, all[0].path), (KIND_DIR, "/etc"));
        let f = all[1];
        assert_eq!(&image[f.data_offset..f.data_offset + f.data_len], b"key = 1\n");
    }

    #[test]
    fn refuses_damage() {
        assert_eq!(entries(b"NOTKILN!").err(), Some(RootfsError::BadMagic));
        let mut image = MAGIC.to_vec();
        entry(&mut image, KIND_FILE, "/a", b"0123456789");
        let truncated = &image[..image.len() - 9];
        assert!(matches!(entries(truncated).unwrap().next(), Some(Err(RootfsError::BadEntry(8)))));
        let mut relative = MAGIC.to_vec();
        entry(&mut relative, KIND_FILE, "a", b"");
        assert!(matches!(entries(&relative).unwrap().next(), Some(Err(_))));
        let mut huge = MAGIC.to_vec();
        entry(&mut huge, KIND_FILE, "/a", b"");
        huge[8 + 16..8 + 24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(entries(&huge).unwrap().next(), Some(Err(_))));
    }
}
