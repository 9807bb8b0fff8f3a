//! getrandom: a ChaCha20 generator seeded by the VMM from the host's randomness. It never blocks and needs no exit.

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::sync::SpinLock;
use crate::user;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const GRND_NONBLOCK: u64 = 1;
const GRND_RANDOM: u64 = 2;
const GRND_INSECURE: u64 = 4;

static GENERATOR: SpinLock<Option<ChaCha20Rng>> = SpinLock::new(None);

pub fn init(boot: &kiln_abi::BootInfo) {
    *GENERATOR.lock() = Some(ChaCha20Rng::from_seed(boot.random_seed));
}

/// Random bytes for `/dev/urandom` too.
pub fn fill(out: &mut [u8]) {
    if let Some(rng) = GENERATOR.lock().as_mut() {
        rng.fill_bytes(out);
    }
}

pub fn getrandom(a: &Args) -> SysResult {
    let (buf, len, flags) = (a[0], a[1], a[2]);
    if flags & !(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE) != 0 {
        return Err(Errno::EINVAL);
    }
    let len = len.min(1 << 25);
    let mut chunk = [0u8; 256];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        GENERATOR.lock().as_mut().ok_or(Errno::EAGAIN)?.fill_bytes(&mut chunk[..n]);
        user::write_bytes(buf + done, &chunk[..n])?;
        done += n as u64;
    }
    Ok(len)
}
