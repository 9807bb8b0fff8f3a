//! The program's stdin: what the VMM relays from its launcher (the containerd shim gives containerd's stdin FIFO),
//! or end of file where there is none (`kiln run`). The host-signal page's state word says whether a read finds
//! something, so that waiting costs no exit; its changes word counts what came, and the look at it where the host
//! signals are looked at ([`poll`]) wakes the threads that wait and the `poll`/epoll calls that watch stdin.

use super::console::IoVec;
use super::wait::Waitable;
use super::POLLIN;
use crate::errno::{Errno, SysResult};
use crate::syscalls::signal::host_page_word;
use crate::{hypercall, user};
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::boot::{HOST_STDIN_CHANGES, HOST_STDIN_STATE, STDIN_EMPTY, STDIN_NONE};
use kiln_abi::hypercall::{Hypercall, IoSegment, MAX_IO_SEGMENTS, MAX_WRITE_BYTES};

/// Stdin's waiters and watchers.
pub static WAITABLE: Waitable = Waitable::new_static();
/// The changes word as last looked at.
static SEEN: AtomicU64 = AtomicU64::new(0);
const EAGAIN: i64 = -Errno::EAGAIN.0;

fn state() -> u64 {
    host_page_word(HOST_STDIN_STATE).map_or(STDIN_NONE, |w| w.load(Ordering::Acquire))
}

/// Whether input may still come and wake a thread (the deadlock check counts it, as it counts the network).
pub fn can_wake() -> bool {
    state() == STDIN_EMPTY
}

/// Wakes stdin's waiters if the VMM changed it since the last look. Cheap when nothing is new: one load.
pub fn poll() {
    let Some(word) = host_page_word(HOST_STDIN_CHANGES) else { return };
    let changes = word.load(Ordering::Acquire);
    let seen = SEEN.load(Ordering::Acquire);
    if changes != seen && SEEN.compare_exchange(seen, changes, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        WAITABLE.changed();
    }
}

/// The `poll` events of stdin now.
pub fn events() -> u16 {
    match state() {
        STDIN_EMPTY => 0,
        _ => POLLIN,
    }
}

/// Reads what has come into the program's buffer: waits for it unless `nonblocking` (EAGAIN then); 0 at the end.
pub fn read(buf: IoVec, nonblocking: bool) -> SysResult {
    if buf.len == 0 {
        return Ok(0);
    }
    user::check(buf.base, buf.len, true)?;
    let mut segments = [IoSegment::default(); MAX_IO_SEGMENTS as usize];
    let mut used = 0;
    user::physical_segments(buf.base, buf.len.min(MAX_WRITE_BYTES), &mut segments, &mut used)?;
    let segs_phys = crate::mm::virt_to_phys(segments.as_ptr() as u64).ok_or(Errno::EFAULT)?;
    loop {
        // The count before the look: a change after it ends the wait at once.
        let seen = WAITABLE.count();
        let ret = match state() {
            STDIN_NONE => return Ok(0),
            STDIN_EMPTY => EAGAIN,
            _ => hypercall::call(Hypercall::ReadStdin, &[segs_phys, used as u64]),
        };
        match ret {
            EAGAIN if nonblocking => return Err(Errno::EAGAIN),
            EAGAIN => WAITABLE.wait(seen, u64::MAX)?,
            n if n < 0 => return Err(Errno(-n)),
            n => return Ok(n as u64),
        }
    }
}
