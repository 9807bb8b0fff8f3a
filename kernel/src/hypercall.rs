//! Calls into the VMM: fill this vCPU's hypercall block, `out` the number to the hypercall port. One VM exit each, so
//! they are kept off every path that can do without them.

use crate::{cpu, percpu};
use core::fmt::Write;
use kiln_abi::hypercall::{
    FaultRecord, FaultRegs, Hypercall, HypercallBlock, EXIT_RAISED, FAULT_RECORD_OFFSET, HYPERCALL_PORT,
    MAX_PANIC_MESSAGE,
};

pub fn call(nr: Hypercall, args: &[u64]) -> i64 {
    let block = percpu::current().hypercall_block as *mut HypercallBlock;
    // SAFETY: the block is this vCPU's own frame in the direct map, set up by the VMM and named in the boot info.
    unsafe {
        let b = &mut *block;
        b.args = [0; 6];
        b.args[..args.len()].copy_from_slice(args);
        b.ret = 0;
    }
    cpu::port_out(HYPERCALL_PORT, nr as u32);
    // SAFETY: as above; the VMM wrote `ret` before resuming us.
    unsafe { core::ptr::read_volatile(&(*block).ret) }
}

/// Ends the VM: the program exited with `code`, or was killed by `signal` if it is not 0.
pub fn exit(code: u64, signal: u64) -> ! {
    end(&[code, signal])
}

/// Ends the VM: the program was killed by `signal`, whose default action dumps core, with these registers of the
/// thread that raised or took it; the VMM makes its crash report (and core file) from them.
pub fn exit_dumping_core(signal: u64, regs: FaultRegs) -> ! {
    let record = FaultRecord { signal, regs, ..FaultRecord::default() };
    let at = percpu::current().hypercall_block + FAULT_RECORD_OFFSET;
    // SAFETY: the record's place lies in this vCPU's own hypercall block page (in the direct map), where the VMM
    // writes fault records; nothing else uses it while this vCPU ends the VM.
    unsafe { core::ptr::write_volatile(at as *mut FaultRecord, record) };
    end(&[128 + signal, signal, EXIT_RAISED])
}

fn end(args: &[u64]) -> ! {
    // Volumes are written back as an unmount would: what the program wrote outlives it even without fsync.
    crate::volume::unmount_all();
    call(Hypercall::Exit, args);
    // The VMM never resumes an exited vCPU; if one did, stay put rather than run on.
    loop {
        core::hint::spin_loop();
    }
}

/// Every thread waits and nothing can ever wake one: tell the VMM rather than hang, with `waits` saying on what.
/// Does not return.
pub fn deadlock(threads: u64, waits: &str) -> ! {
    let len = (waits.len() as u64).min(MAX_PANIC_MESSAGE);
    let phys = crate::mm::virt_to_phys(waits.as_ptr() as u64).unwrap_or(0);
    call(Hypercall::Deadlock, &[threads, phys, len]);
    loop {
        core::hint::spin_loop();
    }
}

struct MessageBuffer {
    bytes: [u8; MAX_PANIC_MESSAGE as usize],
    len: usize,
}

impl Write for MessageBuffer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

pub fn panic_message(message: &str) -> ! {
    send_panic(message.as_bytes())
}

pub fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut buffer = MessageBuffer { bytes: [0; MAX_PANIC_MESSAGE as usize], len: 0 };
    let _ = write!(buffer, "{info}");
    send_panic(&buffer.bytes[..buffer.len])
}

fn send_panic(message: &[u8]) -> ! {
    let phys = crate::mm::virt_to_phys(message.as_ptr() as u64).unwrap_or(0);
    call(Hypercall::Panic, &[phys, message.len() as u64]);
    loop {
        core::hint::spin_loop();
    }
}

/// Every vCPU drops its cached translations before this returns: page-table entries that were present and changed
/// (access taken away, or given back) apply everywhere from now on.
pub fn flush_tlb() {
    call(Hypercall::FlushTlb, &[]);
}
