//! What the PVH loader tells us (`hvm_start_info`: the command line, the memory map, the ACPI RSDP), read while the
//! boot page tables map the first GiB, and what follows from it for the boot info: how much of the image's memory
//! is RAM, fresh randomness, and free memory cleared (firmware may have used it).

use crate::io::{cpuid, rdtsc};
use crate::{power, serial, Shared};
use kiln_abi::layout::{direct_map, page_align_down, HUGE_PAGE_SIZE};
use kiln_abi::pvh::{Handoff, MemmapEntry, StartInfo, MEMMAP_RAM, START_INFO_MAGIC};
use kiln_abi::BootInfo;

/// What the boot page tables reach.
const BOOT_MAPPED: u64 = 4 << 30;
const MAX_CMDLINE: usize = 4096;
const MAX_MEMMAP: usize = 128;
/// Memory the library OS needs beyond what the boot layout used, at the least.
const MIN_FREE: u64 = HUGE_PAGE_SIZE;

pub struct Start {
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    memmap: [MemmapEntry; MAX_MEMMAP],
    memmap_len: usize,
    /// The ACPI RSDP the loader named (0: none).
    rsdp: u64,
}

impl Start {
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    pub fn rsdp(&self) -> u64 {
        self.rsdp
    }

    /// Whether the loader's memory map says [phys, phys + len) is RAM (true without a memory map: PC machines have
    /// RAM below 640 KiB).
    pub fn is_ram(&self, phys: u64, len: u64) -> bool {
        let end = phys.saturating_add(len);
        self.memmap_len == 0
            || self.memmap[..self.memmap_len]
                .iter()
                .any(|e| e.kind == MEMMAP_RAM && e.addr <= phys && e.addr.saturating_add(e.size) >= end)
    }
}

/// Firmware's tables, read through the boot page tables.
pub struct Firmware;

impl kiln_abi::acpi::FirmwareMemory for Firmware {
    fn bytes(&self, phys: u64, len: u64) -> Option<&[u8]> {
        if phys.checked_add(len)? > BOOT_MAPPED {
            return None;
        }
        // SAFETY: mapped by the boot page tables (checked); firmware's tables are plain bytes, only read, at boot.
        Some(unsafe { core::slice::from_raw_parts(direct_map(phys) as *const u8, len as usize) })
    }
}

static START: Shared<Start> = Shared(core::cell::UnsafeCell::new(Start {
    cmdline: [0; MAX_CMDLINE],
    cmdline_len: 0,
    memmap: [MemmapEntry { addr: 0, size: 0, kind: 0, reserved: 0 }; MAX_MEMMAP],
    memmap_len: 0,
    rsdp: 0,
}));

/// `len` bytes at guest-physical `phys`, if the boot page tables map them.
fn boot_mapped(phys: u64, len: u64) -> Option<*const u8> {
    (phys != 0 && phys.checked_add(len)? <= BOOT_MAPPED).then(|| direct_map(phys) as *const u8)
}

fn read_obj<T: Copy>(phys: u64) -> Option<T> {
    let at = boot_mapped(phys, core::mem::size_of::<T>() as u64)?;
    // SAFETY: mapped (checked above) and any bit pattern is a valid T (plain integers).
    Some(unsafe { core::ptr::read_unaligned(at.cast::<T>()) })
}

/// Reads the start info at `phys` and the ACPI tables it points to.
pub fn read(phys: u64) -> &'static Start {
    let Some(info) = read_obj::<StartInfo>(phys).filter(|i| i.magic == START_INFO_MAGIC) else {
        power::fail("the loader passed no PVH start info (boot this image as a PVH kernel)");
    };
    // SAFETY: only the boot vCPU runs, and this is the only reference made while it is filled.
    let start = unsafe { &mut *START.0.get() };
    if info.cmdline_paddr != 0 {
        for i in 0..MAX_CMDLINE {
            match read_obj::<u8>(info.cmdline_paddr + i as u64) {
                Some(0) | None => break,
                Some(b) => {
                    start.cmdline[i] = b;
                    start.cmdline_len = i + 1;
                }
            }
        }
    }
    if info.version >= 1 {
        let n = (info.memmap_entries as usize).min(MAX_MEMMAP);
        for i in 0..n {
            let entry = info.memmap_paddr + (i * core::mem::size_of::<MemmapEntry>()) as u64;
            if let Some(e) = read_obj::<MemmapEntry>(entry) {
                start.memmap[start.memmap_len] = e;
                start.memmap_len += 1;
            }
        }
    }
    start.rsdp = info.rsdp_paddr;
    if let Some(port) = acpi_pm1a_control(info.rsdp_paddr) {
        power::set_acpi_control_port(port);
    }
    start
}

