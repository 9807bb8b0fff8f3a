//! virtio devices: virtio-mmio ones named on the command line as Linux's `virtio_mmio.device=SIZE@ADDR[:IRQ]`
//! (QEMU's microvm adds one such word per device; Firecracker too), then virtio-pci ones on PCI bus 0 (`pci.rs`).
//! Each window is mapped for the library OS's drivers, which are those it runs under Kiln's VMM
//! (`kernel/src/volume/virtio_blk.rs`, over `kernel/src/virtio_transport.rs`): the platform layer only finds the
//! devices and names them in the boot info. Block devices go to the image's volumes in that order, each with its
//! capacity.

use crate::{apic, ioapic, mmio, pci, power, serial, Shared};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use kiln_abi::boot::{NetInfo, VirtioPciWindows, TRANSPORT_PCI};
use kiln_abi::layout::{direct_map, PAGE_SIZE};
use kiln_abi::BootInfo;

/// The command line's word for a device.
pub const DEVICE_WORD: &[u8] = b"virtio_mmio.device=";
const MAGIC: u32 = 0x7472_6976; // "virt"
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
/// virtio-blk's configuration: the capacity in 512-byte sectors.
const REG_BLK_CAPACITY: u64 = 0x100;
const DEVICE_NET: u32 = 1;
const DEVICE_BLOCK: u32 = 2;
/// virtio-net's configuration: its MAC address.
const REG_NET_MAC: u64 = 0x100;
const REG_QUEUE_NOTIFY: u64 = 0x050;
/// The network card's transmit queue.
const NET_TX_QUEUE: u32 = 1;
/// The command line's word for the card's addresses, as Linux's: `ip=ADDRESS:SERVER:GATEWAY:NETMASK[:...]`.
pub const IP_WORD: &[u8] = b"ip=";
/// The link's MTU: Ethernet's, which QEMU's user networking and a tap device carry.
const MTU: u16 = 1500;

/// The network card's register window (direct-map address), 0 for none or a virtio-pci card.
static NET_WINDOW: Shared<u64> = Shared(UnsafeCell::new(0));
/// The network card's transmit queue's doorbell (direct-map address), 0 for no card; a 32-bit register on
/// virtio-mmio, a 16-bit one on virtio-pci.
static NET_DOORBELL: Shared<u64> = Shared(UnsafeCell::new(0));
static NET_DOORBELL_PCI: Shared<bool> = Shared(UnsafeCell::new(false));
/// virtio-pci's common configuration: `queue_select` and `queue_notify_off`.
const PCI_QUEUE_SELECT: u64 = 0x16;
const PCI_QUEUE_NOTIFY_OFF: u64 = 0x1e;
/// virtio-blk's configuration: the capacity in 512-byte sectors; virtio-net's: its MAC address (both at the start of
/// a virtio-pci device's configuration structure).
const PCI_BLK_CAPACITY: u64 = 0;
const PCI_NET_MAC: u64 = 0;
/// Most virtio-pci devices described (a network card and the volumes).
const MAX_PCI_DEVICES: usize = 1 + kiln_abi::boot::MAX_VOLUMES;
/// Whether the card's interrupt reaches this layer (else a wait looks for frames every few moments).
static NET_INTERRUPTS: Shared<bool> = Shared(UnsafeCell::new(false));
/// The vCPUs the card interrupted since their last wait ended (it interrupts the boot vCPU, which wakes the waiting
/// others, as Kiln's VMM wakes them all when frames come).
static NET_INTERRUPTED: AtomicU64 = AtomicU64::new(0);
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
/// Smallest window that holds a block device's registers and its capacity.
const MIN_WINDOW: u64 = 0x108;
/// The windows' largest size taken from the command line (a window is one page, or part of one).
const MAX_WINDOW: u64 = 0x1000;
/// Most devices looked at.
const MAX_DEVICES: usize = 32;

/// A device's window: guest-physical address and size, and its interrupt line (a GSI), if named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub phys: u64,
    pub size: u64,
    pub irq: Option<u32>,
}

