//! The VMM's side of the hypercalls. The guest is not trusted: every address, length and count in a block is checked
//! against guest RAM and against the limits in kiln-abi before the host acts on it.

use crate::memory::GuestRam;
use crate::netcard::NetCard;
use crate::park::Parker;
use crate::stdin::StdinRelay;
use crate::syscall_names::syscall_name;
use crate::vm::Console;
use kiln_abi::hypercall::{
    FaultRecord, Hypercall, EXIT_RAISED, FAULT_RECORD_OFFSET, MAX_IO_SEGMENTS, MAX_PANIC_MESSAGE, MAX_WRITE_BYTES,
    SYSCALL_SLOTS, WAIT_FOREVER,
};

/// What the run loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Resume,
    Exit(i32),
    /// The program was ended by this signal's default action.
    Killed(u32),
    /// The program was ended by a signal whose default action dumps core: the record says which, with the registers
    /// of the thread that raised or took it.
    Raised(FaultRecord),
    /// Every one of this many threads waits and nothing can wake any; what each waits on.
    Deadlocked(u64, String),
    /// Every vCPU must drop its cached translations; then the caller gets [`answer`]ed.
    FlushTlb,
    /// The program's fault has no handler: it dies of it.
    FaultUnhandled,
    /// These vCPUs (a mask checked against the VM's) are to be interrupted if they run the program's code, `after`
    /// this long (zero: now); then the caller gets [`answer`]ed.
    Preempt {
        vcpus: u64,
        after: std::time::Duration,
        /// The deadline becomes `after` (`None`: no deadline) instead of the sooner of the two.
        replace: Option<Option<std::time::Duration>>,
    },
    Stop(String),
}

const EIO: i64 = 5;
const EBADF: i64 = 9;
const EAGAIN: i64 = 11;
const ENOTTY: i64 = 25;
const EFAULT: i64 = 14;
const EINVAL: i64 = 22;
const EPERM: i64 = 1;
const EPIPE: i64 = 32;
const ENOSYS: i64 = 38;

