//! Starting the other vCPUs, as Kiln's VMM starts vCPUs 1..N: each enters the library OS at `kiln_secondary_start`
//! with its index, on its kernel stack, with its own TSS, and with this layer's traps, timer and kicks set up as on
//! the boot vCPU. Which processors there are comes from the ACPI MADT (`kiln_abi::acpi`: enabled local APIC and x2APIC
//! entries), found through the loader's RSDP or the BIOS areas; the image was laid out for a number of vCPUs (`kiln
//! export --cpus`), which the command line's `nr_cpus=`/`maxcpus=` may lower. Each is started with INIT and two SIPIs
//! at a real-mode trampoline copied below 1 MiB, which enters long mode on the boot page tables (`entry.rs`) and
//! jumps into this layer at its direct-map address. One at a time: the next is started once the last has arrived, and
//! one that does not arrive within a second is left out, as are any after it, saying so; the library OS is told how
//! many vCPUs run. Firmware tables that cannot be read or are damaged leave the image on the boot vCPU, saying why.

use crate::cpus::{self, AP_STACK_SIZE, MAX_CPUS};
use crate::io::{cpuid, rdtsc};
use crate::start::{Firmware, Start};
use crate::{apic, cpu, entry, serial, Shared};
use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering::SeqCst};
use kiln_abi::acpi;
use kiln_abi::layout::{direct_map, PAGE_SIZE};
use kiln_abi::BootInfo;

/// The trampoline page's fields (offsets from its start, as the code below uses them): the claim word an AP sets
/// first (a second AP that finds it set halts), the boot page tables, the GDT pointer, the far pointers into 32-bit
/// and 64-bit code, where to go in the direct map with which page tables, stack and vCPU index, and the GDT.
const CLAIM: usize = 8;
const BOOT_CR3: usize = 16;
const GDTR: usize = 32;
const FAR32: usize = 40;
const FAR64: usize = 48;
const ENTRY64: usize = 56;
const IMAGE_CR3: usize = 64;
const STACK_TOP: usize = 72;
const INDEX: usize = 80;
const GDT: usize = 88;
const GDT_ENTRIES: [u64; 4] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0x00af_9a00_0000_ffff];
const CODE32_SELECTOR: u16 = 0x08;
const CODE64_SELECTOR: u16 = 0x18;
/// Where the trampoline may go: a RAM page in conventional memory, below the EBDA.
const TRAMPOLINE_PAGES: core::ops::Range<u64> = 0x8000..0x9f000;

/// The waits of the start-up sequence (Intel SDM 8.4.4.1), for processors of old; under a hypervisor (CPUID says so)
/// none after INIT and a short one between the SIPIs, as Linux waits on modern processors (a hypervisor applies them in
/// order): 10 ms per vCPU is a lot of a microVM's boot. And how long an AP has to arrive.
const INIT_DELAY_NS: u64 = 10_000_000;
const SIPI_DELAY_NS: u64 = 200_000;
const VIRTUAL_SIPI_DELAY_NS: u64 = 10_000;
const ARRIVAL_TIMEOUT_NS: u64 = 1_000_000_000;

