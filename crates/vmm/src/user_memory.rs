//! Reading the program's memory from the host, through the guest's page tables, for crash reports and core files:
//! only user pages, only guest RAM, and never more than asked. A hostile or broken address gives a short read (or
//! none), never an error.

use crate::memory::GuestRam;
use kiln_abi::paging;

struct Ram<'a>(&'a GuestRam);

impl paging::PhysMemory for Ram<'_> {
    fn read_u64(&self, phys: u64) -> u64 {
        // A page-table pointer outside RAM reads as "not present".
        self.0.read_obj(phys).unwrap_or(0)
    }
    fn write_u64(&mut self, _: u64, _: u64) {}
}

/// Up to `len` bytes of user memory at guest-virtual `at` in the address space rooted at `pml4`: fewer where the
/// pages stop being user-accessible, mapped or in RAM.
pub fn read(ram: &GuestRam, pml4: u64, at: u64, len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < len {
        let Some(addr) = at.checked_add(bytes.len() as u64) else { break };
        let Some(t) = paging::translate(&Ram(ram), pml4, addr).filter(|t| t.user) else { break };
        let want = t.bytes_left_in_page.min((len - bytes.len()) as u64) as usize;
        let start = bytes.len();
        bytes.resize(start + want, 0);
        if ram.read(t.phys, &mut bytes[start..]).is_err() {
            bytes.truncate(start);
            break;
        }
    }
    bytes
}

/// The little-endian word at `at`, if all 8 bytes are readable.
pub fn word(ram: &GuestRam, pml4: u64, at: u64) -> Option<u64> {
    read(ram, pml4, at, 8).try_into().ok().map(u64::from_le_bytes)
}

/// Calls `f` for every run of user pages in the lower half with the same write permission, in address order.
pub fn regions(ram: &GuestRam, pml4: u64, f: impl FnMut(paging::Region)) {
    paging::user_regions(&Ram(ram), pml4, f);
}
