//! Hypercalls as a hostile guest makes them: any number, a block anywhere (in RAM or not), and guest memory holding
//! whatever the fuzzer wrote (segment arrays, trace records, messages) before the VMM reads it.
#![no_main]

use kiln_fuzz::{Poke, Sink};
use kiln_vmm::hypercall::{self, Action};
use kiln_vmm::memory::GuestRam;
use kiln_vmm::park::Parker;
use kiln_vmm::stdin::StdinRelay;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 1 << 20;

#[derive(Arbitrary, Debug)]
struct Input {
    /// The hypercall number (mostly a known one, sometimes anything).
    nr: u8,
    any_nr: Option<u32>,
    /// Where the block is: inside RAM (modulo its size) unless `block_anywhere`.
    block: u64,
    block_anywhere: bool,
    /// The block's six arguments, written into RAM where it lies.
    args: [u64; 6],
    tracing: bool,
    /// Whether the VM has a stdin relay (`ReadStdin` reads from it, or finds none).
    stdin: bool,
    pokes: Vec<Poke>,
    /// Where to read the syscall counters from at the end.
    stats: u64,
}

fuzz_target!(|input: Input| {
    let ram = GuestRam::new(RAM).expect("1 MiB of guest memory");
    for poke in &input.pokes {
        let (at, bytes) = poke.place(RAM);
        ram.write(at, bytes).expect("the poke lies in RAM");
    }
    let block = if input.block_anywhere { input.block } else { input.block % RAM };
    for (i, arg) in input.args.iter().enumerate() {
        let _ = ram.write(block.wrapping_add(i as u64 * 8), &arg.to_le_bytes());
    }
    let nr = input.any_nr.unwrap_or(u32::from(input.nr % 15));
    // Two vCPUs' parkers; the calling vCPU is none of them, so that a Wait returns at once instead of sleeping
    // for the time the guest asked (the sleep is what it asked for, not a hang).
    let parkers = [Parker::default(), Parker::default()];
    let relay = input.stdin.then(|| StdinRelay::new(&ram, 0));
    let action =
        hypercall::handle(&ram, block, nr, (&Sink, input.tracing, relay.as_ref(), None), parkers.len(), &parkers);
    if let Action::Stop(why) = &action {
        assert!(!why.is_empty());
    }
    let _ = hypercall::read_stats(&ram, input.stats);
});