global_asm!(
    ".pushsection .text.kiln_ap_trampoline, \"ax\"",
    ".globl kiln_ap_trampoline",
    "kiln_ap_trampoline:",
    // A SIPI starts the AP here in real mode, CS = the page's paragraph, IP = 0.
    ".code16",
    "    cli",
    "    jmp 1f",
    ".org 128",
    "1:  movw %cs, %ax",
    "    movw %ax, %ds",
    "    lock btsw $0, {claim}",
    "    jc 9f",
    "    xorl %ebx, %ebx",
    "    movw %ax, %bx",
    "    shll $4, %ebx",
    "    lgdtl {gdtr}",
    "    movl %cr0, %eax",
    "    orl $1, %eax",
    "    movl %eax, %cr0",
    "    ljmpl *{far32}",
    "9:  cli",
    "    hlt",
    "    jmp 9b",
    ".code32",
    ".globl kiln_ap_code32",
    "kiln_ap_code32:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movl %cr4, %eax",
    "    orl $0x20, %eax",
    "    movl %eax, %cr4",
    "    movl {boot_cr3}(%ebx), %eax",
    "    movl %eax, %cr3",
    "    movl $0xc0000080, %ecx",
    "    rdmsr",
    "    orl $0x100, %eax",
    "    wrmsr",
    "    movl %cr0, %eax",
    "    orl $0x80000001, %eax",
    "    movl %eax, %cr0",
    "    ljmpl *{far64}(%ebx)",
    ".code64",
    ".globl kiln_ap_code64",
    "kiln_ap_code64:",
    // The upper halves of registers are undefined after 32-bit code.
    "    movl %ebx, %ebx",
    "    movq {entry64}(%rbx), %rax",
    "    movq {image_cr3}(%rbx), %rdx",
    "    movq {stack_top}(%rbx), %rsi",
    "    movq {index}(%rbx), %rdi",
    "    jmpq *%rax",
    ".globl kiln_ap_trampoline_end",
    "kiln_ap_trampoline_end:",
    ".popsection",
    // In this layer, at its direct-map address (which the boot page tables map too): the image's page tables, the AP's
    // stack, then Rust.
    ".pushsection .text.kiln_ap_entry64, \"ax\"",
    ".globl kiln_ap_entry64",
    "kiln_ap_entry64:",
    "    movq %rdx, %cr3",
    "    movq %rsi, %rsp",
    "    call {main}",
    "    ud2",
    ".popsection",
    claim = const CLAIM,
    gdtr = const GDTR,
    far32 = const FAR32,
    boot_cr3 = const BOOT_CR3,
    far64 = const FAR64,
    entry64 = const ENTRY64,
    image_cr3 = const IMAGE_CR3,
    stack_top = const STACK_TOP,
    index = const INDEX,
    main = sym kiln_pvh_ap_main,
    options(att_syntax),
);

extern "C" {
    static kiln_ap_trampoline: u8;
    static kiln_ap_code32: u8;
    static kiln_ap_code64: u8;
    static kiln_ap_trampoline_end: u8;
    static kiln_ap_entry64: u8;
}

/// What `find_processors` found for `start_processors`: the APs' APIC IDs, in the MADT's order, and the page for the
/// trampoline.
struct Found {
    ids: [u32; MAX_CPUS],
    count: usize,
    page: u64,
}

static FOUND: Shared<Found> = Shared(UnsafeCell::new(Found { ids: [0; MAX_CPUS], count: 0, page: 0 }));

/// The AP being started: 0 while it is awaited, 1 once it arrived, 2 once the boot vCPU gave up on it (an AP that
/// arrives then halts).
static ARRIVAL: AtomicU32 = AtomicU32::new(0);
const AWAITED: u32 = 0;
const ARRIVED: u32 = 1;
const ABANDONED: u32 = 2;
/// Set once every AP has been started or given up: they enter the library OS then.
static RELEASED: AtomicBool = AtomicBool::new(false);

fn one_vcpu(why: &str) {
    serial::write_str("kiln: ");
    serial::write_str(why);
    serial::write_str(": running on one vCPU\n");
}

/// The command line's cap on the vCPUs (Linux's `nr_cpus=N` or `maxcpus=N`; 0 counts as 1).
fn cap(cmdline: &[u8]) -> Option<usize> {
    let words = cmdline.split(|b| b.is_ascii_whitespace()).take_while(|w| *w != b"--");
    words
        .filter_map(|w| w.strip_prefix(b"nr_cpus=").or_else(|| w.strip_prefix(b"maxcpus=")))
        .filter_map(|v| usize::try_from(crate::virtio::number(v)?).ok())
        .last()
}

