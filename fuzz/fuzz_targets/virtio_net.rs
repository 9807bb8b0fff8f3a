//! The virtio-net card as a hostile driver programs it, through its register window: the harness sets it up as the
//! library OS does (or not), then the fuzzer writes descriptors (anywhere, any length, any flags, loops), available
//! rings and indexes, raw memory and registers, notifies, and has the VMM pump: send what the transmit queue holds
//! and deliver the frames a fake backend has (the fuzzer's) into the receive queue.
#![no_main]

use kiln_fuzz::{apply_to_memory, register_bytes, set_up, DriverOp, VIRTIO_RAM};
use kiln_vmm::netcard::NetCard;
use kiln_vmm::virtio::net::Backend;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Arbitrary, Debug)]
struct Input {
    set_up: bool,
    size: u16,
    event_idx: bool,
    /// Frames the outside world sends the guest.
    frames: Vec<Vec<u8>>,
    ops: Vec<DriverOp>,
}

/// A backend that hands out the fuzzer's frames and takes whatever the guest sends.
struct Frames(VecDeque<Vec<u8>>);

impl Backend for Frames {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        std::hint::black_box(frame);
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        Ok(self.0.pop_front().map(|f| {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            n
        }))
    }
    fn ready_fd(&self) -> std::os::fd::RawFd {
        -1
    }
}

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), VIRTIO_RAM as usize)]).unwrap();
    let frames = Frames(input.frames.into_iter().take(64).collect());
    let card = NetCard::new(Box::new(frames), [0x52, 0x54, 0, 0x12, 0x34, 0x56], VIRTIO_RAM);
    let mut stopped = false;
    if input.set_up {
        set_up(
            |off, v| stopped |= card.write(VIRTIO_RAM + off, &v.to_le_bytes(), &mem).is_err(),
            2,
            input.size,
            input.event_idx,
        );
    }
    for op in input.ops.iter().take(256) {
        if stopped || apply_to_memory(op, &mem, 2) {
            continue;
        }
        stopped = match op {
            DriverOp::Write { offset, value, width } => {
                let at = VIRTIO_RAM + u64::from(*offset) % 0x1000;
                card.write(at, &register_bytes(*value, *width), &mem).is_err()
            }
            DriverOp::Read { offset, width } => {
                let mut data = register_bytes(0, *width);
                card.read(VIRTIO_RAM + u64::from(*offset) % 0x1000, &mut data);
                false
            }
            _ => card.send_queued(&mem).is_err() || card.deliver(&mem, || {}).is_err(),
        };
    }
    let _ = card.stats();
});
