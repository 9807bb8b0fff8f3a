//! The program's stdin, where its launcher gives it one (the containerd shim: containerd's stdin FIFO; `kiln run`
//! gives none, and the program reads end of file). A thread of the VMM reads the host's stream into a bounded buffer
//! and the library OS takes from it with `ReadStdin`. The host-signal page's state word says whether a read would find
//! something (`kiln_abi::boot::HOST_STDIN_STATE`), so that a program waiting for input costs no exit; each time input
//! comes to an empty buffer, or stdin ends, the VMM bumps the changes word and wakes the vCPUs, as for a host signal.
//! The guest only ever takes bytes through the hypercall: a guest that writes the words lies only to itself.

use crate::memory::GuestRam;
use kiln_abi::boot::{HOST_STDIN_CHANGES, HOST_STDIN_STATE, STDIN_EMPTY, STDIN_READY};
use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Condvar, Mutex, PoisonError};

/// Opens the host's stream for the program's stdin. It runs on the relay's thread, where it may block (a FIFO's
/// open waits for its writer).
pub type StdinSource = Box<dyn FnOnce() -> std::io::Result<Box<dyn Read + Send>> + Send>;

/// Most bytes held for the program: the relay stops reading the host's stream while the buffer is full, so a
/// program that reads slowly pushes back on its writer as a pipe would.
pub const CAPACITY: usize = 64 << 10;
/// Most bytes one read of the host's stream takes.
const CHUNK: usize = 16 << 10;

pub struct StdinRelay {
    /// The host-signal page (guest-physical).
    page: u64,
    buffer: Mutex<Buffer>,
    room: Condvar,
}

#[derive(Default)]
struct Buffer {
    bytes: VecDeque<u8>,
    ended: bool,
    changes: u64,
}

impl StdinRelay {
    /// A relay whose state words live in the host-signal page at `page`: stdin is empty, and open.
    pub fn new(ram: &GuestRam, page: u64) -> StdinRelay {
        let relay = StdinRelay { page, buffer: Mutex::default(), room: Condvar::new() };
        relay.publish(ram, &relay.buffer.lock().unwrap_or_else(PoisonError::into_inner));
        relay
    }

    /// Writes the state, then the count of changes the library OS watches (x86 keeps the stores in order). The page
    /// is the VMM's own choice inside guest RAM: the writes cannot fail.
    fn publish(&self, ram: &GuestRam, buffer: &Buffer) {
        let state = if buffer.bytes.is_empty() && !buffer.ended { STDIN_EMPTY } else { STDIN_READY };
        let _ = ram.write_obj(self.page + 8 * HOST_STDIN_STATE, state);
        let _ = ram.write_obj(self.page + 8 * HOST_STDIN_CHANGES, buffer.changes);
    }

