//! The Kiln library OS. The VMM has already built everything (page tables, the loaded and rewritten program, its
//! stack, the boot info) and starts us at CPL 3 in [`entry`]; we set up our own state, then jump into the program.
//! From then on we run only when the program calls a syscall (a plain `call` through the page-0 trampoline).
#![no_std]
#![no_main]

mod cpu;
mod entry;
mod errno;
mod hypercall;
mod mm;
mod percpu;
mod sched;
mod syscalls;
mod time;
mod user;

use kiln_abi::BootInfo;

/// Called from `_start` on the first library OS stack.
#[no_mangle]
extern "C" fn kiln_main(boot: &'static BootInfo) -> ! {
    if !boot.is_valid() {
        hypercall::panic_message("boot info has the wrong magic or version");
    }
    percpu::init(boot);
    mm::init(boot);
    time::init(boot);
    sched::init(boot);
    syscalls::init(boot);
    // SAFETY: the VMM built the program's initial stack at `app_stack_pointer` and loaded it at `app_entry`.
    unsafe { entry::enter_program(boot.app_entry, boot.app_stack_pointer) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hypercall::panic(info)
}