/// `SIZE@ADDR[:IRQ]` with SIZE and ADDR in C notation (decimal, or hex with 0x) and SIZE possibly suffixed K or M.
pub fn parse(spec: &[u8]) -> Option<Window> {
    let at = spec.iter().position(|&b| b == b'@')?;
    let (size, rest) = (&spec[..at], &spec[at + 1..]);
    let (addr, irq) = match rest.iter().position(|&b| b == b':') {
        Some(colon) => (&rest[..colon], Some(u32::try_from(number(&rest[colon + 1..])?).ok()?)),
        None => (rest, None),
    };
    let (size, unit) = match size.last() {
        Some(b'K' | b'k') => (&size[..size.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&size[..size.len() - 1], 1 << 20),
        _ => (size, 1),
    };
    let size = number(size)?.checked_mul(unit)?;
    let phys = number(addr)?;
    (size != 0 && phys.checked_add(size).is_some()).then_some(Window { phys, size, irq })
}

pub fn number(digits: &[u8]) -> Option<u64> {
    let (digits, radix) = match digits {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16u32),
        _ => (digits, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, &d| n.checked_mul(u64::from(radix))?.checked_add(u64::from(char::from(d).to_digit(radix)?)))
}

fn read(base: u64, reg: u64) -> u32 {
    // SAFETY: `base + reg` lies in a device window `mmio::map` mapped: a virtio-mmio one of at least MIN_WINDOW bytes
    // (checked by the caller), or a virtio-pci device's configuration structure.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

/// Finds the devices the command line names and gives them to the library OS; ends the VM, saying why, if a volume
/// of the image has no device.
pub fn discover(boot: &mut BootInfo, cmdline: &[u8]) {
    let windows = cmdline
        .split(|b| b.is_ascii_whitespace())
        .filter_map(|w| w.strip_prefix(DEVICE_WORD))
        .take(MAX_DEVICES)
        .filter_map(|spec| match parse(spec) {
            Some(w) if w.size >= MIN_WINDOW => Some(w),
            _ => {
                serial::write_str("kiln: ignoring a malformed virtio_mmio.device= word\n");
                None
            }
        });
    let mut volumes = boot.volumes.iter_mut().filter(|v| v.mount_len != 0);
    for w in windows {
        let base = match mmio::map(w.phys, w.size.min(MAX_WINDOW), true) {
            Ok(base) => base,
            Err(e) => mmio::fail("a virtio-mmio device", w.phys, e),
        };
        if read(base, REG_MAGIC) != MAGIC || read(base, REG_DEVICE_ID) == 0 {
            continue;
        }
        if read(base, REG_VERSION) != 2 {
            power::fail(
                "a virtio-mmio device is of the legacy version 1, which Kiln does not drive \
                 (QEMU: -global virtio-mmio.force-legacy=false)",
            );
        }
        if read(base, REG_DEVICE_ID) == DEVICE_NET && boot.net.mmio_phys == 0 {
            if let Some(net) = network(cmdline, base + REG_NET_MAC, w.phys) {
                boot.net = net;
                NET_WINDOW.set(base);
                NET_DOORBELL.set(base + REG_QUEUE_NOTIFY);
                if let Some(irq) = w.irq {
                    NET_INTERRUPTS.set(ioapic::route(irq, apic::DEVICE_VECTOR));
                }
            }
            continue;
        }
        if read(base, REG_DEVICE_ID) == DEVICE_BLOCK {
            let Some(volume) = volumes.next() else { continue };
            let sectors = u64::from(read(base, REG_BLK_CAPACITY)) | u64::from(read(base, REG_BLK_CAPACITY + 4)) << 32;
            volume.mmio_phys = w.phys;
            volume.capacity = sectors.saturating_mul(512);
        }
    }
    // Descriptions of virtio-pci devices, for the library OS: a page taken from the start of its free memory.
    let descriptions = boot.free_phys_start;
    let mut described = 0;
    pci::discover(|mut device| {
        if described == MAX_PCI_DEVICES {
            return;
        }
        let at = descriptions + (described * core::mem::size_of::<VirtioPciWindows>()) as u64;
        let device_cfg = direct_map(device.windows.device);
        if device.kind == DEVICE_NET && boot.net.mmio_phys == 0 {
            if let Some(mut net) = network(cmdline, device_cfg + PCI_NET_MAC, at) {
                net.transport = TRANSPORT_PCI;
                boot.net = net;
                NET_DOORBELL.set(pci_doorbell(&device.windows, NET_TX_QUEUE as u16));
                NET_DOORBELL_PCI.set(true);
                NET_INTERRUPTS.set(device.enable_msix(apic::DEVICE_VECTOR, apic::id()));
            } else {
                return;
            }
        } else if device.kind == DEVICE_BLOCK {
            let Some(volume) = volumes.next() else { return };
            let sectors =
                u64::from(read(device_cfg, PCI_BLK_CAPACITY)) | u64::from(read(device_cfg, PCI_BLK_CAPACITY + 4)) << 32;
            volume.mmio_phys = at;
            volume.transport = u32::from(TRANSPORT_PCI);
            volume.capacity = sectors.saturating_mul(512);
        } else {
            return;
        }
        // SAFETY: `at` lies in the page at the start of the free memory, which the library OS is told below not to
        // use, in the direct map.
        unsafe { core::ptr::write_volatile(direct_map(at) as *mut VirtioPciWindows, device.windows) };
        described += 1;
    });
    if described != 0 {
        boot.free_phys_start += PAGE_SIZE;
    }
    if let Some(missing) = volumes.next() {
        serial::write_str("kiln: the image mounts a volume at ");
        serial::write(&missing.mount[..(missing.mount_len as usize).min(missing.mount.len())]);
        serial::write_str(
            " but the host gave no virtio-blk device for it \
             (QEMU: -drive file=FILE,format=raw,if=none,id=v0 -device virtio-blk-device,drive=v0, or \
             virtio-blk-pci under q35)\n",
        );
        power::exit(1);
    }
}

/// The card at `phys` (its MAC mapped at `mac_at`) with the command line's addresses; without them its IPv4 address
/// is 0.0.0.0, which the library OS asks of DHCP. A malformed `ip=` leaves the card out, saying so.
fn network(cmdline: &[u8], mac_at: u64, phys: u64) -> Option<NetInfo> {
    let word = cmdline.split(|b| b.is_ascii_whitespace()).find_map(|w| w.strip_prefix(IP_WORD));
    let (ip, gateway, prefix_len) = match word {
        None | Some(b"dhcp") => ([0; 4], [0; 4], 0),
        Some(value) => match parse_ip(value) {
            Some(addresses) => addresses,
            None => {
                serial::write_str(
                    "kiln: the network card is left out: its ip= word is not ADDRESS::GATEWAY:NETMASK \
                     (ip=dhcp, or none, for DHCP)\n",
                );
                return None;
            }
        },
    };
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        // SAFETY: the configuration's MAC lies inside the device's window (at least MIN_WINDOW bytes, or its
        // configuration structure), mapped by `discover`.
        *b = unsafe { core::ptr::read_volatile((mac_at + i as u64) as *const u8) };
    }
    Some(NetInfo { mmio_phys: phys, mac, mtu: MTU, ipv4: ip, gateway, prefix_len, ..NetInfo::default() })
}

/// Linux's `ip=` value: the client address, the gateway (third field) and the netmask (fourth) as a prefix length.
pub fn parse_ip(value: &[u8]) -> Option<([u8; 4], [u8; 4], u8)> {
    let mut fields = value.split(|&b| b == b':');
    let ip = ipv4(fields.next()?)?;
    let _server = fields.next();
    let gateway = fields.next().map_or(Some([0; 4]), |g| if g.is_empty() { Some([0; 4]) } else { ipv4(g) })?;
    let mask = match fields.next() {
        Some(m) if !m.is_empty() => u32::from_be_bytes(ipv4(m)?),
        _ => 0xffff_ff00,
    };
    // A netmask is ones, then zeros.
    (mask.leading_ones() + mask.trailing_zeros() == 32).then_some((ip, gateway, mask.leading_ones() as u8))
}

fn ipv4(text: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for byte in &mut out {
        *byte = u8::try_from(number(parts.next()?)?).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Sends what the library OS queued on the network card (Kiln's VMM does so whenever a vCPU waits, and the library
/// OS counts on it instead of notifying the card itself).
pub fn send_queued() {
    let doorbell = NET_DOORBELL.get();
    if doorbell == 0 {
        return;
    }
    // SAFETY: the card's transmit doorbell, in a window `discover` mapped: virtio-mmio's QueueNotify, or the
    // virtio-pci notification area's register for the queue.
    unsafe {
        if NET_DOORBELL_PCI.get() {
            core::ptr::write_volatile(doorbell as *mut u16, NET_TX_QUEUE as u16);
        } else {
            core::ptr::write_volatile(doorbell as *mut u32, NET_TX_QUEUE);
        }
    }
}

/// Queue `queue`'s doorbell on the virtio-pci device of windows `w` (direct-map address).
fn pci_doorbell(w: &VirtioPciWindows, queue: u16) -> u64 {
    let common = direct_map(w.common);
    // SAFETY: the common configuration structure, mapped by `pci::discover`; selecting a queue changes nothing else.
    let offset = unsafe {
        core::ptr::write_volatile((common + PCI_QUEUE_SELECT) as *mut u16, queue);
        core::ptr::read_volatile((common + PCI_QUEUE_NOTIFY_OFF) as *const u16)
    };
    direct_map(w.notify) + u64::from(offset) * u64::from(w.notify_multiplier)
}

/// How a wait learns of frames: the card's interrupt, or (None) looking every so often; None too without a card.
pub fn net_interrupts() -> Option<bool> {
    (NET_DOORBELL.get() != 0).then(|| NET_INTERRUPTS.get())
}

/// Takes vCPU `cpu`'s note that the card interrupted since it was last taken.
pub fn take_net_interrupt(cpu: usize) -> bool {
    NET_INTERRUPTED.fetch_and(!(1 << cpu), Ordering::SeqCst) & (1 << cpu) != 0
}

/// The card's interrupt, noted for the wait in progress or the next one (the library OS finds the frames itself).
/// A virtio-mmio card's line is level-triggered: it is acknowledged at the card, so that the line drops; a virtio-pci
/// card's MSI-X message needs nothing more.
pub fn interrupt() {
    let base = NET_WINDOW.get();
    if base != 0 {
        // SAFETY: the card's window, mapped by `discover`; InterruptStatus and InterruptACK are virtio-mmio registers.
        unsafe {
            let status = core::ptr::read_volatile((base + REG_INTERRUPT_STATUS) as *const u32);
            core::ptr::write_volatile((base + REG_INTERRUPT_ACK) as *mut u32, status);
        }
    }
    apic::eoi();
    if NET_DOORBELL.get() != 0 {
        NET_INTERRUPTED.fetch_or(crate::cpus::all(), Ordering::SeqCst);
        crate::timer::wake(crate::timer::waiting());
    }
}
