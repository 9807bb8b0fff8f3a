//! What Kiln's fuzz targets share: guest memory filled from the fuzzer's input, and a console that keeps nothing.

use libfuzzer_sys::arbitrary::{self, Arbitrary};

/// Bytes a target writes into guest memory before it acts: at `at` (taken modulo the memory's size), as a guest's
/// own stores would put them.
#[derive(Arbitrary, Debug)]
pub struct Poke {
    pub at: u32,
    pub bytes: Vec<u8>,
}

impl Poke {
    /// Where the poke lands in memory of `size` bytes, and the bytes that fit there.
    pub fn place(&self, size: u64) -> (u64, &[u8]) {
        let at = u64::from(self.at) % size;
        let room = (size - at) as usize;
        (at, &self.bytes[..self.bytes.len().min(room)])
    }
}

/// A console that counts what a guest writes and traces, and keeps none of it.
#[derive(Default)]
pub struct Sink;

impl kiln_vmm::Console for Sink {
    fn write(&self, _fd: u64, bytes: &[u8]) -> std::io::Result<()> {
        std::hint::black_box(bytes);
        Ok(())
    }
    fn trace(&self, line: &str) {
        std::hint::black_box(line);
    }
}

/// Guest memory of the virtio targets: 64 KiB from guest-physical 0, the device's register window right after it.
pub const VIRTIO_RAM: u64 = 0x1_0000;
/// Where the harness's driver puts queue `q`'s descriptor table, available ring and used ring (a page each).
pub fn ring_addrs(q: u64) -> [u64; 3] {
    let base = q * 0x3000;
    [base, base + 0x1000, base + 0x2000]
}

/// What a hostile driver does, one step at a time.
#[derive(Arbitrary, Debug)]
pub enum DriverOp {
    /// Writes descriptor `index` of queue `queue`'s table (`addr` often inside RAM, by the fuzzer's choice).
    Desc { queue: u8, index: u8, addr: u64, len: u32, flags: u16, next: u16 },
    /// Puts `head` in slot `slot` of queue `queue`'s available ring.
    Avail { queue: u8, slot: u8, head: u16 },
    /// Sets queue `queue`'s available index (and so says how many chains are new).
    AvailIdx { queue: u8, idx: u16 },
    /// Any bytes anywhere in RAM.
    Poke(Poke),
    /// A register write of any width at any offset of the window (a notification, a reset, new ring addresses).
    Write { offset: u16, value: u32, width: u8 },
    /// A register read.
    Read { offset: u16, width: u8 },
    /// What the VMM does between exits: the network card sends what is queued, takes what the backend has.
    Pump,
}

/// The register writes a driver makes to set a device up (status, VIRTIO_F_VERSION_1 and, if `event_idx`,
/// VIRTIO_RING_F_EVENT_IDX, `queues` queues of `size` entries at [`ring_addrs`]), through `write(offset, value)`.
pub fn set_up(mut write: impl FnMut(u64, u32), queues: u64, size: u16, event_idx: bool) {
    write(0x70, 0);
    write(0x70, 1 | 2);
    write(0x24, 0);
    write(0x20, if event_idx { 1 << 29 } else { 0 });
    write(0x24, 1);
    write(0x20, 1);
    write(0x70, 1 | 2 | 8);
    for q in 0..queues {
        write(0x30, q as u32);
        write(0x38, u32::from(size));
        for (reg, addr) in [0x80, 0x90, 0xa0].into_iter().zip(ring_addrs(q)) {
            write(reg, addr as u32);
            write(reg + 4, (addr >> 32) as u32);
        }
        write(0x44, 1);
    }
    write(0x70, 1 | 2 | 8 | 4);
}

/// Carries out the memory side of `op` (descriptors, rings, pokes) on `mem`; false for a register access or a pump,
/// which the target makes itself.
pub fn apply_to_memory(op: &DriverOp, mem: &vm_memory::GuestMemoryMmap, queues: u64) -> bool {
    use vm_memory::{Bytes, GuestAddress};
    let ring = |queue: u8| ring_addrs(u64::from(queue) % queues);
    match op {
        DriverOp::Desc { queue, index, addr, len, flags, next } => {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            let _ = mem.write_slice(&raw, GuestAddress(ring(*queue)[0] + u64::from(*index) * 16));
        }
        DriverOp::Avail { queue, slot, head } => {
            let _ = mem.write_obj(*head, GuestAddress(ring(*queue)[1] + 4 + u64::from(*slot) * 2));
        }
        DriverOp::AvailIdx { queue, idx } => {
            let _ = mem.write_obj(*idx, GuestAddress(ring(*queue)[1] + 2));
        }
        DriverOp::Poke(poke) => {
            let (at, bytes) = poke.place(VIRTIO_RAM);
            let _ = mem.write_slice(bytes, GuestAddress(at));
        }
        _ => return false,
    }
    true
}

/// The bytes of a register access of `width` (1, 2, 4 or 8; anything else is taken as 4) holding `value`.
pub fn register_bytes(value: u32, width: u8) -> Vec<u8> {
    let width = match width % 5 {
        0 | 3 => 4,
        w => 1 << (w - 1),
    };
    let mut bytes = u64::from(value).to_le_bytes().to_vec();
    bytes.truncate(width);
    bytes
}
