//! The GDT and TSS the vCPU starts with. Selectors follow the layout `syscall`/`sysret` expect (kernel code, kernel
//! data, user data, user code), so a later CPL 0 shim can use them unchanged.

pub const KERNEL_CODE: u16 = 0x08;
pub const KERNEL_DATA: u16 = 0x10;
pub const USER_DATA: u16 = 0x18 | 3;
pub const USER_CODE: u16 = 0x20 | 3;
pub const TSS: u16 = 0x28;
pub const ENTRIES: usize = 7;
/// The TSS proper is 104 bytes; an I/O permission bitmap follows it.
const TSS_HEADER: usize = 104;
/// Ports 0 ..= the highest hypercall port, one bit each, plus the terminating 0xff byte the CPU requires. Ports past
/// the bitmap (the CPL 0 code's, `trap_page.rs`) are closed to CPL 3.
const IO_BITMAP_BYTES: usize = ((kiln_abi::hypercall::HYPERCALL_PORT as usize + 3) / 8) + 2;
pub const TSS_SIZE: usize = TSS_HEADER + IO_BITMAP_BYTES;

/// The GDT's bytes: null, kernel code/data, user data/code (64-bit), and a 16-byte TSS descriptor at `tss_base`.
pub fn table(tss_base: u64) -> Vec<u8> {
    let limit = (TSS_SIZE - 1) as u64;
    let tss_low = (limit & 0xffff)
        | ((tss_base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, type 9: available 64-bit TSS
        | (((tss_base >> 24) & 0xff) << 56);
    let tss_high = tss_base >> 32;
    let entries: [u64; ENTRIES] = [
        0,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x00cf_f200_0000_ffff,
        0x00af_fa00_0000_ffff,
        tss_low,
        tss_high,
    ];
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// A TSS whose RSP0 is `rsp0`: where a CPU that can switch to CPL 0 on an exception puts the frame. Its I/O bitmap
/// lets CPL 3 use the hypercall ports whatever RFLAGS.IOPL says: kvm_pvm checks the bitmap even with IOPL 3, and a
/// program's `popf` cannot take the permission away.
pub fn tss(rsp0: u64) -> Vec<u8> {
    let mut t = vec![0u8; TSS_SIZE];
    t[4..12].copy_from_slice(&rsp0.to_le_bytes());
    t[102..104].copy_from_slice(&(TSS_HEADER as u16).to_le_bytes());
    // Every port but the hypercall's is denied.
    let bitmap = &mut t[TSS_HEADER..];
    bitmap.fill(0xff);
    // A 4-byte `out` needs all four of its ports allowed.
    let hypercall = kiln_abi::hypercall::HYPERCALL_PORT;
    for port in hypercall..hypercall + 4 {
        bitmap[port as usize / 8] &= !(1 << (port % 8));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_descriptor_encodes_base_and_limit() {
        let g = table(0x4000_1234_5678);
        let low = u64::from_le_bytes(g[40..48].try_into().unwrap());
        let high = u64::from_le_bytes(g[48..56].try_into().unwrap());
        assert_eq!(low & 0xffff, TSS_SIZE as u64 - 1);
        assert_eq!((low >> 16) & 0xff_ffff, 0x34_5678);
        assert_eq!((low >> 56) & 0xff, 0x12);
        assert_eq!(high, 0x4000);
        assert_eq!((low >> 40) & 0xff, 0x89);
    }
}

#[cfg(test)]
mod io_bitmap_tests {
    use super::*;
    use crate::arch::trap_page::{EXCEPTION_PORT, PROBE_PORT};
    use kiln_abi::hypercall::HYPERCALL_PORT;

    #[test]
    fn only_the_hypercall_ports_are_open() {
        let t = tss(0);
        let base = u16::from_le_bytes([t[102], t[103]]) as usize;
        let allowed = |port: u16| t[base + port as usize / 8] & (1 << (port % 8)) == 0;
        assert!((HYPERCALL_PORT..HYPERCALL_PORT + 4).all(allowed));
        assert!(!allowed(0x3f8) && !allowed(HYPERCALL_PORT - 1) && !allowed(0x80));
        // The CPL 0 code's ports lie past the bitmap, which the CPU reads as closed.
        for port in [EXCEPTION_PORT, PROBE_PORT] {
            assert!(base + port as usize / 8 >= t.len() - 1, "port {port:#x}");
        }
        assert_eq!(*t.last().unwrap(), 0xff);
    }
}
