//! Access to memory the program hands us. The program shares our address space, so a checked pointer is used as is;
//! the check (a page-table walk per page) turns a bad pointer into EFAULT instead of a fault that would end the VM.

use crate::errno::Errno;
use crate::mm;
use kiln_abi::hypercall::IoSegment;
use kiln_abi::layout::PROGRAM_MIN_ADDR;

/// Walks `[addr, addr+len)` page by page, checking that each piece is the program's memory (and writable if
/// `write`), and hands each piece's guest-physical address and length to `visit`, which stops the walk by returning
/// false. Returns how many bytes were visited.
fn walk(addr: u64, len: u64, write: bool, mut visit: impl FnMut(u64, u64) -> bool) -> Result<u64, Errno> {
    let end = addr.checked_add(len).ok_or(Errno::EFAULT)?;
    if addr < PROGRAM_MIN_ADDR && len != 0 {
        return Err(Errno::EFAULT);
    }
    let mut at = addr;
    while at < end {
        let t = mm::translate(at).ok_or(Errno::EFAULT)?;
        if !t.user || (write && !t.writable) {
            return Err(Errno::EFAULT);
        }
        let n = t.bytes_left_in_page.min(end - at);
        if !visit(t.phys, n) {
            break;
        }
        at += n;
    }
    Ok(at - addr)
}

/// Checks that `[addr, addr+len)` is mapped for the program (and writable if `write`).
pub fn check(addr: u64, len: u64, write: bool) -> Result<(), Errno> {
    walk(addr, len, write, |_, _| true).map(|_| ())
}

pub fn read<T: Copy>(addr: u64) -> Result<T, Errno> {
    check(addr, core::mem::size_of::<T>() as u64, false)?;
    // SAFETY: the range is mapped (checked above); unaligned reads are fine on x86.
    Ok(unsafe { core::ptr::read_unaligned(addr as *const T) })
}

pub fn write<T: Copy>(addr: u64, value: T) -> Result<(), Errno> {
    check(addr, core::mem::size_of::<T>() as u64, true)?;
    // SAFETY: the range is mapped writable (checked above).
    unsafe { core::ptr::write_unaligned(addr as *mut T, value) };
    Ok(())
}

pub fn write_bytes(addr: u64, bytes: &[u8]) -> Result<(), Errno> {
    check(addr, bytes.len() as u64, true)?;
    // SAFETY: the range is mapped writable (checked above) and cannot overlap our own data.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
    Ok(())
}

pub fn read_bytes(addr: u64, out: &mut [u8]) -> Result<(), Errno> {
    check(addr, out.len() as u64, false)?;
    // SAFETY: the range is mapped (checked above) and cannot overlap our own buffer.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
    Ok(())
}

/// A `struct timespec` the program passed, in nanoseconds: EINVAL unless 0 <= tv_nsec < 1e9 and tv_sec >= 0.
pub fn read_timespec(addr: u64) -> Result<u64, Errno> {
    let [sec, nsec]: [i64; 2] = read(addr)?;
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(Errno::EINVAL);
    }
    Ok((sec as u64).saturating_mul(1_000_000_000).saturating_add(nsec as u64))
}

/// A NUL-terminated string of at most `N - 1` bytes, copied out of the program.
pub fn read_c_string<const N: usize>(addr: u64, buf: &mut [u8; N]) -> Result<usize, Errno> {
    for (i, slot) in buf.iter_mut().enumerate() {
        let b: u8 = read(addr.checked_add(i as u64).ok_or(Errno::EFAULT)?)?;
        if b == 0 {
            return Ok(i);
        }
        *slot = b;
    }
    Err(Errno::ENAMETOOLONG)
}

/// Appends the guest-physical pieces of `[addr, addr+len)` to `out`, merging physically adjacent pages. Returns how
/// many bytes were described (less than `len` when `out` fills up).
pub fn physical_segments(addr: u64, len: u64, out: &mut [IoSegment], used: &mut usize) -> Result<u64, Errno> {
    let capacity = out.len();
    walk(addr, len, false, |phys, n| {
        match out[..*used].last_mut() {
            Some(last) if last.phys + last.len == phys => last.len += n,
            _ if *used == capacity => return false,
            _ => {
                out[*used] = IoSegment { phys, len: n };
                *used += 1;
            }
        }
        true
    })
}
