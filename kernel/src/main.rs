//! The Kiln library OS. The VMM has already built everything (page tables, the loaded and rewritten program, its
//! stack, the boot info) and starts us at CPL 3 in [`entry`]; we set up our own state, then jump into the program.
//! From then on we run only when the program calls a syscall (a plain `call`, from its syscall stubs or through the
//! page-0 trampoline).
#![no_std]
#![no_main]

extern crate alloc;

mod cpu;
mod entry;
mod errno;
mod fault;
mod file;
mod fpu;
mod heap;
mod hypercall;
mod mm;
mod net;
mod percpu;
mod sched;
mod sync;
mod syscall_site;
mod syscalls;
mod time;
mod timers;
mod user;
mod vdso;
mod vfs;
mod virtio_transport;
mod volume;

use core::sync::atomic::{AtomicBool, Ordering};
use kiln_abi::BootInfo;

/// Set by the boot vCPU once the library OS is ready for the others.
static BOOTED: AtomicBool = AtomicBool::new(false);

/// Called from `_start` on the first library OS stack.
#[no_mangle]
extern "C" fn kiln_main(boot: &'static BootInfo) -> ! {
    if !boot.is_valid() {
        hypercall::panic_message("boot info has the wrong magic or version");
    }
    percpu::init(boot, 0);
    fpu::init(boot);
    mm::init(boot);
    heap::init(boot.mem_size);
    time::init(boot);
    core::hint::black_box(&vdso::EXPORTED);
    sched::init(boot);
    let rootfs = (boot.rootfs_len != 0).then(|| {
        // SAFETY: the VMM placed the image in guest RAM below `free_phys_start`, which nothing else uses.
        unsafe {
            core::slice::from_raw_parts(
                kiln_abi::layout::direct_map(boot.rootfs_phys) as *const u8,
                boot.rootfs_len as usize,
            )
        }
    });
    vfs::init(rootfs);
    volume::init(boot);
    vfs::start_in(boot);
    net::init(boot);
    syscalls::init(boot);
    syscall_site::init(boot);
    net::start();
    BOOTED.store(true, Ordering::Release);
    // SAFETY: the VMM built the program's initial stack at `app_stack_pointer` and loaded it at `app_entry`.
    unsafe { entry::enter_program(boot.app_entry, boot.app_stack_pointer) }
}

/// Called from `kiln_secondary_start` on vCPU `cpu`'s boot stack.
#[no_mangle]
extern "C" fn kiln_secondary_main(boot: &'static BootInfo, cpu: usize) -> ! {
    percpu::init(boot, cpu);
    // The boot vCPU sets up memory and the scheduler first; that takes microseconds.
    while !BOOTED.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    sched::run_secondary()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hypercall::panic(info)
}
