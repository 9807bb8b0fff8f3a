//! Kiln's UEFI loader (`kiln export --format raw|qcow2`): reads the exported PVH ELF (`\kiln\app.elf`) and the boot
//! command line (`\kiln\cmdline`, optional) from the EFI system partition it was started from, loads the ELF's
//! segments at their physical addresses, ends boot services and enters the image as a PVH loader does: 32-bit
//! protected mode without paging at the PVH note's entry, `hvm_start_info` (command line, memory map from UEFI's,
//! ACPI RSDP) in `%ebx`. From there the image's platform layer (`kernel/pvh`) runs as under QEMU's `-kernel`.
#![no_std]
#![no_main]

extern crate alloc;

mod handoff;
mod plan;

use alloc::vec::Vec;
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::fs::FileSystem;
use uefi::prelude::*;
use uefi::println;
use uefi::table::cfg::ConfigTableEntry;

const PAYLOAD: &uefi::CStr16 = cstr16!("\\kiln\\app.elf");
const CMDLINE: &uefi::CStr16 = cstr16!("\\kiln\\cmdline");

#[entry]
fn main() -> Status {
    if uefi::helpers::init().is_err() {
        return Status::LOAD_ERROR;
    }
    match load() {
        Ok(never) => match never {},
        Err(message) => {
            println!("kiln: {message}");
            Status::LOAD_ERROR
        }
    }
}

/// Loads the payload and enters it; returns only to say why it could not.
fn load() -> Result<core::convert::Infallible, alloc::string::String> {
    use alloc::format;
    let mut fs = FileSystem::new(
        boot::get_image_file_system(boot::image_handle())
            .map_err(|e| format!("cannot open the partition this loader was started from: {e}"))?,
    );
    let elf = fs.read(PAYLOAD).map_err(|e| format!("cannot read {PAYLOAD} from the EFI system partition: {e}"))?;
    let cmdline: Vec<u8> = if fs.try_exists(CMDLINE).unwrap_or(false) {
        fs.read(CMDLINE).map_err(|e| format!("cannot read {CMDLINE}: {e}"))?
    } else {
        Vec::new()
    };
    drop(fs);
    let payload = plan::parse(&elf).map_err(|e| format!("{PAYLOAD} {e}"))?;

    // The image is laid out for fixed physical addresses: claim them (what is free now, and what boot services hold
    // until they end), and stage the image below 4 GiB, whence the last step copies it into place with paging off.
    let span = payload.span.clone();
    claim(&span)?;
    let pages = ((span.end - span.start) / plan::PAGE) as usize;
    let staged = boot::allocate_pages(AllocateType::MaxAddress(0xffff_ffff), MemoryType::LOADER_DATA, pages)
        .map_err(|e| format!("no memory below 4 GiB to stage the image in ({} pages: {})", pages, e.status()))?;
    // SAFETY: the pages were just allocated for us, at their identity-mapped physical address.
    let image = unsafe { core::slice::from_raw_parts_mut(staged.as_ptr(), pages * plan::PAGE as usize) };
    image.fill(0);
    for segment in &payload.segments {
        let at = (segment.phys - span.start) as usize;
        image[at..at + segment.file.len()].copy_from_slice(&elf[segment.file.clone()]);
    }
    drop(elf);

    let rsdp = uefi::system::with_config_table(|entries| {
        let find = |guid| entries.iter().find(|e| e.guid == guid).map(|e| e.address as u64);
        find(ConfigTableEntry::ACPI2_GUID).or_else(|| find(ConfigTableEntry::ACPI_GUID)).unwrap_or(0)
    });
    let mut low = handoff::LowPage::allocate().map_err(|e| format!("no memory below 1 MiB for the start info: {e}"))?;
    low.set_cmdline(&cmdline);
    drop(cmdline);

    // SAFETY: nothing that belongs to boot services is used after this: the file system protocol and every pool
    // allocation were dropped above, and the rest of the way writes only to pages allocated as loader data.
    let memory_map = unsafe { boot::exit_boot_services(None) };
    low.set_memory_map(&memory_map, rsdp);
    // SAFETY: the image is staged, the low page holds the start info, and boot services have ended: the firmware
    // no longer needs the CPU or the memory the image goes to.
    unsafe { low.enter(staged.as_ptr() as u64, span.start, span.end - span.start, payload.entry32) }
}

/// Makes the image's span ours: its free pages allocated as loader data, the rest held by boot services (free once
/// they end); anything else there (the firmware's runtime or ACPI memory, another image's data, a hole) stops the
/// boot, saying what.
fn claim(span: &core::ops::Range<u64>) -> Result<(), alloc::string::String> {
    use alloc::format;
    use uefi::mem::memory_map::MemoryMap;
    let map = boot::memory_map(MemoryType::LOADER_DATA).map_err(|e| format!("cannot read the memory map: {e}"))?;
    let mut free = Vec::new();
    let mut covered = 0;
    for d in map.entries() {
        let end = d.phys_start.saturating_add(d.page_count.saturating_mul(plan::PAGE));
        let (from, to) = (d.phys_start.max(span.start), end.min(span.end));
        if from >= to {
            continue;
        }
        covered += to - from;
        match d.ty {
            MemoryType::CONVENTIONAL => free.push((from, to)),
            MemoryType::BOOT_SERVICES_CODE | MemoryType::BOOT_SERVICES_DATA => {}
            _ => return Err(in_the_way(span)),
        }
    }
    drop(map);
    if covered != span.end - span.start {
        return Err(format!(
            "the image is laid out at {:#x}-{:#x}, which is not all RAM here (give the VM more memory)",
            span.start, span.end
        ));
    }
    for (from, to) in free {
        let pages = ((to - from) / plan::PAGE) as usize;
        boot::allocate_pages(AllocateType::Address(from), MemoryType::LOADER_DATA, pages)
            .map_err(|e| format!("cannot claim {from:#x}-{to:#x} for the image: {}", e.status()))?;
    }
    Ok(())
}

/// Says what lies in `span`, which the image is laid out for, that the loader cannot have.
fn in_the_way(span: &core::ops::Range<u64>) -> alloc::string::String {
    use alloc::format;
    use uefi::mem::memory_map::MemoryMap;
    let mut said = format!("the image is laid out at {:#x}-{:#x}, where the firmware keeps", span.start, span.end);
    if let Ok(map) = boot::memory_map(MemoryType::LOADER_DATA) {
        for d in map.entries() {
            let end = d.phys_start.saturating_add(d.page_count.saturating_mul(plan::PAGE));
            let usable = [MemoryType::CONVENTIONAL, MemoryType::BOOT_SERVICES_CODE, MemoryType::BOOT_SERVICES_DATA];
            if d.phys_start < span.end && end > span.start && !usable.contains(&d.ty) {
                said.push_str(&format!(" {:?} at {:#x}-{:#x},", d.ty, d.phys_start, end));
            }
        }
    }
    said.push_str(" give the VM more memory");
    said
}
