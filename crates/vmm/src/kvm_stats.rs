//! One of KVM's per-vCPU statistics, read through its binary statistics file (`KVM_GET_STATS_FD`, Linux 5.14+):
//! `pf_fixed`, the guest page faults KVM resolved by filling in a mapping. On shadow paging (`kvm_pvm`) that is every
//! first touch of a guest page and every fault the guest's page tables cause; with EPT/NPT, a first touch of guest
//! memory. It is what `--stats` calls shadow page faults, and what tests about page-table bits can count.

use kvm_ioctls::VcpuFd;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;
/// The statistic read: faults KVM fixed by installing a mapping.
const FAULTS_FIXED: &str = "pf_fixed";
/// More descriptors than any KVM has, and longer names: bounds on what is read from the file.
const MAX_DESCRIPTORS: u64 = 4096;
const MAX_NAME: u64 = 4096;
/// `struct kvm_stats_header`: six `u32`s (flags, name_size, num_desc, id_offset, desc_offset, data_offset).
const HEADER_SIZE: usize = 24;
/// `struct kvm_stats_desc` before its name: flags (u32), exponent (s16), size (u16), offset (u32), bucket_size (u32).
const DESC_SIZE: u64 = 16;

/// A vCPU's fixed-fault counter, open for reading while the vCPU runs on another thread.
pub struct FaultCounter {
    file: File,
    /// Where the counter's value lies in the file.
    offset: u64,
}

impl FaultCounter {
    /// Opens `vcpu`'s statistics and finds the counter; None where KVM has no binary statistics or no such counter.
    pub fn open(vcpu: &VcpuFd) -> Option<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new descriptor or -1; nothing is passed to it.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).ok()?;
        let field = |i: usize| u64::from(u32::from_ne_bytes(header[i * 4..i * 4 + 4].try_into().unwrap_or_default()));
        let (name_size, num_desc, desc_offset, data_offset) = (field(1), field(2), field(4), field(5));
        if name_size > MAX_NAME {
            return None;
        }
        // All descriptors in one read: this runs at every boot.
        let desc_len = (DESC_SIZE + name_size) as usize;
        let mut descs = vec![0u8; desc_len * num_desc.min(MAX_DESCRIPTORS) as usize];
        file.read_exact_at(&mut descs, desc_offset).ok()?;
        for desc in descs.chunks_exact(desc_len) {
            let name = desc[DESC_SIZE as usize..].split(|&b| b == 0).next().unwrap_or_default();
            let size = u16::from_ne_bytes([desc[6], desc[7]]);
            if name == FAULTS_FIXED.as_bytes() && size >= 1 {
                let offset = u64::from(u32::from_ne_bytes([desc[8], desc[9], desc[10], desc[11]]));
                return Some(Self { file, offset: data_offset + offset });
            }
        }
        None
    }

    /// The counter's value now.
    pub fn read(&self) -> Option<u64> {
        let mut bytes = [0u8; 8];
        self.file.read_exact_at(&mut bytes, self.offset).ok()?;
        Some(u64::from_ne_bytes(bytes))
    }
}
