//! The ACPI tables an exported image's platform layer (`kernel/pvh`) reads to find the machine's processors: the RSDP
//! (from the PVH start info, or found in the BIOS areas as PCs leave it), the XSDT or RSDT, and the MADT's local APIC
//! and x2APIC entries. Here, not in the platform layer, so that the parsing of firmware bytes is unit-tested on the
//! host. Every loop is bounded and every table is checksummed: a damaged table is an error, never a hang.

/// Where PC firmware may leave the RSDP: the first KiB of the EBDA (whose segment the BIOS data area holds at 0x40e)
/// and the BIOS ROM area.
const EBDA_POINTER: u64 = 0x40e;
const EBDA_SCAN: u64 = 1024;
const BIOS_AREA: core::ops::Range<u64> = 0xe0000..0x100000;
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const SDT_HEADER: u64 = 36;
/// Most XSDT/RSDT entries looked at; firmware has a dozen or two.
const MAX_SDT_ENTRIES: u64 = 256;
/// Largest MADT read: 64 KiB holds thousands of processors' entries.
const MAX_MADT: u64 = 64 << 10;
const MADT_ENTRIES: u64 = 44;
const ENTRY_LOCAL_APIC: u8 = 0;
const ENTRY_X2APIC: u8 = 9;
/// A processor entry's flags: enabled (usable now); "online capable" ones are hot-plug slots, left alone.
const PROCESSOR_ENABLED: u32 = 1;

/// Guest-physical memory as the reader sees it.
pub trait FirmwareMemory {
    /// The `len` bytes at `phys`; None where they are not all readable.
    fn bytes(&self, phys: u64, len: u64) -> Option<&[u8]>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP was given, and none is in the BIOS areas.
    NoRsdp,
    /// The RSDT/XSDT names no MADT.
    NoMadt,
    /// A table (named) cannot be read, or its length or checksum is wrong.
    Damaged(&'static str),
}

impl AcpiError {
    /// What went wrong, for a console line.
    pub fn what(&self) -> &'static str {
        match self {
            Self::NoRsdp => "no ACPI RSDP (the loader gave none and the BIOS areas hold none)",
            Self::NoMadt => "the ACPI tables have no MADT",
            Self::Damaged("RSDP") => "the ACPI RSDP is damaged",
            Self::Damaged("XSDT") => "the ACPI XSDT or RSDT is damaged",
            Self::Damaged(_) => "the ACPI MADT is damaged",
        }
    }
}

/// The little-endian number of `N` bytes at `at` in `bytes` (which the caller sized to hold it).
fn le<const N: usize>(bytes: &[u8], at: usize) -> u64 {
    bytes[at..at + N].iter().rev().fold(0, |n, &b| n << 8 | u64::from(b))
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0
}

/// The RSDP's first 20 bytes (revision 0's), if they are one.
fn rsdp_at(mem: &impl FirmwareMemory, phys: u64) -> Option<&[u8]> {
    mem.bytes(phys, 20).filter(|b| b.starts_with(RSDP_SIGNATURE) && sums_to_zero(b))
}

/// The RSDP in the EBDA's first KiB or the BIOS area (16-byte aligned, with a valid checksum).
pub fn find_rsdp(mem: &impl FirmwareMemory) -> Option<u64> {
    let ebda = mem.bytes(EBDA_POINTER, 2).map(|s| le::<2>(s, 0) << 4).filter(|&e| e != 0);
    let ebda = ebda.map(|e| e..e + EBDA_SCAN).into_iter().flat_map(|r| r.step_by(16));
    ebda.chain(BIOS_AREA.step_by(16)).find(|&at| rsdp_at(mem, at).is_some())
}

/// A system description table: its bytes, if its header reads, it is at least a header long (and at most `max`), it
/// has `signature` and its checksum holds.
fn table<'a>(mem: &'a impl FirmwareMemory, phys: u64, signature: &[u8; 4], max: u64) -> Option<&'a [u8]> {
    let header = mem.bytes(phys, SDT_HEADER)?;
    let length = le::<4>(header, 4);
    if !header.starts_with(signature) || !(SDT_HEADER..=max).contains(&length) {
        return None;
    }
    mem.bytes(phys, length).filter(|t| sums_to_zero(t))
}

