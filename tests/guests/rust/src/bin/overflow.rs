//! A thread that recurses until it runs off its stack. Rust std's SIGSEGV handler finds the fault in the thread's guard
//! page, prints "has overflowed its stack" and aborts (SIGABRT), on Kiln as natively: a crash, never a hang.

use std::hint::black_box;

fn deep(n: u64) -> u64 {
    let frame = black_box([n as u8; 512]);
    if n == u64::MAX {
        return 0;
    }
    black_box(deep(n + 1)) + u64::from(frame[black_box(3)])
}

fn main() {
    println!("overflow: spawning");
    let thread = std::thread::spawn(|| deep(0));
    println!("overflow: joined {:?}", thread.join().is_ok());
}
