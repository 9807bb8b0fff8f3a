//! alloc: allocates and checks 64 MiB in total, through the paths real programs take: a `Vec` grown by `push` to
//! 32 MiB (every reallocation copies, and may go through mremap), then four 8 MiB vectors alive at once, then the big
//! one freed and 8 MiB allocated again in its place. Every byte is written with a position-dependent value and read
//! back; 64 MiB are alive at the peak, 80 MiB allocated in all. Prints `alloc: ok, 80 MiB allocated, 64 MiB live at
//! peak` and exits 0; on a mismatch it names the place and exits 1. Run it with `--memory 256M`.

const MIB: usize = 1 << 20;

fn value(seed: u64, i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
}

fn check(name: &str, v: &[u64], seed: u64) {
    if let Some(i) = (0..v.len()).find(|&i| v[i] != value(seed, i)) {
        println!("alloc: {name}: element {i} is {:#x}, expected {:#x}", v[i], value(seed, i));
        std::process::exit(1);
    }
}

fn filled(seed: u64, bytes: usize) -> Vec<u64> {
    let n = bytes / 8;
    let mut v = Vec::with_capacity(n);
    v.extend((0..n).map(|i| value(seed, i)));
    v
}

fn main() {
    // 32 MiB by growth from empty: about 22 reallocations.
    let mut grown: Vec<u64> = Vec::new();
    for i in 0..(32 * MIB / 8) {
        grown.push(value(1, i));
    }
    check("grown", &grown, 1);

    // Four more 8 MiB vectors, all alive together with the first.
    let more: Vec<Vec<u64>> = (0..4).map(|k| filled(100 + k, 8 * MIB)).collect();
    for (k, v) in more.iter().enumerate() {
        check(&format!("more[{k}]"), v, 100 + k as u64);
    }
    check("grown again", &grown, 1);

    // Free the big one and reuse the memory.
    drop(grown);
    let reused = filled(7, 8 * MIB);
    check("reused", &reused, 7);
    for (k, v) in more.iter().enumerate() {
        check(&format!("more[{k}] again"), v, 100 + k as u64);
    }

    // A vector of zeroes must read as zeroes (calloc-style memory from the allocator).
    let zeroes = vec![0u64; MIB];
    if zeroes.iter().any(|&x| x != 0) {
        println!("alloc: zeroed allocation is not zero");
        std::process::exit(1);
    }

    println!("alloc: ok, 80 MiB allocated, 64 MiB live at peak");
}
