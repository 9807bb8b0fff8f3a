//! The local APIC, for its timer (TSC-deadline mode where the CPU has it, else one-shot mode counted at the rate
//! measured against the boot vCPU's TSC) and for interrupts between vCPUs (`send`: kicks, preemptions and TLB
//! flushes; `start_ap`: INIT and SIPI). Every other interrupt source the APIC has is masked, and so is the legacy PIC
//! (an unprogrammed 8259 would raise vectors that collide with exceptions).

use crate::io::{cpuid, outb, rdmsr, rdtsc, wrmsr};
use crate::{mmio, Shared};
use core::cell::UnsafeCell;

/// The timer's vector, and the spurious one (its low four bits set, as older APICs require).
pub const TIMER_VECTOR: u8 = 0x20;
pub const SPURIOUS_VECTOR: u8 = 0x2f;
/// The network card's interrupt, routed through the IOAPIC (`ioapic.rs`).
pub const DEVICE_VECTOR: u8 = 0x21;
/// Another vCPU's word for this one (`send`): look at its kick, preemption and TLB flush requests.
pub const KICK_VECTOR: u8 = 0x22;

const APIC_BASE_MSR: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const TSC_DEADLINE_MSR: u32 = 0x6e0;

const REG_ID: u64 = 0x020;
const REG_EOI: u64 = 0x0b0;
const REG_SPURIOUS: u64 = 0x0f0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_LVT_THERMAL: u64 = 0x330;
const REG_LVT_PERF: u64 = 0x340;
const REG_LVT_LINT0: u64 = 0x350;
const REG_LVT_LINT1: u64 = 0x360;
const REG_LVT_ERROR: u64 = 0x370;
const REG_INITIAL_COUNT: u64 = 0x380;
const REG_CURRENT_COUNT: u64 = 0x390;
const REG_DIVIDE: u64 = 0x3e0;

const SOFTWARE_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TSC_DEADLINE: u32 = 2 << 17;
/// The interrupt command register: a fixed interrupt, INIT or start-up (SIPI), asserted; whether it is still being
/// sent.
const ICR_FIXED: u32 = 0;
const ICR_INIT: u32 = 5 << 8;
const ICR_STARTUP: u32 = 6 << 8;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_PENDING: u32 = 1 << 12;
/// Polls of a pending ICR before the next command is written anyway (QEMU and KVM send at once).
const MAX_ICR_POLLS: u32 = 100_000;
/// The divide configuration for "by 16": a 1 GHz bus still gives one-shot counts of over a minute.
const DIVIDE_BY_16: u32 = 0b0011;
/// How long (TSC ticks, a millisecond's worth) the one-shot rate is measured over.
const CALIBRATION_DIVISOR: u64 = 1000;

#[derive(Clone, Copy)]
struct Apic {
    /// The register window's direct-map address.
    base: u64,
    tsc_deadline: bool,
    /// One-shot mode: timer counts per second (after the divider).
    counts_hz: u64,
    tsc_hz: u64,
}

static APIC: Shared<Apic> = Shared(UnsafeCell::new(Apic { base: 0, tsc_deadline: false, counts_hz: 0, tsc_hz: 0 }));

fn write(reg: u64, value: u32) {
    // SAFETY: `init` mapped the APIC's register window at `base`; every register is a 32-bit word at a 16-byte step.
    unsafe { core::ptr::write_volatile((APIC.get().base + reg) as *mut u32, value) }
}

fn read(reg: u64) -> u32 {
    // SAFETY: as in `write`.
    unsafe { core::ptr::read_volatile((APIC.get().base + reg) as *const u32) }
}

/// On the boot vCPU: maps the APIC's registers, masks the PIC, measures the one-shot rate where needed and sets up
/// its own APIC ([`init_local`]).
pub fn init(tsc_hz: u64) {
    let [_, _, features, edx] = cpuid(1, 0);
    if edx & (1 << 9) == 0 {
        crate::power::fail("this CPU has no local APIC, whose timer Kiln needs for sleeps and time slices");
    }
    // Both PICs: every line masked.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    let msr = rdmsr(APIC_BASE_MSR);
    let phys = msr & 0x000f_ffff_ffff_f000;
    let base = match mmio::map(phys, 0x1000, false) {
        Ok(base) => base,
        Err(e) => mmio::fail("the local APIC", phys, e),
    };
    let tsc_deadline = features & (1 << 24) != 0;
    APIC.set(Apic { base, tsc_deadline, counts_hz: 0, tsc_hz });
    init_local();
    if !tsc_deadline {
        let counts_hz = calibrate(tsc_hz);
        APIC.set(Apic { base, tsc_deadline, counts_hz, tsc_hz });
        write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
    }
}

