//! A qcow2 (version 2) image of a raw disk: QEMU's format, which OpenStack and several clouds import. Written here
//! rather than through `qemu-img convert`, so that `kiln export` needs no QEMU on the host; no crate writes qcow2.
//! Only the clusters that hold something are stored, each referenced once: header, L1 table, L2 tables, refcount
//! table and blocks, then the data, in that order.

use crate::sparse::{Disk, BLOCK};

/// 64 KiB clusters, QEMU's default: the sparse disk's blocks.
const CLUSTER_BITS: u32 = 16;
const _: () = assert!(1 << CLUSTER_BITS == BLOCK);
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 8-byte L1/L2 entries and refcount table entries; 16-bit refcounts.
const ENTRIES_PER_CLUSTER: u64 = CLUSTER / 8;
const REFCOUNTS_PER_CLUSTER: u64 = CLUSTER / 2;
/// "Refcount is exactly one": set on every L1 and L2 entry, as QEMU does for clusters not shared with snapshots.
const COPIED: u64 = 1 << 63;

/// The qcow2 image of `disk`, of the same virtual size.
pub fn from_disk(disk: &Disk) -> Vec<u8> {
    let size = disk.size();
    let virtual_clusters = size.div_ceil(CLUSTER);
    let data: Vec<(u64, &[u8])> = disk.data().map(|(offset, bytes)| (offset / CLUSTER, bytes)).collect();
    let used: Vec<u64> = data.iter().map(|&(cluster, _)| cluster).collect();
    let l1_entries = virtual_clusters.div_ceil(ENTRIES_PER_CLUSTER).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    let mut l2_tables: Vec<u64> = used.iter().map(|c| c / ENTRIES_PER_CLUSTER).collect();
    l2_tables.dedup();
    // The refcount structures count themselves: grow them until they cover every cluster of the file.
    let fixed = 1 + l1_clusters + l2_tables.len() as u64 + used.len() as u64;
    let (mut table_clusters, mut blocks) = (1u64, 1u64);
    loop {
        let total = fixed + table_clusters + blocks;
        let need_blocks = total.div_ceil(REFCOUNTS_PER_CLUSTER);
        let need_table = (need_blocks * 8).div_ceil(CLUSTER);
        if need_blocks <= blocks && need_table <= table_clusters {
            break;
        }
        blocks = blocks.max(need_blocks);
        table_clusters = table_clusters.max(need_table);
    }
    let l1_at = 1;
    let l2_at = l1_at + l1_clusters;
    let table_at = l2_at + l2_tables.len() as u64;
    let blocks_at = table_at + table_clusters;
    let data_at = blocks_at + blocks;
    let total = data_at + used.len() as u64;

    let mut out = vec![0u8; (total * CLUSTER) as usize];
    let put =
        |out: &mut Vec<u8>, at: u64, value: &[u8]| out[at as usize..at as usize + value.len()].copy_from_slice(value);
    // The header.
    put(&mut out, 0, b"QFI\xfb");
    put(&mut out, 4, &2u32.to_be_bytes());
    put(&mut out, 20, &CLUSTER_BITS.to_be_bytes());
    put(&mut out, 24, &size.to_be_bytes());
    put(&mut out, 36, &(l1_entries as u32).to_be_bytes());
    put(&mut out, 40, &(l1_at * CLUSTER).to_be_bytes());
    put(&mut out, 48, &(table_at * CLUSTER).to_be_bytes());
    put(&mut out, 56, &(table_clusters as u32).to_be_bytes());
    // L1 entries to the L2 tables, L2 entries to the data.
    for (i, &table) in l2_tables.iter().enumerate() {
        let l2 = (l2_at + i as u64) * CLUSTER;
        put(&mut out, l1_at * CLUSTER + table * 8, &(l2 | COPIED).to_be_bytes());
    }
    for (i, &(cluster, bytes)) in data.iter().enumerate() {
        let table = l2_tables.iter().position(|&t| t == cluster / ENTRIES_PER_CLUSTER).expect("listed above") as u64;
        let entry = (l2_at + table) * CLUSTER + (cluster % ENTRIES_PER_CLUSTER) * 8;
        let at = (data_at + i as u64) * CLUSTER;
        put(&mut out, entry, &(at | COPIED).to_be_bytes());
        put(&mut out, at, bytes);
    }
    // Every cluster of the file is used once.
    for block in 0..blocks {
        put(&mut out, table_at * CLUSTER + block * 8, &((blocks_at + block) * CLUSTER).to_be_bytes());
    }
    for cluster in 0..total {
        put(&mut out, blocks_at * CLUSTER + cluster * 2, &1u16.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_of(raw: &[u8]) -> Disk {
        let mut disk = Disk::new(raw.len() as u64);
        disk.write_at(0, raw).unwrap();
        disk
    }

    fn be64(image: &[u8], at: u64) -> u64 {
        u64::from_be_bytes(image[at as usize..at as usize + 8].try_into().unwrap())
    }

    /// Reads virtual byte `offset` through the image's tables, as a qcow2 reader does.
    fn read(image: &[u8], offset: u64) -> u8 {
        let l1 = be64(image, 40);
        let cluster = offset / CLUSTER;
        let l2 = be64(image, l1 + cluster / ENTRIES_PER_CLUSTER * 8) & !COPIED;
        if l2 == 0 {
            return 0;
        }
        let data = be64(image, l2 + cluster % ENTRIES_PER_CLUSTER * 8) & !COPIED;
        if data == 0 {
            return 0;
        }
        image[(data + offset % CLUSTER) as usize]
    }

    #[test]
    fn only_clusters_with_data_are_stored_and_read_back() {
        let mut raw = vec![0u8; 3 << 20];
        raw[5] = 1;
        raw[(1 << 20) + 77] = 2;
        raw[(3 << 20) - 1] = 3;
        let image = from_disk(&disk_of(&raw));
        assert_eq!(&image[..4], b"QFI\xfb");
        assert_eq!(be64(&image, 24), 3 << 20);
        // Header, L1, one L2, refcount table and block, three data clusters.
        assert_eq!(image.len() as u64, 8 * CLUSTER);
        for (at, &byte) in raw.iter().enumerate().step_by(4093) {
            assert_eq!(read(&image, at as u64), byte, "byte {at}");
        }
        for at in [5, (1 << 20) + 77, (3 << 20) - 1] {
            assert_eq!(read(&image, at), raw[at as usize]);
        }
    }

    #[test]
    fn refcounts_cover_every_cluster_once() {
        let raw: Vec<u8> = (0..(5u32 << 20) + 123).map(|i| (i % 251) as u8 | 1).collect();
        let image = from_disk(&disk_of(&raw));
        let clusters = image.len() as u64 / CLUSTER;
        let table = be64(&image, 48);
        let block = be64(&image, table);
        for c in 0..clusters {
            let at = (block + c * 2) as usize;
            assert_eq!(u16::from_be_bytes([image[at], image[at + 1]]), 1, "cluster {c}");
        }
        assert_eq!(read(&image, (5 << 20) + 122), raw[(5 << 20) + 122]);
    }
}
