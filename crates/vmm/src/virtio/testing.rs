//! What the devices' unit tests share: descriptors as a driver writes them, and a small guest memory.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
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
