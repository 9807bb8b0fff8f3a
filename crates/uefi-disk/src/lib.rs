//! `kiln export --format raw|qcow2`: a GPT disk whose one partition, the EFI system partition, holds Kiln's UEFI
//! loader as the removable-media boot path (`\EFI\BOOT\BOOTX64.EFI`) and the exported PVH image it loads
//! (`\kiln\app.elf`, with the boot command line in `\kiln\cmdline`). OVMF and the clouds' UEFI firmware boot it
//! without any boot entry set up. The image itself is made by `kiln_vmm::export::pvh`; this crate only packs it.

mod esp;
mod gpt;
pub mod qcow2;
pub mod sparse;

pub use sparse::Disk;

#[cfg(test)]
#[path = "../../uefi-loader/src/plan.rs"]
#[allow(dead_code)]
mod loader_plan;
#[cfg(test)]
extern crate alloc;
#[cfg(test)]
mod loader_plan_tests;

/// Kiln's UEFI loader (crates/uefi-loader), a PE32+ UEFI application.
pub static LOADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-uefi-loader.efi"));

const MIB: u64 = 1 << 20;
/// The largest disk: 64 TiB, what EC2's and GCE's largest volumes hold (and far more than any image needs).
const MAX_SIZE: u64 = 64 << 40;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot make the EFI system partition's FAT file system")]
    Fat(#[source] std::io::Error),
    #[error("cannot write the GPT partition table")]
    Gpt(#[source] ::gpt::GptError),
    #[error("cannot put the EFI system partition on the disk")]
    Place(#[source] std::io::Error),
    #[error("cannot write the protective MBR")]
    Mbr(#[source] ::gpt::mbr::MBRError),
    #[error("the boot command line has a line break; it is one line")]
    CmdlineLines,
    #[error("a disk of {requested} bytes is too small for the image: it needs {needed} bytes")]
    TooSmall { requested: u64, needed: u64 },
    #[error("a disk of {requested} bytes is larger than the 64 TiB this writes")]
    TooLarge { requested: u64 },
}

/// The disk booting `payload` (an exported PVH ELF) with `cmdline` as its PVH command line, of `size` bytes when
/// given (rounded up to whole MiB), else as small as it fits.
pub fn disk(payload: &[u8], cmdline: &str, size: Option<u64>) -> Result<Disk, DiskError> {
    if cmdline.contains(['\n', '\r']) {
        return Err(DiskError::CmdlineLines);
    }
    let files = [("EFI/BOOT/BOOTX64.EFI", LOADER), ("kiln/app.elf", payload), ("kiln/cmdline", cmdline.as_bytes())];
    let partition = esp::build(&files).map_err(DiskError::Fat)?;
    // The partition starts at 1 MiB (the alignment partitioning tools use) and the backup GPT follows it.
    let needed = MIB + partition.len() as u64 + MIB;
    let total = match size {
        Some(requested) if requested < needed => return Err(DiskError::TooSmall { requested, needed }),
        Some(requested) if requested > MAX_SIZE => return Err(DiskError::TooLarge { requested }),
        Some(requested) => requested.next_multiple_of(MIB),
        None => needed,
    };
    gpt::disk(total, MIB, &partition)
}
