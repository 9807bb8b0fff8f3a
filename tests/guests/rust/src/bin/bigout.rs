//! bigout: writes exactly 2 MiB of deterministic bytes to stdout through `std::io::Write`, then one line to stderr.
//! Byte i is `pattern(i)`, the same function as `tests/guests/c/bigout.c` (the test checks every byte). Chunk sizes
//! cycle through tiny, odd and over-1-MiB writes; std's line-buffered stdout splits them further at newline bytes.

use std::io::Write;

const TOTAL: usize = 2 << 20;

fn pattern(i: u32) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 24) as u8
}

fn main() {
    let buf: Vec<u8> = (0..TOTAL as u32).map(pattern).collect();
    let sizes = [1usize, 7, 4096, 65536, 100_003, 3, 4095, 4097, (1 << 20) + 17, 511, 8192, 12345];
    let mut out = std::io::stdout().lock();
    let mut off = 0;
    for len in sizes.iter().cycle() {
        if off == TOTAL {
            break;
        }
        let len = (*len).min(TOTAL - off);
        out.write_all(&buf[off..off + len]).expect("write stdout");
        off += len;
    }
    out.flush().expect("flush stdout");
    eprintln!("bigout: wrote {TOTAL} bytes");
}
