//! The disk around the EFI system partition: a protective MBR and GPT headers and entries (the `gpt` crate), with the
//! partition's bytes at `start`.

use crate::sparse::Disk;
use crate::DiskError;
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types;

const SECTOR: u64 = 512;

/// A `total`-byte disk with one EFI system partition holding `partition`, which starts at byte `start`.
pub fn disk(total: u64, start: u64, partition: &[u8]) -> Result<Disk, DiskError> {
    let mut device = Disk::new(total);
    let sectors = total / SECTOR;
    let mbr = ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut device).map_err(DiskError::Mbr)?;
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(device, None)
        .map_err(DiskError::Gpt)?;
    let id = gpt
        .add_partition("EFI system partition", partition.len() as u64, partition_types::EFI, 0, Some(start / SECTOR))
        .map_err(DiskError::Gpt)?;
    // The first aligned free sector of an empty table is `start`; anything else would misplace the bytes below.
    let placed = gpt.partitions().get(&id).map(|p| p.first_lba * SECTOR);
    assert_eq!(placed, Some(start), "the EFI system partition starts where its bytes go");
    let device = gpt.write().map_err(DiskError::Gpt)?;
    let mut device = device;
    device.write_at(start, partition).map_err(DiskError::Place)?;
    Ok(device)
}
