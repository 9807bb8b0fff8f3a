//! The virtio-blk device as a hostile driver programs it, through its register window: the harness sets it up as the
//! library OS does (or not), then the fuzzer writes descriptors (anywhere, any length, any flags, loops), available
//! rings and indexes, raw memory and registers, and notifies. Requests go to a scratch file of 64 KiB.
#![no_main]

use kiln_fuzz::{apply_to_memory, register_bytes, set_up, DriverOp, VIRTIO_RAM};
use kiln_vmm::disk::Disk;
use kiln_vmm::virtio::blk::Blk;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::sync::OnceLock;
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Whether the harness sets the device up first, with queues of `size` entries.
    set_up: bool,
    size: u16,
    event_idx: bool,
    ops: Vec<DriverOp>,
}

/// The volume's file: 64 KiB, created once and unlinked at once (the fuzzer writes to it from every input).
fn volume() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("kiln-fuzz-blk-{}", std::process::id()));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(VIRTIO_RAM).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    })
}

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), VIRTIO_RAM as usize)]).unwrap();
    let blk = Blk::new(volume().try_clone().unwrap(), "fuzz").unwrap();
    let disk = Disk::new(blk, VIRTIO_RAM);
    let mut stopped = false;
    if input.set_up {
        set_up(
            |off, v| stopped |= disk.write(VIRTIO_RAM + off, &v.to_le_bytes(), &mem).is_err(),
            1,
            input.size,
            input.event_idx,
        );
    }
    for op in input.ops.iter().take(256) {
        if stopped || apply_to_memory(op, &mem, 1) {
            continue;
        }
        match op {
            DriverOp::Write { offset, value, width } => {
                let at = VIRTIO_RAM + u64::from(*offset) % 0x1000;
                // The VM stops at the first error: what follows would not run.
                stopped = disk.write(at, &register_bytes(*value, *width), &mem).is_err();
            }
            DriverOp::Read { offset, width } => {
                let mut data = register_bytes(0, *width);
                disk.read(VIRTIO_RAM + u64::from(*offset) % 0x1000, &mut data);
            }
            _ => {
                // A notification of queue 0: what a vCPU's `out` to the notify register does.
                stopped = disk.write(VIRTIO_RAM + 0x50, &0u32.to_le_bytes(), &mem).is_err();
            }
        }
    }
    let _ = disk.stats();
});
