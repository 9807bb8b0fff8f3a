//! The program's memory as a debugger sees it: guest-virtual addresses read and written through the guest's page
//! tables, user pages only, page by page, at most [`MAX_ACCESS`] bytes a call. A write goes to the page's physical
//! memory whatever the page's write permission (a breakpoint goes into read-only code, as ptrace's POKETEXT does).

use crate::memory::GuestRam;
use kiln_abi::paging;

/// Most bytes one read or write moves (a debugger asks for a packet's worth at a time).
pub const MAX_ACCESS: usize = 64 * 1024;

struct Tables<'a>(&'a GuestRam);

impl paging::PhysMemory for Tables<'_> {
    fn read_u64(&self, phys: u64) -> u64 {
        // A page-table pointer outside RAM reads as "not present".
        self.0.read_obj(phys).unwrap_or(0)
    }
    fn write_u64(&mut self, _: u64, _: u64) {}
}

/// Where `vaddr` is in guest RAM and how many bytes of its page follow, if a user page maps it.
pub fn translate(ram: &GuestRam, pml4: u64, vaddr: u64) -> Option<(u64, u64)> {
    paging::translate(&Tables(ram), pml4, vaddr).filter(|t| t.user).map(|t| (t.phys, t.bytes_left_in_page))
}

/// Reads up to `buf.len()` bytes (at most [`MAX_ACCESS`]) from `vaddr`; returns how many were readable: it stops at
/// the first page that is unmapped, not user-accessible or outside RAM.
pub fn read(ram: &GuestRam, pml4: u64, vaddr: u64, buf: &mut [u8]) -> usize {
    access(ram, pml4, vaddr, buf.len(), |phys, range| ram.read(phys, &mut buf[range]).is_ok())
}

/// Writes `bytes` (at most [`MAX_ACCESS`] of them) at `vaddr`; returns how many were written, stopping as [`read`]
/// does.
pub fn write(ram: &GuestRam, pml4: u64, vaddr: u64, bytes: &[u8]) -> usize {
    access(ram, pml4, vaddr, bytes.len(), |phys, range| ram.write(phys, &bytes[range]).is_ok())
}

fn access(
    ram: &GuestRam,
    pml4: u64,
    vaddr: u64,
    len: usize,
    mut copy: impl FnMut(u64, std::ops::Range<usize>) -> bool,
) -> usize {
    let len = len.min(MAX_ACCESS);
    let mut done = 0;
    while done < len {
        let Some(at) = vaddr.checked_add(done as u64) else { break };
        let Some((phys, left)) = translate(ram, pml4, at) else { break };
        let n = (left.min((len - done) as u64)) as usize;
        if !copy(phys, done..done + n) {
            break;
        }
        done += n;
    }
    done
}
