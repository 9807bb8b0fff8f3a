//! What every HTTP test server serves and checks, shared by `http_tiny` and `http_axum` (the Go guest and the tests
//! compute the same): the byte pattern of `GET /bytes/N` and the FNV-1a hash that `POST /sum` answers with.

/// The body of `GET /`.
pub const HELLO: &str = "hello from kiln\n";

/// Byte `i` of the `/bytes/N` pattern: not periodic in any power of two, so a dropped or repeated segment shows.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 251)) as u8
}

/// Fills `buf` with the pattern from offset `at` on.
pub fn fill_pattern(buf: &mut [u8], at: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(at + k as u64);
    }
}

/// The 64-bit FNV-1a hash, fed a piece at a time.
pub struct Fnv1a(pub u64);

impl Fnv1a {
    pub fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The listening port: the first argument, or 8080.
pub fn port_from_args() -> u16 {
    std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8080)
}

/// N of a `/bytes/N` path, if the path is one.
pub fn bytes_len(path: &str) -> Option<u64> {
    path.strip_prefix("/bytes/")?.parse().ok()
}