/// The MADT, from the RSDP at `rsdp` through the XSDT (revision 2 and later) or the RSDT.
fn find_madt(mem: &impl FirmwareMemory, rsdp: u64) -> Result<&[u8], AcpiError> {
    let damaged = AcpiError::Damaged("XSDT");
    let first = rsdp_at(mem, rsdp).ok_or(AcpiError::Damaged("RSDP"))?;
    let xsdt = match first[15] {
        2.. => mem.bytes(rsdp, 36).filter(|b| sums_to_zero(b)).map(|b| le::<8>(b, 24)).filter(|&x| x != 0),
        _ => None,
    };
    let (root, signature, entry_size) = match xsdt {
        Some(xsdt) => (xsdt, b"XSDT", 8),
        None => (le::<4>(first, 16), b"RSDT", 4),
    };
    let root = table(mem, root, signature, SDT_HEADER + MAX_SDT_ENTRIES * entry_size as u64).ok_or(damaged)?;
    for entry in root[SDT_HEADER as usize..].chunks_exact(entry_size) {
        let sdt = if entry_size == 8 { le::<8>(entry, 0) } else { le::<4>(entry, 0) };
        if mem.bytes(sdt, 4) == Some(b"APIC") {
            return table(mem, sdt, b"APIC", MAX_MADT).ok_or(AcpiError::Damaged("MADT"));
        }
    }
    Err(AcpiError::NoMadt)
}

