//! hashmap: a heap-heavy Rust program for bench/memory.sh. Builds a `HashMap<u64, [u64; 2]>` of 6.5 million entries
//! by insertion from empty (the table doubles as it grows, up to 8 Mi buckets of 25 bytes: 200 MB), checks every
//! entry, and prints how many there are and how long the building took.

use std::collections::HashMap;
use std::time::Instant;

const ENTRIES: u64 = 6_500_000;

fn main() {
    let start = Instant::now();
    let mut map = HashMap::new();
    for k in 0..ENTRIES {
        map.insert(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), [k, !k]);
    }
    let took = start.elapsed();
    for k in 0..ENTRIES {
        if map.get(&k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) != Some(&[k, !k]) {
            println!("hashmap: entry {k} is wrong");
            std::process::exit(1);
        }
    }
    println!("hashmap: {} entries, capacity {}, built in {} ms", map.len(), map.capacity(), took.as_millis());
}