/// Reads which processors the machine has, while the boot page tables map its firmware's tables: up to as many as the
/// image was laid out for (`boot.vcpu_count`), the boot vCPU included.
pub fn find_processors(boot: &BootInfo, start: &Start) {
    let laid_out = (boot.vcpu_count as usize).clamp(1, MAX_CPUS);
    let wanted = cap(start.cmdline()).map_or(laid_out, |c| laid_out.min(c.max(1)));
    if wanted == 1 {
        return;
    }
    let rsdp = match start.rsdp() {
        0 => acpi::find_rsdp(&Firmware),
        at => Some(at),
    };
    let Some(rsdp) = rsdp else { return one_vcpu(acpi::AcpiError::NoRsdp.what()) };
    let mut ids = [0u32; MAX_CPUS];
    let listed = match acpi::processors(&Firmware, rsdp, &mut ids) {
        Ok(n) => n,
        Err(e) => return one_vcpu(e.what()),
    };
    let Some(page) = TRAMPOLINE_PAGES.step_by(PAGE_SIZE as usize).find(|&p| start.is_ram(p, PAGE_SIZE)) else {
        return one_vcpu("no RAM below 640 KiB for the other vCPUs' start");
    };
    // The boot vCPU's initial APIC ID.
    let me = cpuid(1, 0)[1] >> 24;
    // SAFETY: only the boot vCPU runs; this is the one reference made.
    let found = unsafe { &mut *FOUND.0.get() };
    found.page = page;
    for &id in ids[..listed].iter().filter(|&&id| id != me) {
        if found.count + 1 == wanted {
            break;
        }
        // The platform layer addresses APICs in xAPIC mode (8-bit IDs).
        if id > 0xfe {
            serial::write_str("kiln: a processor's APIC ID is past 254 (x2APIC only): left out\n");
            continue;
        }
        found.ids[found.count] = id;
        found.count += 1;
    }
}

/// Starts the processors `find_processors` found, one at a time, and tells the library OS how many vCPUs run. On the
/// boot vCPU, once its own state is complete (their stacks come from the start of free memory).
pub fn start_processors(boot: &mut BootInfo) {
    let found = FOUND.0.get();
    // SAFETY: written by `find_processors` on this vCPU, read here only.
    let (ids, count, page) = unsafe { ((*found).ids, (*found).count, (*found).page) };
    let started = match count {
        0 => 1,
        _ => start(boot, &ids[..count], page),
    };
    boot.vcpu_count = started as u32;
    cpus::set_count(started);
    RELEASED.store(true, SeqCst);
}

fn ticks(boot: &BootInfo, ns: u64) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(boot.tsc_hz) / 1_000_000_000).unwrap_or(u64::MAX)
}