/// The APIC IDs of the enabled processors the MADT lists (local APIC and x2APIC entries), in its order, duplicates
/// left out, into `out`; returns how many (at most `out.len()`: further ones are not looked at).
pub fn processors(mem: &impl FirmwareMemory, rsdp: u64, out: &mut [u32]) -> Result<usize, AcpiError> {
    let madt = find_madt(mem, rsdp)?;
    let damaged = AcpiError::Damaged("MADT");
    let mut entries = madt.get(MADT_ENTRIES as usize..).ok_or(damaged)?;
    let mut found = 0;
    // Each round consumes at least 2 bytes of the table, which is at most MAX_MADT long.
    while entries.len() >= 2 && found < out.len() {
        let (kind, len) = (entries[0], usize::from(entries[1]));
        let entry = entries.get(..len).filter(|_| len >= 2).ok_or(damaged)?;
        let (id, flags) = match (kind, len) {
            (ENTRY_LOCAL_APIC, 8..) => (u64::from(entry[3]), le::<4>(entry, 4)),
            (ENTRY_X2APIC, 16..) => (le::<4>(entry, 4), le::<4>(entry, 8)),
            (ENTRY_LOCAL_APIC | ENTRY_X2APIC, _) => return Err(damaged),
            _ => (0, 0),
        };
        let id = id as u32;
        if flags as u32 & PROCESSOR_ENABLED != 0 && !out[..found].contains(&id) {
            out[found] = id;
            found += 1;
        }
        entries = &entries[len..];
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Memory of `size` bytes from 0.
    struct Ram(Vec<u8>);

    impl FirmwareMemory for Ram {
        fn bytes(&self, phys: u64, len: u64) -> Option<&[u8]> {
            self.0.get(phys as usize..phys.checked_add(len)? as usize)
        }
    }

    impl Ram {
        fn put(&mut self, at: u64, bytes: &[u8]) {
            self.0[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        }

        /// Sets the byte at `at + offset` so that `len` bytes from `at` sum to zero.
        fn checksum(&mut self, at: u64, len: u64, offset: u64) {
            self.0[(at + offset) as usize] = 0;
            let sum = self.0[at as usize..(at + len) as usize].iter().fold(0u8, |s, &b| s.wrapping_add(b));
            self.0[(at + offset) as usize] = 0u8.wrapping_sub(sum);
        }

        fn sdt(&mut self, at: u64, signature: &[u8; 4], body: &[u8]) {
            let len = SDT_HEADER + body.len() as u64;
            self.put(at, signature);
            self.put(at + 4, &(len as u32).to_le_bytes());
            self.put(at + SDT_HEADER, body);
            self.checksum(at, len, 9);
        }
    }

    const MADT_AT: u64 = 0x3000;

    fn local_apic(id: u8, flags: u32) -> Vec<u8> {
        let mut e = std::vec![ENTRY_LOCAL_APIC, 8, id, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn x2apic(id: u32, flags: u32) -> Vec<u8> {
        let mut e = std::vec![ENTRY_X2APIC, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
        e
    }

    /// An RSDP of `revision` at 0xe0010 pointing at an XSDT (or RSDT) with a FACP and the MADT of `entries`.
    fn machine(revision: u8, entries: &[Vec<u8>]) -> Ram {
        let mut ram = Ram(std::vec![0; 0x100000]);
        let rsdp = 0xe0010;
        ram.put(rsdp, RSDP_SIGNATURE);
        ram.put(rsdp + 15, &[revision]);
        ram.put(rsdp + 16, &0x1000u32.to_le_bytes());
        ram.put(rsdp + 20, &36u32.to_le_bytes());
        ram.put(rsdp + 24, &0x2000u64.to_le_bytes());
        ram.checksum(rsdp, 20, 8);
        ram.checksum(rsdp, 36, 32);
        let mut rsdt = 0x4000u32.to_le_bytes().to_vec();
        rsdt.extend_from_slice(&(MADT_AT as u32).to_le_bytes());
        ram.sdt(0x1000, b"RSDT", &rsdt);
        let mut xsdt = 0x4000u64.to_le_bytes().to_vec();
        xsdt.extend_from_slice(&MADT_AT.to_le_bytes());
        ram.sdt(0x2000, b"XSDT", &xsdt);
        ram.sdt(0x4000, b"FACP", &[0; 16]);
        let mut madt = std::vec![0u8; 8];
        madt[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        entries.iter().for_each(|e| madt.extend_from_slice(e));
        ram.sdt(MADT_AT, b"APIC", &madt);
        ram
    }

    fn ids(ram: &Ram, rsdp: u64) -> Result<Vec<u32>, AcpiError> {
        let mut out = [0u32; 8];
        processors(ram, rsdp, &mut out).map(|n| out[..n].to_vec())
    }

    #[test]
    fn enabled_processors_of_both_kinds_through_the_xsdt_and_the_rsdt() {
        let ioapic = std::vec![1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
        let entries = [local_apic(0, 1), ioapic, local_apic(1, 1), local_apic(2, 2), x2apic(300, 1), x2apic(1, 1)];
        for revision in [0, 2] {
            let ram = machine(revision, &entries);
            assert_eq!(find_rsdp(&ram), Some(0xe0010));
            // The hot-plug slot (online capable, not enabled) and the duplicate are left out.
            assert_eq!(ids(&ram, 0xe0010), Ok(std::vec![0, 1, 300]), "revision {revision}");
        }
    }

    #[test]
    fn at_most_as_many_as_asked_for() {
        let ram = machine(2, &[local_apic(0, 1), local_apic(1, 1), local_apic(2, 1)]);
        let mut out = [0u32; 2];
        assert_eq!(processors(&ram, 0xe0010, &mut out), Ok(2));
        assert_eq!(out, [0, 1]);
    }

    #[test]
    fn the_rsdp_is_found_in_the_ebda_too() {
        let mut ram = machine(0, &[local_apic(0, 1)]);
        let rsdp = [0u8; 20];
        ram.put(0xe0010, &rsdp);
        let mut moved = RSDP_SIGNATURE.to_vec();
        moved.extend_from_slice(&[0; 8]);
        moved.extend_from_slice(&0x1000u32.to_le_bytes());
        ram.put(0x9fc40, &moved);
        ram.checksum(0x9fc40, 20, 8);
        assert_eq!(find_rsdp(&ram), None, "no EBDA pointer yet");
        ram.put(EBDA_POINTER, &0x9fc0u16.to_le_bytes());
        assert_eq!(find_rsdp(&ram), Some(0x9fc40));
        assert_eq!(ids(&ram, 0x9fc40), Ok(std::vec![0]));
    }

    #[test]
    fn damaged_tables_are_errors() {
        let good = machine(2, &[local_apic(0, 1), local_apic(1, 1)]);
        // A bad RSDP checksum; nothing at the address.
        let mut ram = Ram(good.0.clone());
        ram.0[0xe0010 + 9] ^= 1;
        assert_eq!(ids(&ram, 0xe0010), Err(AcpiError::Damaged("RSDP")));
        assert_eq!(ids(&good, 0x5000), Err(AcpiError::Damaged("RSDP")));
        // A bad XSDT checksum.
        let mut ram = Ram(good.0.clone());
        ram.0[0x2000 + 40] ^= 1;
        assert_eq!(ids(&ram, 0xe0010), Err(AcpiError::Damaged("XSDT")));
        // A bad MADT checksum, or a length past the end of memory.
        let mut ram = Ram(good.0.clone());
        ram.0[MADT_AT as usize + 50] ^= 1;
        assert_eq!(ids(&ram, 0xe0010), Err(AcpiError::Damaged("MADT")));
        let mut ram = Ram(good.0.clone());
        ram.put(MADT_AT + 4, &u32::MAX.to_le_bytes());
        assert_eq!(ids(&ram, 0xe0010), Err(AcpiError::Damaged("MADT")));
        // An entry of length 0 (which would loop forever), one running past the table, a processor entry too short.
        for bad in [std::vec![0u8, 0, 0, 0], std::vec![0u8, 200, 0, 0], std::vec![0u8, 4, 1, 1]] {
            let ram = machine(2, &[local_apic(0, 1), bad]);
            assert_eq!(ids(&ram, 0xe0010), Err(AcpiError::Damaged("MADT")));
        }
        // No MADT in the XSDT.
        let mut ram = Ram(good.0.clone());
        ram.put(MADT_AT, b"SSDT");
        assert_eq!(ids(&ram, 0xe0010), Err(AcpiError::NoMadt));
    }
}