fn read_u64s(ram: &GuestRam, addr: u64, n: usize) -> Option<Vec<u64>> {
    let bytes = ram.read_vec(addr, (n * 8) as u64).ok()?;
    Some(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
}

/// Handles hypercall `nr` of vCPU `cpu` (of `parkers.len()`), whose block is at `block`; `tracing` says whether the
/// user asked for `--trace-syscalls`.
pub fn handle(
    ram: &GuestRam,
    block: u64,
    nr: u32,
    (console, tracing, stdin, net): (&dyn Console, bool, Option<&StdinRelay>, Option<&NetCard>),
    cpu: usize,
    parkers: &[Parker],
) -> Action {
    let Some(args) = read_u64s(ram, block, 6) else {
        return Action::Stop(format!("the hypercall block at {block:#x} is outside guest memory"));
    };
    let ret = match Hypercall::from_u32(nr) {
        Some(Hypercall::Write) => write(ram, args[0], args[1], args[2], console),
        Some(Hypercall::ReadStdin) => read_stdin(ram, args[0], args[1], stdin),
        Some(Hypercall::Terminal) => terminal(ram, args[0], args[1], console),
        Some(Hypercall::Listen) => match (u16::try_from(args[0]), net) {
            (Ok(port @ 1..), Some(card)) => card.publish(port),
            (Ok(_), None) => -ENOSYS,
            (Err(_) | Ok(0), _) => -EINVAL,
        },
        Some(Hypercall::Exit) => {
            return match args[1] {
                0 => Action::Exit((args[0] & 0xff) as i32),
                signal @ 1..=64 if args[2] == EXIT_RAISED => match raised(ram, block, signal) {
                    Some(record) => Action::Raised(record),
                    None => Action::Killed(signal as u32),
                },
                signal @ 1..=64 => Action::Killed(signal as u32),
                other => Action::Stop(format!("the guest reported an exit by signal {other}, which does not exist")),
            };
        }
        // The library OS traces only when asked; a guest's own trace lines are refused, never printed.
        Some(Hypercall::Trace) if !tracing => -EPERM,
        Some(Hypercall::Trace) => match read_u64s(ram, args[0], 8) {
            Some(r) => {
                let line = format!(
                    "{}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {}",
                    syscall_name(r[0]),
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    r[7] as i64
                );
                console.trace(&line);
                0
            }
            None => -EFAULT,
        },
        Some(Hypercall::Panic) => {
            let len = args[1].min(MAX_PANIC_MESSAGE);
            let message = ram.read_vec(args[0], len).map(|b| String::from_utf8_lossy(&b).into_owned());
            return Action::Stop(format!(
                "the library OS failed: {}",
                message.unwrap_or_else(|_| "(message outside guest memory)".into())
            ));
        }
        Some(Hypercall::Deadlock) => {
            let len = args[2].min(MAX_PANIC_MESSAGE);
            let waits =
                ram.read_vec(args[1], len).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            return Action::Deadlocked(args[0], waits);
        }
        Some(Hypercall::Wait) => {
            if let Some(parker) = parkers.get(cpu) {
                let timeout = (args[0] != WAIT_FOREVER).then(|| std::time::Duration::from_nanos(args[0]));
                parker.park(timeout);
            }
            // The look the library OS wants a while after it wakes, asked with the wait instead of by an exit.
            if args[1] != 0 && cpu < parkers.len() {
                let after = std::time::Duration::from_nanos(args[1]);
                return Action::Preempt { vcpus: 1 << cpu, after, replace: None };
            }
            0
        }
        Some(Hypercall::Kick) => match parkers.get(args[0] as usize) {
            Some(parker) => {
                parker.unpark();
                0
            }
            None => return Action::Stop(format!("the guest kicked vCPU {}, which does not exist", args[0])),
        },
        Some(Hypercall::FlushTlb) => return Action::FlushTlb,
        Some(Hypercall::Discard) => discard(ram, args[0], args[1]),
        Some(Hypercall::FaultUnhandled) => return Action::FaultUnhandled,
        Some(Hypercall::Preempt) => {
            let all = u64::MAX.checked_shr(64 - parkers.len() as u32).unwrap_or(0);
            return match args[0] & !all {
                0 => {
                    let after = std::time::Duration::from_nanos(args[1]);
                    let replace = (args[2] == 1).then_some((args[1] != WAIT_FOREVER).then_some(after));
                    Action::Preempt { vcpus: args[0], after, replace }
                }
                _ => Action::Stop(format!("the guest preempted vCPUs {:#x}, of which some do not exist", args[0])),
            };
        }
        None => return Action::Stop(format!("the guest made an unknown hypercall {nr}")),
    };
    answer(ram, block, ret)
}

/// The record of the signal `signal` that ended the program, next to the hypercall block at `block`: None if it is
/// outside RAM or names another signal.
fn raised(ram: &GuestRam, block: u64, signal: u64) -> Option<FaultRecord> {
    let page = block & !(kiln_abi::layout::PAGE_SIZE - 1);
    let bytes = ram.read_vec(page.checked_add(FAULT_RECORD_OFFSET)?, std::mem::size_of::<FaultRecord>() as u64).ok()?;
    // SAFETY: `bytes` holds size_of::<FaultRecord>() bytes, and FaultRecord is repr(C) of u64/i64 fields only, for
    // which every bit pattern is a value; read_unaligned needs no alignment.
    let record: FaultRecord = unsafe { bytes.as_ptr().cast::<FaultRecord>().read_unaligned() };
    (record.signal == signal).then_some(record)
}

/// Writes the result of the hypercall whose block is at `block`; the vCPU resumes.
pub fn answer(ram: &GuestRam, block: u64, ret: i64) -> Action {
    if ram.write(block + 48, &ret.to_le_bytes()).is_err() {
        return Action::Stop(format!("the hypercall block at {block:#x} is outside guest memory"));
    }
    Action::Resume
}

/// The program's write to fd 1 or 2: at most `MAX_IO_SEGMENTS` segments and `MAX_WRITE_BYTES` bytes, all inside RAM.
fn write(ram: &GuestRam, fd: u64, segments: u64, count: u64, console: &dyn Console) -> i64 {
    if fd != 1 && fd != 2 {
        return -EBADF;
    }
    if count > MAX_IO_SEGMENTS {
        return -EINVAL;
    }
    let Some(raw) = read_u64s(ram, segments, count as usize * 2) else { return -EFAULT };
    let mut total = 0u64;
    let mut bytes = Vec::new();
    for seg in raw.chunks_exact(2) {
        let (phys, len) = (seg[0], seg[1]);
        total = match total.checked_add(len) {
            Some(t) if t <= MAX_WRITE_BYTES => t,
            _ => return -EINVAL,
        };
        match ram.read_vec(phys, len) {
            Ok(b) => bytes.extend_from_slice(&b),
            Err(_) => return -EFAULT,
        }
    }
    match console.write(fd, &bytes) {
        Ok(()) => total as i64,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => -EPIPE,
        Err(_) => -EIO,
    }
}

/// The program's read of its stdin into `count` guest ranges listed at `segments` (at most `MAX_IO_SEGMENTS`, and
/// `MAX_WRITE_BYTES` in all, each inside RAM, all checked before a byte is taken): bytes read, 0 at the end (or with
/// no stdin), -EAGAIN when nothing has come yet.
fn read_stdin(ram: &GuestRam, segments: u64, count: u64, stdin: Option<&StdinRelay>) -> i64 {
    if count > MAX_IO_SEGMENTS {
        return -EINVAL;
    }
    let Some(raw) = read_u64s(ram, segments, count as usize * 2) else { return -EFAULT };
    let mut total = 0u64;
    for seg in raw.chunks_exact(2) {
        total = match total.checked_add(seg[1]) {
            Some(t) if t <= MAX_WRITE_BYTES => t,
            _ => return -EINVAL,
        };
        if seg[0].checked_add(seg[1]).is_none_or(|end| end > ram.size()) {
            return -EFAULT;
        }
    }
    let Some(stdin) = stdin else { return 0 };
    let Some(bytes) = stdin.take(ram, total as usize) else { return -EAGAIN };
    let mut at = 0usize;
    for seg in raw.chunks_exact(2) {
        let piece = &bytes[at..bytes.len().min(at + seg[1] as usize)];
        if piece.is_empty() {
            break;
        }
        if ram.write(seg[0], piece).is_err() {
            return -EFAULT;
        }
        at += piece.len();
    }
    bytes.len() as i64
}

/// The program's terminal ioctl `request` with its argument at `arg` (checked inside RAM before anything is done),
/// made on the console's terminal: 0 or a negative errno.
fn terminal(ram: &GuestRam, request: u64, arg: u64, console: &dyn Console) -> i64 {
    let Some(len) = kiln_abi::hypercall::terminal_arg_bytes(request) else { return -EINVAL };
    let Some(fd) = console.terminal_fd() else { return -ENOTTY };
    let Ok(mut buf) = ram.read_vec(arg, len) else { return -EFAULT };
    buf.resize(kiln_abi::hypercall::TERMINAL_ARG_BYTES as usize, 0);
    // SAFETY: one of the terminal requests above, whose argument (at most `len` bytes, the kernel's termios or a
    // winsize) fits the buffer, which lives across the call.
    if unsafe { libc::ioctl(fd, request as _, buf.as_mut_ptr()) } != 0 {
        return -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    if kiln_abi::hypercall::terminal_request_reads(request) && ram.write(arg, &buf[..len as usize]).is_err() {
        return -EFAULT;
    }
    0
}

/// Drops the host pages of `count` page-aligned guest ranges listed at `segments`; all are checked first.
fn discard(ram: &GuestRam, segments: u64, count: u64) -> i64 {
    if count > MAX_IO_SEGMENTS {
        return -EINVAL;
    }
    let Some(raw) = read_u64s(ram, segments, count as usize * 2) else { return -EFAULT };
    let page = kiln_abi::layout::PAGE_SIZE;
    let valid = |s: &[u64]| {
        s[0].is_multiple_of(page)
            && s[1].is_multiple_of(page)
            && s[0].checked_add(s[1]).is_some_and(|e| e <= ram.size())
    };
    if !raw.chunks_exact(2).all(valid) {
        return -EINVAL;
    }
    for s in raw.chunks_exact(2) {
        if ram.discard(s[0], s[1]).is_err() {
            return -EINVAL;
        }
    }
    0
}

/// The library OS's syscall counters: (number, calls, of which -ENOSYS) for each number that was called.
pub fn read_stats(ram: &GuestRam, addr: u64) -> Vec<(u64, u32, u32)> {
    if addr == 0 {
        return Vec::new();
    }
    let Ok(bytes) = ram.read_vec(addr, (SYSCALL_SLOTS * 8) as u64) else { return Vec::new() };
    let word = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap_or_default());
    (0..SYSCALL_SLOTS).filter(|&nr| word(nr) != 0).map(|nr| (nr as u64, word(nr), word(SYSCALL_SLOTS + nr))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Captured {
        out: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
        traced: std::sync::Mutex<Vec<String>>,
    }

    impl Console for Captured {
        fn write(&self, fd: u64, bytes: &[u8]) -> std::io::Result<()> {
            self.out.lock().unwrap().push((fd, bytes.to_vec()));
            Ok(())
        }
        fn trace(&self, line: &str) {
            self.traced.lock().unwrap().push(line.to_string());
        }
    }

    fn handle(ram: &GuestRam, block: u64, nr: u32, console: &Captured) -> Action {
        super::handle(ram, block, nr, (console, false, None, None), 0, &[Parker::default(), Parker::default()])
    }

    fn put_u64s(ram: &GuestRam, addr: u64, values: &[u64]) {
        for (i, v) in values.iter().enumerate() {
            ram.write(addr + i as u64 * 8, &v.to_le_bytes()).unwrap();
        }
    }

    fn ret(ram: &GuestRam) -> i64 {
        read_u64s(ram, 0x1000 + 48, 1).unwrap()[0] as i64
    }

    #[test]
    fn trace_lines_are_printed_only_when_asked_for() {
        let ram = GuestRam::new(1 << 20).unwrap();
        // getpid() = 7, as the library OS reports it.
        put_u64s(&ram, 0x2000, &[39, 0, 0, 0, 0, 0, 0, 7]);
        put_u64s(&ram, 0x1000, &[0x2000]);
        let c = Captured::default();
        let trace = Hypercall::Trace as u32;
        assert_eq!(handle(&ram, 0x1000, trace, &c), Action::Resume);
        assert_eq!(ret(&ram), -EPERM, "refused without --trace-syscalls");
        assert!(c.traced.lock().unwrap().is_empty());
        let parkers = [Parker::default()];
        assert_eq!(super::handle(&ram, 0x1000, trace, (&c, true, None, None), 0, &parkers), Action::Resume);
        assert_eq!(ret(&ram), 0);
        assert_eq!(*c.traced.lock().unwrap(), ["getpid(0x0, 0x0, 0x0, 0x0, 0x0, 0x0) = 7"]);
    }

    #[test]
    fn write_gathers_segments() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write(0x3000, b"hello ").unwrap();
        ram.write(0x5000, b"world").unwrap();
        put_u64s(&ram, 0x2000, &[0x3000, 6, 0x5000, 5]);
        put_u64s(&ram, 0x1000, &[1, 0x2000, 2]);
        let c = Captured::default();
        assert_eq!(handle(&ram, 0x1000, 1, &c), Action::Resume);
        assert_eq!(*c.out.lock().unwrap(), vec![(1, b"hello world".to_vec())]);
        assert_eq!(ret(&ram), 11);
    }

    #[test]
    fn stdin_is_read_into_segments_and_bad_ones_take_nothing() {
        let ram = GuestRam::new(4 << 20).unwrap();
        let c = Captured::default();
        let parkers = [Parker::default()];
        let read = |relay: Option<&StdinRelay>| {
            super::handle(&ram, 0x1000, Hypercall::ReadStdin as u32, (&c, false, relay, None), 0, &parkers);
            ret(&ram)
        };
        put_u64s(&ram, 0x1000, &[0x2000, 2]);
        put_u64s(&ram, 0x2000, &[0x3000, 3, 0x5000, 10]);
        assert_eq!(read(None), 0, "no stdin: its end");
        let relay = StdinRelay::new(&ram, 0x8000);
        assert_eq!(read(Some(&relay)), -EAGAIN, "nothing has come");
        relay.pump(&ram, &mut &b"hello world"[..], || {});
        // A segment beyond RAM, and a total above the limit: refused, and nothing is taken.
        put_u64s(&ram, 0x2000, &[1 << 30, 3, 0x5000, 10]);
        assert_eq!(read(Some(&relay)), -EFAULT);
        put_u64s(&ram, 0x2000, &[0x3000, MAX_WRITE_BYTES, 0x5000, 10]);
        assert_eq!(read(Some(&relay)), -EINVAL);
        put_u64s(&ram, 0x1000, &[0x2000, MAX_IO_SEGMENTS + 1]);
        assert_eq!(read(Some(&relay)), -EINVAL);
        put_u64s(&ram, 0x1000, &[0x2000, 2]);
        put_u64s(&ram, 0x2000, &[0x3000, 3, 0x5000, 10]);
        assert_eq!(read(Some(&relay)), 11);
        assert_eq!(ram.read_vec(0x3000, 3).unwrap(), b"hel");
        assert_eq!(ram.read_vec(0x5000, 8).unwrap(), b"lo world");
        assert_eq!(read(Some(&relay)), 0, "then the end");
    }

    #[test]
    fn terminal_requests_need_a_terminal_and_a_known_request() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let c = Captured::default();
        put_u64s(&ram, 0x1000, &[kiln_abi::hypercall::TIOCGWINSZ, 0x3000]);
        assert_eq!(handle(&ram, 0x1000, Hypercall::Terminal as u32, &c), Action::Resume);
        assert_eq!(ret(&ram), -ENOTTY, "the console is no terminal");
        // TIOCSTI (pushing input into a terminal) is never passed on.
        put_u64s(&ram, 0x1000, &[0x5412, 0x3000]);
        assert_eq!(handle(&ram, 0x1000, Hypercall::Terminal as u32, &c), Action::Resume);
        assert_eq!(ret(&ram), -EINVAL);
    }

    #[test]
    fn hostile_arguments_fail_without_touching_the_host() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let c = Captured::default();
        // A segment beyond RAM, a huge count, a length that overflows, a bad fd.
        for (args, errno) in [
            ([1, 0x2000, 1], EFAULT),
            ([1, 0x2000, 1 << 40], EINVAL),
            ([2, 0x2000, 2], EINVAL),
            ([7, 0x2000, 1], EBADF),
            ([1, u64::MAX - 4, 1], EFAULT),
        ] {
            put_u64s(&ram, 0x2000, &[1 << 30, 8, 0x3000, u64::MAX]);
            if errno == EINVAL && args[2] == 2 {
                put_u64s(&ram, 0x2000, &[0x3000, 8, 0x3000, u64::MAX]);
            }
            put_u64s(&ram, 0x1000, &args);
            assert_eq!(handle(&ram, 0x1000, 1, &c), Action::Resume);
            assert_eq!(ret(&ram), -errno, "{args:?}");
        }
        assert!(c.out.lock().unwrap().is_empty());
        assert!(matches!(handle(&ram, 0x1000, 99, &c), Action::Stop(_)));
        assert!(matches!(handle(&ram, 1 << 30, 1, &c), Action::Stop(_)));
    }

    #[test]
    fn exit_by_code_or_signal() {
        let ram = GuestRam::new(1 << 20).unwrap();
        put_u64s(&ram, 0x1000, &[300, 0]);
        assert_eq!(handle(&ram, 0x1000, 2, &Captured::default()), Action::Exit(300 & 0xff));
        put_u64s(&ram, 0x1000, &[134, 6]);
        assert_eq!(handle(&ram, 0x1000, 2, &Captured::default()), Action::Killed(6));
        put_u64s(&ram, 0x1000, &[0, 1000]);
        assert!(matches!(handle(&ram, 0x1000, 2, &Captured::default()), Action::Stop(_)));
        // abort(): the record next to the block holds SIGABRT and the registers of the thread that raised it.
        let regs = kiln_abi::hypercall::FaultRegs { rip: 0x401234, ..Default::default() };
        let record = FaultRecord { signal: 6, regs, ..FaultRecord::default() };
        let words = [6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x401234, 0];
        put_u64s(&ram, 0x1000 + FAULT_RECORD_OFFSET, &words);
        put_u64s(&ram, 0x1000, &[134, 6, EXIT_RAISED]);
        assert_eq!(handle(&ram, 0x1000, 2, &Captured::default()), Action::Raised(record));
        // A record naming another signal than the exit's is not believed.
        put_u64s(&ram, 0x1000, &[139, 11, EXIT_RAISED]);
        assert_eq!(handle(&ram, 0x1000, 2, &Captured::default()), Action::Killed(11));
    }

    #[test]
    fn waits_are_bounded() {
        let ram = GuestRam::new(1 << 20).unwrap();
        put_u64s(&ram, 0x1000, &[2_000_000]);
        let t = std::time::Instant::now();
        assert_eq!(handle(&ram, 0x1000, 5, &Captured::default()), Action::Resume);
        assert!(t.elapsed() >= std::time::Duration::from_millis(2));
        assert_eq!(ret(&ram), 0);
    }

    #[test]
    fn a_wait_asks_for_the_look_it_carries_once_it_ends() {
        let ram = GuestRam::new(1 << 20).unwrap();
        put_u64s(&ram, 0x1000, &[1_000, 10_000_000]);
        let after = std::time::Duration::from_millis(10);
        assert_eq!(handle(&ram, 0x1000, 5, &Captured::default()), Action::Preempt { vcpus: 1, after, replace: None });
        put_u64s(&ram, 0x1000, &[1_000, 0]);
        assert_eq!(handle(&ram, 0x1000, 5, &Captured::default()), Action::Resume);
    }

    #[test]
    fn kicks_reach_existing_vcpus_only() {
        let ram = GuestRam::new(1 << 20).unwrap();
        put_u64s(&ram, 0x1000, &[1]);
        assert_eq!(handle(&ram, 0x1000, 7, &Captured::default()), Action::Resume);
        put_u64s(&ram, 0x1000, &[2]);
        assert!(matches!(handle(&ram, 0x1000, 7, &Captured::default()), Action::Stop(_)));
    }

    #[test]
    fn preemptions_reach_existing_vcpus_only() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let preempt = |args: &[u64]| {
            put_u64s(&ram, 0x1000, args);
            handle(&ram, 0x1000, Hypercall::Preempt as u32, &Captured::default())
        };
        let after = std::time::Duration::from_millis(10);
        assert_eq!(preempt(&[0b11, 10_000_000, 0]), Action::Preempt { vcpus: 0b11, after, replace: None });
        assert_eq!(preempt(&[0b1, 10_000_000, 1]), Action::Preempt { vcpus: 0b1, after, replace: Some(Some(after)) });
        let none = preempt(&[0b1, WAIT_FOREVER, 1]);
        assert!(matches!(none, Action::Preempt { vcpus: 1, replace: Some(None), .. }), "{none:?}");
        assert!(matches!(preempt(&[0b100, 0]), Action::Stop(_)));
        assert!(matches!(preempt(&[1 << 63, 0]), Action::Stop(_)));
    }

    #[test]
    fn discarded_ranges_read_as_zero_and_bad_ones_change_nothing() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write(0x4000, &[7u8; 0x2000]).unwrap();
        put_u64s(&ram, 0x2000, &[0x4000, 0x1000]);
        put_u64s(&ram, 0x1000, &[0x2000, 1]);
        assert_eq!(handle(&ram, 0x1000, 10, &Captured::default()), Action::Resume);
        assert_eq!(ret(&ram), 0);
        assert_eq!(ram.read_vec(0x4000, 0x1000).unwrap(), vec![0u8; 0x1000]);
        assert_eq!(ram.read_vec(0x5000, 0x1000).unwrap(), vec![7u8; 0x1000]);
        // Unaligned, or past RAM: refused, and the valid range before it is kept too.
        for bad in [[0x5000, 0x800], [0x5001, 0x1000], [1 << 20, 0x1000], [u64::MAX - 0xfff, 0x1000]] {
            put_u64s(&ram, 0x2000, &[0x5000, 0x1000, bad[0], bad[1]]);
            put_u64s(&ram, 0x1000, &[0x2000, 2]);
            assert_eq!(handle(&ram, 0x1000, 10, &Captured::default()), Action::Resume);
            assert_eq!(ret(&ram), -EINVAL, "{bad:x?}");
            assert_eq!(ram.read_vec(0x5000, 0x1000).unwrap(), vec![7u8; 0x1000]);
        }
    }

    #[test]
    fn counters_are_read_for_numbers_that_were_called() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let stats = 0x4000;
        ram.write(stats + 4, &3u32.to_le_bytes()).unwrap(); // write (1) called 3 times
        ram.write(stats + 4 * 435, &2u32.to_le_bytes()).unwrap(); // clone3 called twice ...
        ram.write(stats + 4 * (SYSCALL_SLOTS as u64 + 435), &2u32.to_le_bytes()).unwrap(); // ... both -ENOSYS
        assert_eq!(read_stats(&ram, stats), vec![(1, 3, 0), (435, 2, 2)]);
        assert!(read_stats(&ram, 1 << 30).is_empty());
        assert!(read_stats(&ram, 0).is_empty());
    }
}
