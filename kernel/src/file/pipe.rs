//! Pipes: a 64 KiB buffer between a read end and a write end, shared by threads. Reading an empty pipe blocks while
//! a writer exists; writing a full one blocks while a reader exists; writing with no reader is EPIPE (and SIGPIPE).

use super::wait::Waitable;
use super::{POLLERR, POLLHUP, POLLIN, POLLOUT};
use crate::errno::Errno;
use crate::sync::SpinLock;
use alloc::collections::VecDeque;
use alloc::sync::Arc;

pub const CAPACITY: usize = 64 << 10;

pub struct Pipe {
    state: SpinLock<State>,
    pub waitable: Arc<Waitable>,
}

struct State {
    buffer: VecDeque<u8>,
    readers: usize,
    writers: usize,
    /// Ends ever opened of each kind, for a FIFO's open waiting for a partner (who may have come and gone).
    reader_opens: u64,
    writer_opens: u64,
}

/// The two ends of a pipe; dropping an end closes it.
pub struct Reader(pub Arc<Pipe>);
pub struct Writer(pub Arc<Pipe>);

impl Pipe {
    pub fn new() -> Arc<Pipe> {
        Self::with_ends(1)
    }

    /// A FIFO's pipe before any open.
    pub fn unopened() -> Arc<Pipe> {
        Self::with_ends(0)
    }

    fn with_ends(n: usize) -> Arc<Pipe> {
        let state = SpinLock::new(State {
            buffer: VecDeque::new(),
            readers: n,
            writers: n,
            reader_opens: n as u64,
            writer_opens: n as u64,
        });
        Arc::new(Pipe { state, waitable: Waitable::new() })
    }

    /// Opens another end of a FIFO's pipe: a reader or a writer. A pipe no end held starts empty again, as Linux
    /// frees a FIFO's buffer with its last end.
    pub fn open_reader(self: &Arc<Self>) -> Reader {
        self.open_end(true);
        Reader(self.clone())
    }

    pub fn open_writer(self: &Arc<Self>) -> Writer {
        self.open_end(false);
        Writer(self.clone())
    }

    fn open_end(&self, reader: bool) {
        let mut s = self.state.lock();
        if s.readers == 0 && s.writers == 0 {
            s.buffer.clear();
        }
        if reader {
            s.readers += 1;
            s.reader_opens += 1;
        } else {
            s.writers += 1;
            s.writer_opens += 1;
        }
        drop(s);
        self.changed();
    }

    pub fn has_readers(&self) -> bool {
        self.state.lock().readers > 0
    }

    /// A FIFO's open without O_NONBLOCK: waits until an end of the other kind (a writer for a `reader`) is open or
    /// has been opened since this end was.
    pub fn wait_for_partner(&self, reader: bool) -> Result<(), Errno> {
        let opens = |s: &State| if reader { (s.writers, s.writer_opens) } else { (s.readers, s.reader_opens) };
        let (_, seen) = opens(&self.state.lock());
        self.waitable.wait_while(|| {
            let (open, count) = opens(&self.state.lock());
            open == 0 && count == seen
        })
    }

    /// Records a change of state and wakes whoever waits for one.
    fn changed(&self) {
        self.waitable.changed();
    }

    pub fn reader_events(&self) -> u16 {
        let s = self.state.lock();
        (if s.buffer.is_empty() { 0 } else { POLLIN }) | if s.writers == 0 { POLLHUP } else { 0 }
    }

    pub fn writer_events(&self) -> u16 {
        let s = self.state.lock();
        if s.readers == 0 {
            POLLERR
        } else if s.buffer.len() < CAPACITY {
            POLLOUT
        } else {
            0
        }
    }

    pub fn available(&self) -> usize {
        self.state.lock().buffer.len()
    }

    /// Reads up to `out.len()` bytes; 0 at end-of-file (no writers left).
    pub fn read(&self, out: &mut [u8], nonblocking: bool) -> Result<usize, Errno> {
        loop {
            {
                let mut s = self.state.lock();
                if !s.buffer.is_empty() {
                    let n = out.len().min(s.buffer.len());
                    for (dst, src) in out.iter_mut().zip(s.buffer.drain(..n)) {
                        *dst = src;
                    }
                    drop(s);
                    self.changed();
                    return Ok(n);
                }
                if s.writers == 0 || out.is_empty() {
                    return Ok(0);
                }
                if nonblocking {
                    return Err(Errno::EAGAIN);
                }
            }
            self.waitable.wait_while(|| {
                let s = self.state.lock();
                s.buffer.is_empty() && s.writers > 0
            })?;
        }
    }

    /// Writes all of `data` (blocking while the pipe is full), or as much as fits if non-blocking.
    pub fn write(&self, data: &[u8], nonblocking: bool) -> Result<usize, Errno> {
        let mut done = 0;
        loop {
            {
                let mut s = self.state.lock();
                if s.readers == 0 {
                    return Err(Errno::EPIPE);
                }
                let room = CAPACITY - s.buffer.len();
                let n = room.min(data.len() - done);
                s.buffer.extend(&data[done..done + n]);
                done += n;
                drop(s);
                if n > 0 {
                    self.changed();
                }
                if done == data.len() {
                    return Ok(done);
                }
                if nonblocking {
                    return if done > 0 { Ok(done) } else { Err(Errno::EAGAIN) };
                }
            }
            if let Err(e) = self.waitable.wait_while(|| {
                let s = self.state.lock();
                s.buffer.len() == CAPACITY && s.readers > 0
            }) {
                // Interrupted after writing some: a short write, as Linux reports it.
                return if done > 0 { Ok(done) } else { Err(e) };
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.state.lock().readers -= 1;
        self.0.changed();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.state.lock().writers -= 1;
        self.0.changed();
    }
}
