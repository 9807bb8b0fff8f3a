//! Kiln's platform layer for hosts that are not Kiln's VMM: the PVH entry of an exported image (`kiln export --format
//! pvh`). It starts the library OS exactly as Kiln's VMM does (its page tables, GDT and TSS, CPL 3 at `_start`), and
//! then answers the library OS's hypercalls itself: their `out` to the hypercall port, closed in the TSS I/O bitmap,
//! raises #GP into this layer at CPL 0, which writes to the 16550 serial console, ends the VM through QEMU's
//! `isa-debug-exit`, ACPI or a reset, keeps time with the TSC, waits and ends time slices with the local APIC's timer
//! (and interrupts between vCPUs), starts the other vCPUs (`smp.rs`), and hands the program's faults to the library
//! OS as the VMM does. All knowledge of such hosts lives here; everything above the hypercalls is shared with Kiln's
//! own VMM.
#![no_std]
#![no_main]

mod apic;
mod args;
mod clock;
mod cpu;
mod cpus;
mod entry;
mod hypercall;
mod io;
mod ioapic;
mod mmio;
mod pci;
mod power;
mod serial;
mod smp;
mod start;
mod timer;
mod trap;
mod virtio;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::pvh::Handoff;
use kiln_abi::BootInfo;

/// Written by the export (`kiln_vmm::export`) into the image; read once, at boot.
#[no_mangle]
static KILN_PVH_HANDOFF: Shared<Handoff> = Shared(UnsafeCell::new(Handoff {
    magic: 0,
    boot_info_phys: 0,
    pml4_phys: 0,
    gdt_phys: 0,
    tss_phys: 0,
    hypercall_block_phys: 0,
    entry: 0,
    stack_pointer: 0,
    fault_entry: 0,
    kernel_start: 0,
    kernel_end: 0,
    vdso_start: 0,
    vdso_end: 0,
    lstar: 0,
    at_random_phys: 0,
    layout_phys: 0,
    secondary_entry: 0,
}));

/// A static written only by the boot vCPU before the others start (and read by all after), or one that a single vCPU
/// touches (an element of a per-vCPU array).
pub struct Shared<T>(pub UnsafeCell<T>);
// SAFETY: as above, and the platform layer is never re-entered on a vCPU: it runs with interrupts off (but in a
// `Wait`'s `hlt`, where the interrupts touch none of these) and takes no exception of its own but the fatal ones.
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    pub fn get(&self) -> T {
        // SAFETY: see the Sync impl; volatile because the export writes the bytes after the compiler saw them.
        unsafe { core::ptr::read_volatile(self.0.get()) }
    }

    pub fn set(&self, value: T) {
        // SAFETY: see the Sync impl.
        unsafe { core::ptr::write_volatile(self.0.get(), value) }
    }
}

pub fn handoff() -> Handoff {
    KILN_PVH_HANDOFF.get()
}

/// The boot info the export wrote, which the boot vCPU completes before the library OS and the other vCPUs start.
fn boot_info_mut() -> &'static mut BootInfo {
    let at = kiln_abi::layout::direct_map(handoff().boot_info_phys);
    // SAFETY: the export put the boot info there, in RAM the direct map covers; only the boot vCPU runs, and it holds
    // this one reference while it fills it.
    unsafe { &mut *(at as *mut BootInfo) }
}

/// The boot info, once complete.
pub fn boot_info() -> &'static BootInfo {
    let at = kiln_abi::layout::direct_map(handoff().boot_info_phys);
    // SAFETY: as above; no vCPU writes it any more.
    unsafe { &*(at as *const BootInfo) }
}

/// The end of the RAM the library OS has (the boot info's `mem_size`, fixed at boot).
static RAM_END: AtomicU64 = AtomicU64::new(0);

pub fn ram_end() -> u64 {
    RAM_END.load(Ordering::Relaxed)
}

/// Called by the 32-bit entry (`entry.rs`) in long mode on the platform's stack, with the boot page tables.
#[no_mangle]
extern "C" fn kiln_pvh_main(start_info_phys: u64) -> ! {
    serial::init();
    timer::init();
    let handoff = handoff();
    if !handoff.is_valid() {
        power::fail("this image's platform layer has no handoff (not made by `kiln export`?)");
    }
    let start = start::read(start_info_phys);
    start::require_ram(start, handoff.boot_info_phys + kiln_abi::layout::PAGE_SIZE, None);
    cpu::check_features();
    let boot = boot_info_mut();
    if !boot.is_valid() {
        power::fail("the image's boot info has the wrong magic or version");
    }
    // While the boot page tables map the firmware's tables.
    smp::find_processors(boot, start);
    start::fit_memory(boot, start);
    clock::init(boot);
    start::refresh_randomness(boot, &handoff);
    cpu::enter_final_tables(&handoff);
    // From here on only the direct map and the program's mappings exist.
    start::zero_free_memory(boot);
    args::apply_command_line(boot, start.cmdline());
    cpus::set_hypercall_blocks(boot.hypercall_block_phys);
    cpu::init(&handoff, 0, entry::stack_top());
    mmio::init(handoff.pml4_phys);
    apic::init(boot.tsc_hz);
    cpus::set_apic_id(0, apic::id());
    virtio::discover(boot, start.cmdline());
    RAM_END.store(boot.mem_size, Ordering::Relaxed);
    smp::start_processors(boot);
    cpu::enter_library_os(&handoff, 0)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::write_str("kiln: the platform layer failed: ");
    if let Some(s) = info.message().as_str() {
        serial::write_str(s);
    }
    serial::write_str("\n");
    power::exit(70)
}
