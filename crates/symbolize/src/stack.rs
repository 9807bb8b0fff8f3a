//! The crashed thread's state as the VMM copied it.

/// The registers an unwind starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
}

/// Guest bytes from `start` up: the only memory the unwinder reads. Every read is checked against it, so a frame
/// pointer or saved value that points elsewhere ends the walk instead of reading anything else.
#[derive(Clone, Copy, Debug)]
pub struct StackCopy<'a> {
    pub start: u64,
    pub bytes: &'a [u8],
}

impl StackCopy<'_> {
    /// The little-endian word at guest address `addr`, if all 8 bytes are in the copy.
    pub fn word(&self, addr: u64) -> Option<u64> {
        let offset = usize::try_from(addr.checked_sub(self.start)?).ok()?;
        let bytes = self.bytes.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_outside_the_copy_are_none() {
        let bytes: Vec<u8> = (0..16).collect();
        let stack = StackCopy { start: 0x1000, bytes: &bytes };
        assert_eq!(stack.word(0x1000), Some(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7])));
        assert_eq!(stack.word(0x1008), Some(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15])));
        assert_eq!(stack.word(0x1009), None);
        assert_eq!(stack.word(0xfff), None);
        assert_eq!(stack.word(u64::MAX), None);
    }
}
