//! The virtio-blk driver: one split virtqueue, no interrupts. Requests go out in batches, one notification (one VM
//! exit) each; Kiln's VMM handles a batch, in ring order, before that exit returns, so the driver finds every request
//! done in the used ring right after the notification and never waits. Other hosts' devices (an exported image's,
//! `kernel/pvh`) may finish later: the driver polls the used ring until they have, for at most [`DEVICE_TIMEOUT_NS`]. Data moves through a staging area in
//! physically contiguous memory from the frame allocator (the filesystem's cache blocks live on the heap): a copy
//! costs far less than the exits that more, smaller requests would.

use crate::virtio_transport::{Transport, DESC_F_NEXT, DESC_F_WRITE};
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};
use kiln_abi::layout::{direct_map, page_align_up, DIRECT_MAP_BASE};
use kiln_ext2::{BlockDevice, IoError};

/// Descriptors in the queue: a request takes three (header, data, status), so a batch has up to 21.
const QUEUE_SIZE: u16 = 64;
const REQUESTS: usize = QUEUE_SIZE as usize / 3;
/// Bytes of data one batch moves at most (the VMM takes up to 1 MiB per request).
const STAGING: usize = 512 << 10;

const F_FLUSH: u32 = 1 << 9;
/// How long a batch may take on a device that finishes after the notification before it counts as failed.
const DEVICE_TIMEOUT_NS: u64 = 30_000_000_000;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;

#[derive(Debug)]
pub enum SetupError {
    Features,
    OutOfMemory,
}

/// One request of a batch: its type, first byte on the device, and its bytes in the staging area.
#[derive(Clone, Copy)]
struct Request {
    kind: u32,
    offset: u64,
    staged_at: usize,
    len: usize,
}

pub struct VirtioBlk {
    regs: Transport,
    capacity: u64,
    /// Direct-map addresses: descriptor table, available ring, used ring, request headers (16 bytes each), status
    /// bytes (one each), staging area.
    desc: u64,
    avail: u64,
    used: u64,
    headers: u64,
    statuses: u64,
    staging: u64,
    next_avail: u16,
    next_used: u16,
    pub notifications: u64,
}

impl VirtioBlk {
    /// Sets up the device (`regs`), `capacity` bytes long.
    pub fn setup(regs: Transport, capacity: u64) -> Result<VirtioBlk, SetupError> {
        let n = u64::from(QUEUE_SIZE);
        let desc_bytes = page_align_up(16 * n);
        let avail_bytes = page_align_up(6 + 2 * n);
        let used_bytes = page_align_up(6 + 8 * n);
        let header_bytes = page_align_up(16 * REQUESTS as u64 + REQUESTS as u64);
        let total = desc_bytes + avail_bytes + used_bytes + header_bytes + STAGING as u64;
        let phys = crate::mm::memory().frames.alloc(total).ok_or(SetupError::OutOfMemory)?;
        let base = direct_map(phys);
        let mut blk = VirtioBlk {
            regs,
            capacity,
            desc: base,
            avail: base + desc_bytes,
            used: base + desc_bytes + avail_bytes,
            headers: base + desc_bytes + avail_bytes + used_bytes,
            statuses: base + desc_bytes + avail_bytes + used_bytes + 16 * REQUESTS as u64,
            staging: base + desc_bytes + avail_bytes + used_bytes + header_bytes,
            next_avail: 0,
            next_used: 0,
            notifications: 0,
        };
        blk.regs.reset();
        if !blk.regs.negotiate(F_FLUSH) {
            return Err(SetupError::Features);
        }
        blk.regs.set_queue(0, QUEUE_SIZE, blk.desc, blk.avail, blk.used);
        blk.regs.start();
        Ok(blk)
    }