/// Starts the APs `ids`; returns how many vCPUs run.
fn start(boot: &mut BootInfo, ids: &[u32], page: u64) -> usize {
    let stacks = boot.free_phys_start.next_multiple_of(PAGE_SIZE);
    let end = stacks + ids.len() as u64 * AP_STACK_SIZE;
    // Leave the library OS a few MiB at least.
    if end.saturating_add(4 << 20) > boot.mem_size {
        one_vcpu("too little memory for the other vCPUs' stacks");
        return 1;
    }
    boot.free_phys_start = end;
    cpus::set_ap_stacks(direct_map(stacks));
    let tramp = direct_map(page) as *mut u8;
    // The labels' addresses: the trampoline's start and end, the code it goes on at, and the way into this layer.
    let code = &raw const kiln_ap_trampoline as u64;
    let len = &raw const kiln_ap_trampoline_end as u64 - code;
    let code32 = &raw const kiln_ap_code32 as u64 - code;
    let code64 = &raw const kiln_ap_code64 as u64 - code;
    let entry64 = &raw const kiln_ap_entry64 as u64;
    if len > PAGE_SIZE || len < GDT as u64 {
        one_vcpu("the other vCPUs' start code does not fit a page");
        return 1;
    }
    let put = |offset: usize, bytes: &[u8]| {
        // SAFETY: inside the trampoline page (offsets below GDT + 32 < 128), RAM below 1 MiB that nothing else uses,
        // in the direct map.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), tramp.add(offset), bytes.len()) }
    };
    // SAFETY: `len` bytes of this layer's code (checked to fit) into the trampoline page.
    unsafe { core::ptr::copy_nonoverlapping(code as *const u8, tramp, len as usize) };
    put(BOOT_CR3, &(entry::boot_tables_phys() as u32).to_le_bytes());
    for (i, entry) in GDT_ENTRIES.iter().enumerate() {
        put(GDT + i * 8, &entry.to_le_bytes());
    }
    put(GDTR, &((GDT_ENTRIES.len() * 8 - 1) as u16).to_le_bytes());
    put(GDTR + 2, &((page + GDT as u64) as u32).to_le_bytes());
    put(FAR32, &((page + code32) as u32).to_le_bytes());
    put(FAR32 + 4, &CODE32_SELECTOR.to_le_bytes());
    put(FAR64, &((page + code64) as u32).to_le_bytes());
    put(FAR64 + 4, &CODE64_SELECTOR.to_le_bytes());
    put(ENTRY64, &entry64.to_le_bytes());
    put(IMAGE_CR3, &crate::handoff().pml4_phys.to_le_bytes());

    let hypervisor = cpuid(1, 0)[2] & (1 << 31) != 0;
    let (init_delay, sipi_delay) = match hypervisor {
        true => (0, ticks(boot, VIRTUAL_SIPI_DELAY_NS)),
        false => (ticks(boot, INIT_DELAY_NS), ticks(boot, SIPI_DELAY_NS)),
    };
    let mut running = 1;
    // Never the boot vCPU itself (an INIT would reset it), should the MADT and CPUID disagree on its ID.
    for &id in ids.iter().filter(|&&id| id != cpus::apic_id(0)) {
        put(STACK_TOP, &cpus::ap_stack_top(running).to_le_bytes());
        put(INDEX, &(running as u64).to_le_bytes());
        ARRIVAL.store(AWAITED, SeqCst);
        fence(SeqCst);
        put(CLAIM, &0u16.to_le_bytes());
        fence(SeqCst);
        apic::start_ap(id, page, init_delay, sipi_delay);
        let give_up = rdtsc().saturating_add(ticks(boot, ARRIVAL_TIMEOUT_NS));
        let arrived = loop {
            if ARRIVAL.load(SeqCst) == ARRIVED {
                break true;
            }
            if rdtsc() > give_up {
                // It may arrive right now: whichever of the two comes first decides.
                break ARRIVAL.compare_exchange(AWAITED, ABANDONED, SeqCst, SeqCst).is_err();
            }
            core::hint::spin_loop();
        };
        if !arrived {
            // It may still be on its way through the trampoline and this stack: no other AP is started after it.
            put(CLAIM, &1u16.to_le_bytes());
            serial::write_str("kiln: the processor with APIC ID ");
            serial::write_dec(u64::from(id));
            serial::write_str(" did not start within a second: running on ");
            serial::write_dec(running as u64);
            serial::write_str(" vCPU(s)\n");
            break;
        }
        running += 1;
    }
    running
}

/// An AP, from `kiln_ap_entry64`, on its stack with the image's page tables: set up as the boot vCPU is, then into the
/// library OS once every AP has been started.
extern "C" fn kiln_pvh_ap_main(index: u64) -> ! {
    let cpu = index as usize;
    let handoff = crate::handoff();
    cpu::enter_final_tables(&handoff);
    // SAFETY: x87 state as Linux starts a CPU with (the library OS restores each thread's own when it switches).
    unsafe { core::arch::asm!("fninit", options(nomem, nostack)) };
    cpu::init(&handoff, cpu, cpus::ap_stack_top(cpu));
    apic::init_local();
    cpus::set_apic_id(cpu, apic::id());
    if ARRIVAL.compare_exchange(AWAITED, ARRIVED, SeqCst, SeqCst).is_err() {
        // Given up on: left out.
        halt_forever();
    }
    while !RELEASED.load(SeqCst) {
        core::hint::spin_loop();
    }
    cpu::enter_library_os(&handoff, cpu)
}

fn halt_forever() -> ! {
    loop {
        // SAFETY: stops this vCPU for good (interrupts off; an NMI comes back to the loop).
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