/// This vCPU's APIC (each has its own behind the same addresses): enabled with every source masked but the timer,
/// which stays quiet until armed. The other vCPUs share the boot vCPU's measurements (one bus clock, one TSC).
pub fn init_local() {
    wrmsr(APIC_BASE_MSR, rdmsr(APIC_BASE_MSR) | APIC_BASE_ENABLE);
    for reg in [REG_LVT_THERMAL, REG_LVT_PERF, REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR] {
        write(reg, LVT_MASKED);
    }
    write(REG_SPURIOUS, SOFTWARE_ENABLE | u32::from(SPURIOUS_VECTOR));
    let apic = APIC.get();
    match (apic.tsc_deadline, apic.counts_hz) {
        (true, _) => write(REG_LVT_TIMER, LVT_TSC_DEADLINE | u32::from(TIMER_VECTOR)),
        // The boot vCPU before its measurement: masked until then.
        (false, 0) => write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR)),
        (false, _) => {
            write(REG_DIVIDE, DIVIDE_BY_16);
            write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
        }
    }
}

/// Writes the interrupt command register: `command` to the APIC `apic_id`, once the previous one has gone.
fn command(apic_id: u32, command: u32) {
    for _ in 0..MAX_ICR_POLLS {
        if read(REG_ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, command);
}

/// Interrupts the vCPU whose APIC is `apic_id` with `vector`. Called with interrupts off (at CPL 0), so that nothing
/// comes between the two register writes.
pub fn send(apic_id: u32, vector: u8) {
    command(apic_id, ICR_FIXED | ICR_ASSERT | u32::from(vector));
}

/// INIT, then (after `init_delay` TSC ticks) two start-ups at the real-mode page `page` (below 1 MiB), `sipi_delay`
/// apart: how a processor is started (Intel SDM 8.4.4.1).
pub fn start_ap(apic_id: u32, page: u64, init_delay: u64, sipi_delay: u64) {
    command(apic_id, ICR_INIT | ICR_ASSERT);
    spin(init_delay);
    for _ in 0..2 {
        command(apic_id, ICR_STARTUP | ICR_ASSERT | (page >> 12) as u32);
        spin(sipi_delay);
    }
}

fn spin(ticks: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// The one-shot timer's rate: counted down, masked, over a millisecond of the TSC.
fn calibrate(tsc_hz: u64) -> u64 {
    write(REG_DIVIDE, DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    let span = (tsc_hz / CALIBRATION_DIVISOR).max(1);
    write(REG_INITIAL_COUNT, u32::MAX);
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < span {
        core::hint::spin_loop();
    }
    let counted = u64::from(u32::MAX - read(REG_CURRENT_COUNT));
    write(REG_INITIAL_COUNT, 0);
    if counted == 0 {
        crate::power::fail("the local APIC's timer does not count");
    }
    counted * CALIBRATION_DIVISOR
}

/// Interrupts the vCPU once the TSC reaches `deadline` (at once if it has).
pub fn arm(deadline: u64) {
    let apic = APIC.get();
    if apic.tsc_deadline {
        // 0 would disarm it: a deadline that has passed fires at once.
        wrmsr(TSC_DEADLINE_MSR, deadline.max(1));
        return;
    }
    let ticks = deadline.saturating_sub(rdtsc());
    let counts = (u128::from(ticks) * u128::from(apic.counts_hz) / u128::from(apic.tsc_hz.max(1))).max(1);
    // A longer wait ends early, and the timer is armed again for what is left.
    write(REG_INITIAL_COUNT, u32::try_from(counts).unwrap_or(u32::MAX));
}

pub fn disarm() {
    if APIC.get().tsc_deadline {
        wrmsr(TSC_DEADLINE_MSR, 0);
    } else {
        write(REG_INITIAL_COUNT, 0);
    }
}

/// Ends the interrupt being handled (not for the spurious vector).
pub fn eoi() {
    write(REG_EOI, 0);
}

/// This CPU's APIC ID, where the IOAPIC sends interrupts.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}