    fn staged(&mut self, at: usize, len: usize) -> &mut [u8] {
        debug_assert!(at + len <= STAGING);
        // SAFETY: the staging area is STAGING bytes from the frame allocator, this driver's alone, and `&mut self`
        // makes this the only view of it.
        unsafe { core::slice::from_raw_parts_mut((self.staging + at as u64) as *mut u8, len) }
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i);
        // SAFETY: descriptor `i` (< QUEUE_SIZE) is in this queue's table; the device reads it only once published.
        unsafe {
            write_volatile(d as *mut u64, addr - DIRECT_MAP_BASE);
            write_volatile((d + 8) as *mut u32, len);
            write_volatile((d + 12) as *mut u16, flags);
            write_volatile((d + 14) as *mut u16, next);
        }
    }

    /// Sends `requests` (at most [`REQUESTS`]) as one batch and checks that each succeeded.
    fn submit(&mut self, requests: &[Request]) -> Result<(), IoError> {
        for (r, req) in requests.iter().enumerate() {
            let header = self.headers + 16 * r as u64;
            let status = self.statuses + r as u64;
            // SAFETY: header `r` and status byte `r` are this driver's, in memory the device reads once published.
            unsafe {
                write_volatile(header as *mut u32, req.kind);
                write_volatile((header + 4) as *mut u32, 0);
                write_volatile((header + 8) as *mut u64, req.offset / 512);
                write_volatile(status as *mut u8, 0xff);
            }
            let d = 3 * r as u16;
            if req.kind == T_FLUSH {
                self.set_desc(d, header, 16, DESC_F_NEXT, d + 2);
            } else {
                self.set_desc(d, header, 16, DESC_F_NEXT, d + 1);
                let flags = if req.kind == T_IN { DESC_F_WRITE } else { 0 };
                self.set_desc(d + 1, self.staging + req.staged_at as u64, req.len as u32, flags | DESC_F_NEXT, d + 2);
            }
            self.set_desc(d + 2, status, 1, DESC_F_WRITE, 0);
            let slot = self.avail + 4 + 2 * u64::from(self.next_avail % QUEUE_SIZE);
            // SAFETY: the available ring's entry is this driver's to write until published.
            unsafe { write_volatile(slot as *mut u16, d) };
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        fence(Ordering::Release);
        // SAFETY: `avail.idx`; x86 keeps the stores above before this one.
        unsafe { write_volatile((self.avail + 2) as *mut u16, self.next_avail) };
        fence(Ordering::SeqCst);
        self.regs.notify(0);
        self.notifications += 1;
        let used = self.wait_used(requests.len());
        let done = used.wrapping_sub(self.next_used);
        self.next_used = used;
        if usize::from(done) != requests.len() {
            return Err(IoError);
        }
        for r in 0..requests.len() {
            // SAFETY: status byte `r`, written by the device before it returned the request.
            if unsafe { read_volatile((self.statuses + r as u64) as *const u8) } != 0 {
                return Err(IoError);
            }
        }
        Ok(())
    }

    /// `used.idx` once the device has returned `count` requests since the last batch, or what it is when the device
    /// has not after [`DEVICE_TIMEOUT_NS`] (or returned more, which is wrong).
    fn wait_used(&self, count: usize) -> u16 {
        let mut started = None;
        loop {
            // SAFETY: `used.idx`, which the device writes (Kiln's VMM before the notification's exit returns).
            let used = unsafe { read_volatile((self.used + 2) as *const u16) };
            fence(Ordering::Acquire);
            if usize::from(used.wrapping_sub(self.next_used)) >= count {
                return used;
            }
            let now = crate::time::since_boot_ns();
            if now.saturating_sub(*started.get_or_insert(now)) > DEVICE_TIMEOUT_NS {
                return used;
            }
            core::hint::spin_loop();
        }
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), IoError> {
        let fits = offset.is_multiple_of(512)
            && len.is_multiple_of(512)
            && offset.checked_add(len as u64).is_some_and(|end| end <= self.capacity);
        if fits {
            Ok(())
        } else {
            Err(IoError)
        }
    }
}

impl BlockDevice for VirtioBlk {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            // One batch: requests of up to STAGING / REQUESTS bytes, filling the staging area.
            let mut requests = Vec::with_capacity(REQUESTS);
            let mut staged = 0;
            let per_request = (STAGING / REQUESTS) & !511;
            while done + staged < buf.len() && requests.len() < REQUESTS {
                let len = per_request.min(buf.len() - done - staged);
                requests.push(Request { kind: T_IN, offset: offset + (done + staged) as u64, staged_at: staged, len });
                staged += len;
            }
            self.submit(&requests)?;
            let from = self.staged(0, staged).as_ptr();
            // SAFETY: `from` covers `staged` bytes of the staging area, which does not overlap `buf` (heap memory).
            buf[done..done + staged].copy_from_slice(unsafe { core::slice::from_raw_parts(from, staged) });
            done += staged;
        }
        Ok(())
    }

    fn write(&mut self, writes: &[(u64, &[u8])], flush: bool) -> Result<(), IoError> {
        for (offset, bytes) in writes {
            self.check_range(*offset, bytes.len())?;
        }
        let mut requests: Vec<Request> = Vec::with_capacity(REQUESTS);
        let mut staged = 0;
        for (offset, bytes) in writes {
            let mut taken = 0;
            while taken < bytes.len() {
                if staged == STAGING || requests.len() == REQUESTS {
                    self.submit(&requests)?;
                    requests.clear();
                    staged = 0;
                }
                let len = (bytes.len() - taken).min(STAGING - staged);
                let at = *offset + taken as u64;
                self.staged(staged, len).copy_from_slice(&bytes[taken..taken + len]);
                // Contiguous on the device and in staging: one request grows instead of another starting.
                match requests.last_mut() {
                    Some(last) if last.offset + last.len as u64 == at && last.staged_at + last.len == staged => {
                        last.len += len;
                    }
                    _ => requests.push(Request { kind: T_OUT, offset: at, staged_at: staged, len }),
                }
                staged += len;
                taken += len;
            }
        }
        if flush {
            if requests.len() == REQUESTS {
                self.submit(&requests)?;
                requests.clear();
            }
            requests.push(Request { kind: T_FLUSH, offset: 0, staged_at: 0, len: 0 });
        }
        if !requests.is_empty() {
            self.submit(&requests)?;
        }
        Ok(())
    }
}