/// The FADT's PM1a control block port, found from the RSDP through the XSDT or RSDT (tables past the boot map are
/// not read).
fn acpi_pm1a_control(rsdp: u64) -> Option<u16> {
    let signature: [u8; 8] = read_obj(rsdp)?;
    if &signature != b"RSD PTR " {
        return None;
    }
    let revision: u8 = read_obj(rsdp + 15)?;
    let (table, entry_size) =
        if revision >= 2 { (read_obj::<u64>(rsdp + 24)?, 8) } else { (u64::from(read_obj::<u32>(rsdp + 16)?), 4) };
    let length: u32 = read_obj(table + 4)?;
    let entries = (u64::from(length).saturating_sub(36) / entry_size).min(64);
    for i in 0..entries {
        let at = table + 36 + i * entry_size;
        let sdt = if entry_size == 8 { read_obj::<u64>(at)? } else { u64::from(read_obj::<u32>(at)?) };
        if read_obj::<[u8; 4]>(sdt)? == *b"FACP" {
            let port: u32 = read_obj(sdt + 64)?;
            return u16::try_from(port).ok().filter(|&p| p != 0);
        }
    }
    None
}

/// The end of the RAM range holding the boot layout's start (where the export put it), grown over ranges that touch
/// it (`u64::MAX` when the loader gave no memory map: the image's own size is then trusted).
pub fn ram_reach(start: &Start) -> u64 {
    if start.memmap_len == 0 {
        return u64::MAX;
    }
    let mut reach = crate::handoff().layout_phys;
    let mut grown = true;
    let mut rounds = 0;
    while grown && rounds < MAX_MEMMAP {
        grown = false;
        rounds += 1;
        for e in &start.memmap[..start.memmap_len] {
            let e_end = e.addr.saturating_add(e.size);
            if e.kind == MEMMAP_RAM && e.addr <= reach && e_end > reach {
                reach = e_end;
                grown = true;
            }
        }
    }
    page_align_down(reach)
}

/// Ends the VM, saying so, unless RAM reaches `needed`.
pub fn require_ram(start: &Start, needed: u64, exported: Option<u64>) {
    let reach = ram_reach(start);
    if reach >= needed {
        return;
    }
    serial::write_str("kiln: this image needs more RAM than the loader gave (");
    serial::write_dec(reach >> 20);
    serial::write_str(" MiB from address 0)");
    if let Some(size) = exported {
        serial::write_str("; it was exported for ");
        serial::write_dec(size >> 20);
        serial::write_str(" MiB");
    }
    serial::write_str(": give it more (QEMU: -m)\n");
    power::exit(1);
}

/// Makes the boot info's memory what the loader's memory map says is RAM: the image was made for `mem_size` bytes,
/// and the library OS gets the RAM from the end of the boot layout up to that, or to the end of the RAM range the
/// layout lies in if that comes first (firmware keeps its tables at the top of RAM).
pub fn fit_memory(boot: &mut BootInfo, start: &Start) {
    require_ram(start, boot.free_phys_start.saturating_add(MIN_FREE), Some(boot.mem_size));
    boot.mem_size = boot.mem_size.min(ram_reach(start));
}

/// Mixes fresh entropy into the random seed and `AT_RANDOM`: RDRAND where the CPU has it, the TSC and the time.
/// (Without RDRAND this is weaker than Kiln's VMM, which seeds from the host's getrandom.)
pub fn refresh_randomness(boot: &mut BootInfo, handoff: &Handoff) {
    let has_rdrand = cpuid(1, 0)[2] & (1 << 30) != 0;
    let now = boot.boot_realtime_ns;
    let mix = |bytes: &mut [u8], salt: u64| {
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut word = rdtsc().rotate_left(17 * i as u32) ^ salt ^ now;
            if has_rdrand {
                word ^= rdrand().unwrap_or(0);
            }
            for (b, w) in chunk.iter_mut().zip(word.to_le_bytes()) {
                *b ^= w;
            }
        }
    };
    mix(&mut boot.random_seed, 0x9e37_79b9_7f4a_7c15);
    if handoff.at_random_phys != 0 {
        if let Some(at) = boot_mapped(handoff.at_random_phys, 16) {
            // SAFETY: the export found the program's AT_RANDOM bytes there, in RAM the boot tables map.
            let bytes = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, 16) };
            mix(bytes, 0xd1b5_4a32_d192_ed03);
        }
    }
}

fn rdrand() -> Option<u64> {
    for _ in 0..10 {
        let (value, ok): (u64, u8);
        // SAFETY: RDRAND writes a register and CF; the CPU has it (checked by the caller).
        unsafe { core::arch::asm!("rdrand {}", "setc {}", out(reg) value, out(reg_byte) ok, options(nomem, nostack)) };
        if ok != 0 {
            return Some(value);
        }
    }
    None
}

/// Clears the memory the library OS will allocate from, which it expects zeroed (Kiln's VMM gives fresh memory).
pub fn zero_free_memory(boot: &BootInfo) {
    let start = boot.free_phys_start;
    let len = boot.mem_size.saturating_sub(start);
    // SAFETY: [free_phys_start, mem_size) is RAM (`fit_memory`) in the direct map, used by nothing yet.
    unsafe { core::ptr::write_bytes(direct_map(start) as *mut u8, 0, len as usize) };
}
