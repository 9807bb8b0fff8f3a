//! What the devices' unit tests share: descriptors as a driver writes them, and a small guest memory.

use super::{MmioTransport, VirtioDevice};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// VIRTQ_DESC_F_WRITE: the device writes this buffer.
pub const WRITE: u16 = 2;
/// VIRTQ_DESC_F_NEXT: the chain goes on at `next`.
pub const NEXT: u16 = 1;

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// 1 MiB of guest memory from address 0.
pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// Starts `device` through its registers as a driver would: VIRTIO_F_VERSION_1 only, queue `i` of 16 entries on the
/// rings of `queues[i]`.
pub fn start<D: VirtioDevice>(
    device: D,
    queues: &[&MockSplitQueue<'_, GuestMemoryMmap>],
    mem: &GuestMemoryMmap,
) -> MmioTransport<D> {
    let mut t = MmioTransport::new(device);
    set_up(|off, v| t.write(off, &v.to_le_bytes(), mem), queues);
    assert!(t.is_active());
    t
}

/// The register writes of [`start`], through `w(offset, value)`.
pub fn set_up(mut w: impl FnMut(u64, u32), queues: &[&MockSplitQueue<'_, GuestMemoryMmap>]) {
    w(0x70, 1 | 2);
    w(0x24, 1);
    w(0x20, 1);
    w(0x70, 1 | 2 | 8);
    for (i, q) in queues.iter().enumerate() {
        w(0x30, i as u32);
        w(0x38, 16);
        for (reg, addr) in [(0x80, q.desc_table_addr()), (0x90, q.avail_addr()), (0xa0, q.used_addr())] {
            w(reg, addr.0 as u32);
            w(reg + 4, (addr.0 >> 32) as u32);
        }
        w(0x44, 1);
    }
    w(0x70, 1 | 2 | 8 | 4);
}
