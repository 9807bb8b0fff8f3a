//! A CPU-bound program for the SMP benchmark: THREADS threads (argument 1, default 2) each run a dependent chain of
//! multiply-xorshift steps (argument 2, default 200 million) that the compiler cannot shorten. Prints the combined
//! result and the wall time.

use std::hint::black_box;
use std::time::Instant;

fn chain(seed: u64, steps: u64) -> u64 {
    let mut x = seed;
    for _ in 0..steps {
        x = black_box(x.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        x ^= x >> 29;
    }
    x
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let steps: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200_000_000);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads).map(|i| std::thread::spawn(move || chain(2 * i + 1, steps))).collect();
    let result = workers.into_iter().map(|w| w.join().unwrap()).fold(0, |a, b| a ^ b);
    println!("spin: {threads} threads x {steps} steps = {result:#x} in {:.3} s", start.elapsed().as_secs_f64());
}
