//! Where the program's syscalls come from. The VMM moved most `syscall` instructions to stubs that call the entry
//! with a `call *disp32(%rip)`; the rest became `call *%rax` in place, into page 0. A restarted syscall (SA_RESTART)
//! resumes where the VMM's restart table says (the start of the site's window in the program's code, as Linux resumes
//! at the `syscall` instruction), else at the call that made it. Shared objects carry their stubs and restart table
//! in a segment of their own, mapped wherever the dynamic loader put it: their stubs' call is recognised by its
//! bytes and by the slot it reads, which holds `SYSCALL_GATEWAY_ENTRY`, and the slot starts their stub area.

use crate::user;
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::boot::BootInfo;
use kiln_abi::layout::{STUB_CALL_LEN, SYSCALL_GATEWAY_ENTRY, TRAMPOLINE_CALL_LEN};

static STUBS_START: AtomicU64 = AtomicU64::new(0);
static STUBS_END: AtomicU64 = AtomicU64::new(0);

/// Where in the stub area the restart table's offset is (the VMM's `rewrite::RESTART_TABLE_OFFSET`).
const RESTART_TABLE_OFFSET_AT: u64 = 8;
/// Bound on the binary search: the table has at most one entry per 16 bytes of stubs.
const MAX_STEPS: u32 = 64;

pub fn init(boot: &BootInfo) {
    STUBS_START.store(boot.syscall_stubs_start, Ordering::Relaxed);
    STUBS_END.store(boot.syscall_stubs_end, Ordering::Relaxed);
}

/// Where a syscall that returns to `ret` resumes to be made again, with the number in %rax.
pub fn restart_address(ret: u64) -> u64 {
    let (start, end) = (STUBS_START.load(Ordering::Relaxed), STUBS_END.load(Ordering::Relaxed));
    if (start..end).contains(&ret) {
        return restart_table_lookup(start, end, ret).unwrap_or(ret - STUB_CALL_LEN);
    }
    if let Some(area) = shared_object_stubs(ret) {
        return restart_table_scan(area, ret).unwrap_or(ret - STUB_CALL_LEN);
    }
    ret.wrapping_sub(TRAMPOLINE_CALL_LEN)
}

/// The start of the stub area of a shared object whose stub made the call returning to `ret`, if one did:
/// `call *disp32(%rip)` before `ret`, reading a slot that holds the gateway's address.
fn shared_object_stubs(ret: u64) -> Option<u64> {
    let call = user::read::<[u8; STUB_CALL_LEN as usize]>(ret.checked_sub(STUB_CALL_LEN)?).ok()?;
    if call[..2] != [0xff, 0x15] {
        return None;
    }
    let disp = i32::from_le_bytes([call[2], call[3], call[4], call[5]]);
    let slot = ret.wrapping_add(disp as i64 as u64);
    (user::read::<u64>(slot).ok()? == SYSCALL_GATEWAY_ENTRY).then_some(slot)
}

/// The restart table of a shared object's stub area (entries relative to the area's start), whose end the library OS does not know: the table runs to the
/// end of the object's file, after which its mapping reads as zeros (or is not mapped). Sorted, so the scan stops at
/// the first entry past `ret`; restarts are rare, and the scan is bounded.
fn restart_table_scan(start: u64, ret: u64) -> Option<u64> {
    const MAX_ENTRIES: u64 = 1 << 16;
    let offset = user::read::<u64>(start + RESTART_TABLE_OFFSET_AT).ok()?;
    let table = start.checked_add(offset)?;
    for i in 0..MAX_ENTRIES {
        // Relative to the area, as the object may lie anywhere.
        let [at, resume] = user::read::<[u64; 2]>(table.checked_add(i * 16)?).ok()?;
        match start.wrapping_add(at).cmp(&ret) {
            core::cmp::Ordering::Equal => return Some(start.wrapping_add(resume)),
            core::cmp::Ordering::Less if at != 0 => {}
            _ => return None,
        }
    }
    None
}

/// The table lives in the program's (read-only) stub area, which it could unmap: every read is checked.
fn restart_table_lookup(start: u64, end: u64, ret: u64) -> Option<u64> {
    let offset = user::read::<u64>(start + RESTART_TABLE_OFFSET_AT).ok()?;
    let table = start.checked_add(offset).filter(|&t| t <= end)?;
    let (mut lo, mut hi) = (0, (end - table) / 16);
    for _ in 0..MAX_STEPS {
        if lo >= hi {
            return None;
        }
        let mid = lo + (hi - lo) / 2;
        let [at, resume] = user::read::<[u64; 2]>(table + mid * 16).ok()?;
        match at.cmp(&ret) {
            core::cmp::Ordering::Equal => return Some(resume),
            core::cmp::Ordering::Less => lo = mid + 1,
            core::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}
