//! The library OS's hypercalls, answered in the guest: what Kiln's VMM does for each (`kiln_vmm::hypercall`), with
//! the serial console for output, the APIC timer for waits and time slices (`timer.rs`), CR3 for TLB flushes and
//! `power` for the end. Every address and length the library OS gives is checked against the RAM the image has, as
//! the VMM checks them. Each vCPU makes its hypercalls through its own block, and vCPU indices are checked against
//! the vCPUs started, as the VMM checks them against its vCPUs.

use crate::{cpus, power, serial, timer, trap};
use kiln_abi::hypercall::{Hypercall, HypercallBlock, IoSegment, MAX_IO_SEGMENTS, MAX_PANIC_MESSAGE, MAX_WRITE_BYTES};
use kiln_abi::layout::{direct_map, PAGE_SIZE};

const EPERM: i64 = 1;
const EBADF: i64 = 9;
const EFAULT: i64 = 14;
const EINVAL: i64 = 22;
const ENOTTY: i64 = 25;
const ENOSYS: i64 = 38;
/// `kiln run`'s code for a deadlocked program (as `timeout` reports a command it had to stop).
const DEADLOCK_EXIT: u8 = 124;

fn block(cpu: usize) -> *mut HypercallBlock {
    cpus::hypercall_block(cpu) as *mut HypercallBlock
}

/// `len` bytes of guest RAM at `phys`, if all of them are RAM.
fn ram(phys: u64, len: u64) -> Option<&'static [u8]> {
    let end = phys.checked_add(len)?;
    if end > crate::ram_end() {
        return None;
    }
    // SAFETY: inside RAM (checked), which the direct map covers; only read.
    Some(unsafe { core::slice::from_raw_parts(direct_map(phys) as *const u8, len as usize) })
}

pub fn handle(nr: u32) {
    let me = cpus::current();
    // SAFETY: this vCPU's block, in the direct map; the library OS waits for the answer.
    let args = unsafe { core::ptr::read_volatile(block(me)) }.args;
    // Any hypercall settles a preemption asked for: the library OS looks at its signals before it returns.
    timer::settle(me);
    let ret = match Hypercall::from_u32(nr) {
        Some(Hypercall::Write) => write(args[0], args[1], args[2]),
        Some(Hypercall::Exit) => exit(args[0], args[1]),
        Some(Hypercall::Trace) => -EPERM,
        Some(Hypercall::Panic) => {
            let message = ram(args[0], args[1].min(MAX_PANIC_MESSAGE)).unwrap_or(b"(message outside RAM)");
            serial::write_str("kiln: the library OS failed: ");
            serial::write(message);
            serial::write_str("\n");
            power::exit(1)
        }
        Some(Hypercall::Deadlock) => {
            let waits = ram(args[1], args[2].min(MAX_PANIC_MESSAGE)).unwrap_or(b"");
            serial::write_str("kiln: program deadlocked: ");
            serial::write_dec(args[0]);
            serial::write_str(" thread(s) wait with no deadline, and nothing can wake them: ");
            serial::write(waits);
            serial::write_str("\n");
            power::exit(DEADLOCK_EXIT)
        }
        Some(Hypercall::Wait) => {
            timer::wait(args[0], args[1]);
            0
        }
        Some(Hypercall::Kick) if args[0] < cpus::count() as u64 => {
            timer::kick(args[0] as usize);
            0
        }
        Some(Hypercall::Kick) => power::fail("the library OS kicked a vCPU that does not exist"),
        Some(Hypercall::Preempt) if args[0] & !cpus::all() == 0 => {
            for cpu in (0..cpus::count()).filter(|&c| args[0] & (1 << c) != 0) {
                timer::preempt(cpu, args[1], args[2] == 1);
            }
            0
        }
        Some(Hypercall::Preempt) => power::fail("the library OS preempted vCPUs of which some do not exist"),
        Some(Hypercall::FlushTlb) => {
            timer::flush_all();
            0
        }
        Some(Hypercall::FaultUnhandled) => trap::report(&trap::last_fault(), false),
        Some(Hypercall::Discard) => discard(args[0], args[1]),
        // The serial port is output only: the program's stdin is at its end (the state word says so first).
        Some(Hypercall::ReadStdin) => 0,
        // Nor is it a terminal.
        Some(Hypercall::Terminal) => -ENOTTY,
        // No pod network behind an exported image: its boot info never says there is one.
        Some(Hypercall::Listen) => -ENOSYS,
        None => {
            serial::write_str("kiln: the library OS made an unknown hypercall ");
            serial::write_dec(u64::from(nr));
            serial::write_str("\n");
            power::exit(1)
        }
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut (*block(me)).ret, ret) };
}

fn segments(at: u64, count: u64) -> Option<&'static [IoSegment]> {
    if count > MAX_IO_SEGMENTS {
        return None;
    }
    let bytes = ram(at, count * core::mem::size_of::<IoSegment>() as u64)?;
    if !(bytes.as_ptr() as usize).is_multiple_of(core::mem::align_of::<IoSegment>()) {
        return None;
    }
    // SAFETY: in RAM, aligned (checked), and any bytes are a valid IoSegment (two integers).
    Some(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<IoSegment>(), count as usize) })
}

/// fd 1 and 2 both go to the console.
fn write(fd: u64, at: u64, count: u64) -> i64 {
    if fd != 1 && fd != 2 {
        return -EBADF;
    }
    if count > MAX_IO_SEGMENTS {
        return -EINVAL;
    }
    let Some(list) = segments(at, count) else { return -EFAULT };
    let mut total = 0u64;
    for s in list {
        total = match total.checked_add(s.len) {
            Some(t) if t <= MAX_WRITE_BYTES => t,
            _ => return -EINVAL,
        };
        if ram(s.phys, s.len).is_none() {
            return -EFAULT;
        }
    }
    // One write's bytes together on the console, as the VMM writes them, whichever vCPUs write at once.
    let _line = serial::lock();
    for s in list {
        serial::write(ram(s.phys, s.len).unwrap_or(&[]));
    }
    total as i64
}

fn exit(code: u64, signal: u64) -> ! {
    match signal {
        0 => power::exit((code & 0xff) as u8),
        1..=64 => {
            serial::write_str("kiln: program killed by ");
            serial::write_str(signal_name(signal));
            serial::write_str("\n");
            power::exit((128 + signal) as u8)
        }
        _ => power::fail("the library OS reported an exit by a signal that does not exist"),
    }
}

/// The ranges read as zero from now on: zeroed here (Kiln's VMM gives the host pages back instead).
fn discard(at: u64, count: u64) -> i64 {
    let Some(list) = segments(at, count) else { return -EFAULT };
    let valid = |s: &IoSegment| {
        s.phys.is_multiple_of(PAGE_SIZE) && s.len.is_multiple_of(PAGE_SIZE) && ram(s.phys, s.len).is_some()
    };
    if !list.iter().all(valid) {
        return -EINVAL;
    }
    for s in list {
        // SAFETY: page-aligned RAM in the direct map (checked), which the library OS gave up.
        unsafe { core::ptr::write_bytes(direct_map(s.phys) as *mut u8, 0, s.len as usize) };
    }
    0
}

pub fn signal_name(signal: u64) -> &'static str {
    match signal {
        0 => "signal 0",
        _ => kiln_abi::signals::name(signal).unwrap_or("a real-time signal"),
    }
}
