//! sendfile: bytes from a file to a socket, pipe or file without a trip through the program's memory (Go's
//! net/http and io.Copy use it to serve files).

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::file::{self, File, Object, O_ACCMODE, O_APPEND, O_RDONLY, O_WRONLY};
use crate::user;
use core::sync::atomic::Ordering;

/// Bytes moved per step.
const CHUNK: u64 = 64 << 10;
/// Linux moves at most this much per call.
const MAX_COUNT: u64 = 0x7fff_f000;

/// Writes `bytes` to `out` as `write` would; returns how many it took.
fn write_to(out: &File, bytes: &[u8]) -> Result<usize, Errno> {
    match &out.object {
        Object::Socket(_) | Object::Unix(_) => super::net::write(out, bytes),
        Object::PipeWriter(p) => p.0.write(bytes, out.nonblocking()),
        Object::Regular { inode, offset, .. } => {
            let append = out.flags.load(Ordering::Relaxed) & O_APPEND != 0;
            let mut at = offset.lock();
            *at = inode.write_at(*at, bytes, append)?;
            Ok(bytes.len())
        }
        _ => Err(Errno::EINVAL),
    }
}

pub fn sendfile(a: &Args) -> SysResult {
    let (out, input) = (file::get(a[0])?, file::get(a[1])?);
    let (offset_at, count) = (a[2], a[3].min(MAX_COUNT));
    if out.flags.load(Ordering::Relaxed) & O_ACCMODE == O_RDONLY
        || input.flags.load(Ordering::Relaxed) & O_ACCMODE == O_WRONLY
    {
        return Err(Errno::EBADF);
    }
    let Object::Regular { inode, offset, .. } = &input.object else { return Err(Errno::EINVAL) };
    let mut at = if offset_at != 0 { user::read::<i64>(offset_at)? } else { *offset.lock() as i64 };
    if at < 0 {
        return Err(Errno::EINVAL);
    }
    let mut moved = 0u64;
    while moved < count {
        let want = (count - moved).min(CHUNK);
        let step =
            inode.read_with(at as u64, want, |bytes| if bytes.is_empty() { Ok(0) } else { write_to(&out, bytes) });
        let taken = match step? {
            Ok(n) => n as u64,
            Err(e) if moved == 0 => return Err(e),
            Err(_) => break,
        };
        if taken == 0 {
            break;
        }
        moved += taken;
        at += taken as i64;
        if taken < want {
            break;
        }
    }
    if offset_at != 0 {
        user::write(offset_at, at)?;
    } else {
        *offset.lock() = at as u64;
    }
    Ok(moved)
}
