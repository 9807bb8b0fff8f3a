//! Named pipes (FIFOs, `mkfifo`/`mknod(S_IFIFO)`): each FIFO inode, in the tree or on a volume, has one pipe while
//! the program runs, keyed by inode number; its opens are pipe ends. As on Linux, opening for reading waits for a
//! writer and opening for writing waits for a reader, unless O_NONBLOCK: then a reader opens at once and a writer
//! without a reader is ENXIO; O_RDWR is both ends at once and never waits.

use super::pipe::Pipe;
use super::{Object, O_ACCMODE, O_RDONLY, O_RDWR, O_WRONLY};
use crate::errno::Errno;
use crate::sync::SpinLock;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;

/// The pipe of each FIFO opened so far, by inode number (they stay: a FIFO's pipe is a few words once empty).
static PIPES: SpinLock<BTreeMap<u64, Arc<Pipe>>> = SpinLock::new(BTreeMap::new());

/// Opens the FIFO with inode number `ino` with `flags` (the access mode and O_NONBLOCK matter).
pub fn open(ino: u64, flags: u32, nonblocking: bool) -> Result<Object, Errno> {
    let pipe = PIPES.lock().entry(ino).or_insert_with(Pipe::unopened).clone();
    match flags & O_ACCMODE {
        O_RDONLY => {
            let reader = pipe.open_reader();
            if !nonblocking {
                pipe.wait_for_partner(true)?;
            }
            Ok(Object::PipeReader(reader))
        }
        O_WRONLY => {
            if nonblocking && !pipe.has_readers() {
                return Err(Errno::ENXIO);
            }
            let writer = pipe.open_writer();
            if !nonblocking {
                pipe.wait_for_partner(false)?;
            }
            Ok(Object::PipeWriter(writer))
        }
        O_RDWR => Ok(Object::FifoBoth(pipe.open_reader(), pipe.open_writer())),
        _ => Err(Errno::EINVAL),
    }
}
