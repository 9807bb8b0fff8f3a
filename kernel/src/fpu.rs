//! The program's x87, SSE and AVX registers, which the library OS (built without them) keeps only where it switches
//! away from a thread it interrupted in its code, and in signal frames. The VMM enables the components the host has
//! and says which, with the size of the standard-format XSAVE area that holds them (`BootInfo::xsave_features`);
//! where it enabled none (another platform layer), the `fxsave` image (x87 and SSE) is all there is.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// The `fxsave` image: x87 and SSE.
pub const FXSAVE_SIZE: usize = 512;
/// The largest XSAVE area kept (x87, SSE, AVX and AVX-512 take 2,688 bytes at most); a VMM offering more is not
/// taken up on it: the `fxsave` image is used.
pub const AREA_MAX: usize = 4096;
/// The XSAVE header follows the legacy region: its first word says which components the area holds.
const HEADER: usize = 512;
const HEADER_SIZE: usize = 64;
/// Where MXCSR lies in the legacy region, and the bits of it that may be set (others make fxrstor/xrstor fault).
const MXCSR: usize = 24;
const MXCSR_VALID: u32 = 0xffff;

static FEATURES: AtomicU64 = AtomicU64::new(0);
static SIZE: AtomicU64 = AtomicU64::new(FXSAVE_SIZE as u64);

pub fn init(boot: &kiln_abi::BootInfo) {
    let fits = (FXSAVE_SIZE as u64 + HEADER_SIZE as u64..=AREA_MAX as u64).contains(&boot.xsave_size);
    if boot.xsave_features & 0b11 == 0b11 && fits {
        FEATURES.store(boot.xsave_features, Ordering::Relaxed);
        SIZE.store(boot.xsave_size, Ordering::Relaxed);
    }
}

/// The components saved (XCR0), 0 where the `fxsave` image is used.
pub fn features() -> u64 {
    FEATURES.load(Ordering::Relaxed)
}

/// Bytes a saved state takes: the XSAVE area's size, or the `fxsave` image's.
pub fn size() -> usize {
    SIZE.load(Ordering::Relaxed) as usize
}

/// A saved state, on a library OS stack.
#[repr(C, align(64))]
pub struct Area([u8; AREA_MAX]);

impl Area {
    pub fn new() -> Area {
        Area([0; AREA_MAX])
    }

    pub fn save(&mut self) {
        // SAFETY: AREA_MAX writable, 64-byte aligned bytes with a zeroed header, more than `size()`.
        unsafe { save(self.0.as_mut_ptr()) }
    }

    pub fn restore(&self) {
        // SAFETY: a state `save` wrote into this area.
        unsafe { restore(self.0.as_ptr()) }
    }

    /// A state from the program's memory (a signal frame's, possibly edited) to restore: `len` bytes that `read`
    /// fills (None if it cannot), with what would make the restore fault cleared: MXCSR's reserved bits, components
    /// not enabled, a compacted format. `xsave` says whether they are an XSAVE area or an `fxsave` image.
    pub fn from_program(len: usize, xsave: bool, read: impl FnOnce(&mut [u8]) -> bool) -> Option<Area> {
        let mut area = Area::new();
        if !read(area.0.get_mut(..len)?) {
            return None;
        }
        let mxcsr = u32::from_le_bytes(area.0[MXCSR..MXCSR + 4].try_into().unwrap_or_default()) & MXCSR_VALID;
        area.0[MXCSR..MXCSR + 4].copy_from_slice(&mxcsr.to_le_bytes());
        if xsave {
            let held = u64::from_le_bytes(area.0[HEADER..HEADER + 8].try_into().unwrap_or_default()) & features();
            area.0[HEADER..HEADER + HEADER_SIZE].fill(0);
            area.0[HEADER..HEADER + 8].copy_from_slice(&held.to_le_bytes());
        }
        Some(area)
    }

    /// Restores this state as [`Area::from_program`] made it: XSAVE's or `fxsave`'s.
    pub fn restore_as(&self, xsave: bool) {
        match xsave {
            true => self.restore(),
            // SAFETY: 512 bytes of this aligned area, MXCSR made valid by `from_program`.
            false => unsafe { asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack)) },
        }
    }
}

/// Saves the registers at `at`: with XSAVE where enabled, else `fxsave`.
///
/// # Safety
/// `at` is 64-byte aligned with [`size`] writable bytes; for XSAVE, the header's 64 bytes after the legacy region are
/// zero (XSAVE writes only the first word of it, and XRSTOR faults on the others set).
pub unsafe fn save(at: *mut u8) {
    let features = features();
    if features == 0 {
        // SAFETY: as the caller promised; fxsave stores 512 bytes.
        unsafe { asm!("fxsave64 [{}]", in(reg) at, options(nostack)) };
    } else {
        // SAFETY: as the caller promised; XSAVE stores the components of `features` that XCR0 enables, within `size`.
        unsafe {
            asm!("xsave64 [{}]", in(reg) at, in("eax") features as u32, in("edx") (features >> 32) as u32,
                options(nostack))
        };
    }
}

/// Restores the registers `save` stored at `at`.
///
/// # Safety
/// `at` holds a state `save` wrote (or one made valid as [`Area::from_program`] does).
pub unsafe fn restore(at: *const u8) {
    let features = features();
    if features == 0 {
        // SAFETY: as the caller promised.
        unsafe { asm!("fxrstor64 [{}]", in(reg) at, options(nostack)) };
    } else {
        // SAFETY: as the caller promised; components the header does not hold are set to their initial state.
        unsafe {
            asm!("xrstor64 [{}]", in(reg) at, in("eax") features as u32, in("edx") (features >> 32) as u32,
                options(nostack))
        };
    }
}
