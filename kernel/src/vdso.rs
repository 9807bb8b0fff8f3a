//! The functions behind the program's vDSO (the VMM's `vdso.rs` builds the ELF image that names them): the clocks and
//! the current CPU without entering the library OS. They run on the program's stack, called as the program calls any
//! C function, and read only the time base set at boot and the vCPU's index. A bad pointer faults as the program's own
//! access would (the VMM counts these functions as the program's code), as in Linux's vDSO.

use crate::{percpu, time};
use time::Timespec;

const EINVAL: i64 = 22;

/// The vDSO functions, kept in the image although nothing in the library OS calls them: the VMM finds them by name.
#[allow(clippy::type_complexity, reason = "the five signatures, listed once")]
pub static EXPORTED: (
    extern "C" fn(u64, *mut Timespec) -> i64,
    extern "C" fn(u64, *mut Timespec) -> i64,
    extern "C" fn(*mut [i64; 2], *mut [i32; 2]) -> i64,
    extern "C" fn(*mut i64) -> i64,
    extern "C" fn(*mut u32, *mut u32, *mut u8) -> i64,
) = (kiln_vdso_clock_gettime, kiln_vdso_clock_getres, kiln_vdso_gettimeofday, kiln_vdso_time, kiln_vdso_getcpu);

#[no_mangle]
pub extern "C" fn kiln_vdso_clock_gettime(clock: u64, ts: *mut Timespec) -> i64 {
    let Some(ns) = time::clock_ns(clock) else { return -EINVAL };
    // SAFETY: the program's pointer, written as its own store would be (see above).
    unsafe { ts.write_unaligned(Timespec::from_ns(ns)) };
    0
}

#[no_mangle]
pub extern "C" fn kiln_vdso_clock_getres(clock: u64, res: *mut Timespec) -> i64 {
    if time::clock_ns(clock).is_none() {
        return -EINVAL;
    }
    if !res.is_null() {
        // SAFETY: as above.
        unsafe { res.write_unaligned(Timespec { sec: 0, nsec: 1 }) };
    }
    0
}

#[no_mangle]
pub extern "C" fn kiln_vdso_gettimeofday(tv: *mut [i64; 2], tz: *mut [i32; 2]) -> i64 {
    if !tv.is_null() {
        let ns = time::realtime_ns();
        // SAFETY: as above.
        unsafe { tv.write_unaligned([(ns / 1_000_000_000) as i64, ((ns % 1_000_000_000) / 1000) as i64]) };
    }
    if !tz.is_null() {
        // SAFETY: as above.
        unsafe { tz.write_unaligned([0; 2]) };
    }
    0
}

#[no_mangle]
pub extern "C" fn kiln_vdso_time(t: *mut i64) -> i64 {
    let secs = (time::realtime_ns() / 1_000_000_000) as i64;
    if !t.is_null() {
        // SAFETY: as above.
        unsafe { t.write_unaligned(secs) };
    }
    secs
}

#[no_mangle]
pub extern "C" fn kiln_vdso_getcpu(cpu: *mut u32, node: *mut u32, _cache: *mut u8) -> i64 {
    if !cpu.is_null() {
        // SAFETY: as above.
        unsafe { cpu.write_unaligned(percpu::current().id as u32) };
    }
    if !node.is_null() {
        // SAFETY: as above.
        unsafe { node.write_unaligned(0) };
    }
    0
}