    /// Reads `source` to its end (or its first error, which ends stdin too), handing each piece to the program;
    /// `wake` is called whenever the program has something new to read.
    pub fn pump(&self, ram: &GuestRam, source: &mut dyn Read, wake: impl Fn()) {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = match source.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            while n > 0 && buffer.bytes.len() + n > CAPACITY {
                buffer = self.room.wait(buffer).unwrap_or_else(PoisonError::into_inner);
            }
            let was_empty = buffer.bytes.is_empty();
            buffer.bytes.extend(&chunk[..n]);
            buffer.ended |= n == 0;
            if was_empty || n == 0 {
                buffer.changes = buffer.changes.wrapping_add(1);
                self.publish(ram, &buffer);
                drop(buffer);
                wake();
            }
            if n == 0 {
                return;
            }
        }
    }

    /// Ends stdin for the program (its host stream could not be opened).
    pub fn end(&self, ram: &GuestRam) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.ended = true;
        buffer.changes = buffer.changes.wrapping_add(1);
        self.publish(ram, &buffer);
    }

    /// Takes up to `max` bytes: None when nothing has come yet, an empty vector at the end.
    pub fn take(&self, ram: &GuestRam, max: usize) -> Option<Vec<u8>> {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        if buffer.bytes.is_empty() {
            return buffer.ended.then(Vec::new);
        }
        let n = max.min(buffer.bytes.len());
        let taken: Vec<u8> = buffer.bytes.drain(..n).collect();
        if buffer.bytes.is_empty() {
            self.publish(ram, &buffer);
        }
        self.room.notify_one();
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PAGE: u64 = 0x1000;

    fn words(ram: &GuestRam) -> (u64, u64) {
        let read = |i: u64| ram.read_obj::<u64>(PAGE + 8 * i).unwrap();
        (read(HOST_STDIN_STATE), read(HOST_STDIN_CHANGES))
    }

    #[test]
    fn input_is_taken_in_order_then_the_end() {
        let ram = GuestRam::new(2 << 20).unwrap();
        let relay = StdinRelay::new(&ram, PAGE);
        assert_eq!(words(&ram), (STDIN_EMPTY, 0));
        assert_eq!(relay.take(&ram, 10), None, "nothing has come");
        let wakes = AtomicUsize::new(0);
        relay.pump(&ram, &mut &b"hello\nworld\n"[..], || {
            wakes.fetch_add(1, Ordering::SeqCst);
        });
        // The bytes, then the end: each a change the library OS hears of.
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
        assert_eq!(words(&ram), (STDIN_READY, 2));
        assert_eq!(relay.take(&ram, 6).as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(relay.take(&ram, 100).as_deref(), Some(&b"world\n"[..]));
        assert_eq!(relay.take(&ram, 100).as_deref(), Some(&b""[..]), "the end, again and again");
        assert_eq!(words(&ram).0, STDIN_READY, "an ended stdin is always readable");
    }

    #[test]
    fn an_emptied_buffer_says_so_and_the_next_input_is_a_change() {
        let ram = std::sync::Arc::new(GuestRam::new(2 << 20).unwrap());
        let relay = std::sync::Arc::new(StdinRelay::new(&ram, PAGE));
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        // A source that hands over what the test sends, then ends when the sender goes.
        struct Feed(std::sync::mpsc::Receiver<Vec<u8>>);
        impl Read for Feed {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Ok(piece) = self.0.recv() else { return Ok(0) };
                buf[..piece.len()].copy_from_slice(&piece);
                Ok(piece.len())
            }
        }
        let pump = {
            let (relay, ram) = (relay.clone(), ram.clone());
            std::thread::spawn(move || relay.pump(&ram, &mut Feed(rx), || {}))
        };
        tx.send(b"ab".to_vec()).unwrap();
        while words(&ram).0 != STDIN_READY {
            std::thread::yield_now();
        }
        assert_eq!(relay.take(&ram, 100).as_deref(), Some(&b"ab"[..]));
        assert_eq!(words(&ram), (STDIN_EMPTY, 1), "empty again, open");
        tx.send(b"c".to_vec()).unwrap();
        drop(tx);
        pump.join().unwrap();
        assert_eq!(words(&ram), (STDIN_READY, 3));
        assert_eq!(relay.take(&ram, 100).as_deref(), Some(&b"c"[..]));
        assert_eq!(relay.take(&ram, 100).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn a_full_buffer_holds_the_reader_back() {
        let ram = std::sync::Arc::new(GuestRam::new(2 << 20).unwrap());
        let relay = std::sync::Arc::new(StdinRelay::new(&ram, PAGE));
        let data = vec![7u8; CAPACITY + CHUNK];
        let pump = {
            let (relay, ram) = (relay.clone(), ram.clone());
            std::thread::spawn(move || relay.pump(&ram, &mut &data[..], || {}))
        };
        let mut got = 0;
        loop {
            match relay.take(&ram, 4096) {
                Some(piece) if piece.is_empty() => break,
                Some(piece) => got += piece.len(),
                None => std::thread::yield_now(),
            }
            assert!(relay.buffer.lock().unwrap().bytes.len() <= CAPACITY);
        }
        pump.join().unwrap();
        assert_eq!(got, CAPACITY + CHUNK);
    }
}
