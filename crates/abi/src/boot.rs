//! The boot info: written by the VMM into guest memory before the first instruction runs, read by the library OS.

/// `BootInfo::magic`: "KILNBOOT".
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"KILNBOOT");
/// Also covers the root filesystem image's format (`rootfs::MAGIC`): 9 since its index came before the data, 10
/// since the break may start with pages mapped (`brk_mapped_end`).
pub const BOOT_VERSION: u32 = 10;

/// `BootInfo::flags`: send every syscall to the VMM for `--trace-syscalls`.
pub const BOOT_FLAG_TRACE_SYSCALLS: u64 = 1 << 0;
/// `BootInfo::flags`: the VM is a container of a pod whose containers share its network (the user-mode network in the
/// pod's namespace): the library OS tells the VMM of the TCP ports it listens on ([`crate::Hypercall::Listen`]), and a
/// TCP connection to the loopback or its own address on a port it does not listen on goes to the gateway, which the
/// VMM carries to the pod's loopback, where the other containers' ports are.
pub const BOOT_FLAG_POD_NETWORK: u64 = 1 << 1;
/// Index of the first word of the host-signal page that the library OS writes (see `BootInfo::host_signals_phys`).
pub const HOST_SIGNAL_TAKEN: u64 = 64;
/// Index of the host-signal page's word that says what the program's stdin holds, which the VMM writes (one of
/// `STDIN_*`): a library OS reads a stdin of [`STDIN_NONE`] as end of file without asking the VMM.
pub const HOST_STDIN_STATE: u64 = 128;
/// Index of the word the VMM bumps each time input comes to an empty stdin or it ends (after the state changed): the
/// library OS watches it to wake the threads that wait to read.
pub const HOST_STDIN_CHANGES: u64 = 129;
/// Index of the word the VMM sets to 1 when the program's standard streams are a terminal (a container's `-t`):
/// the library OS then answers the terminal ioctls through [`crate::Hypercall::Terminal`], else with ENOTTY.
pub const HOST_TERMINAL: u64 = 130;
/// The VM has no stdin (`kiln run`'s): it reads as end of file.
pub const STDIN_NONE: u64 = 0;
/// Nothing has come yet: a read waits (or fails with EAGAIN, non-blocking) until the state changes.
pub const STDIN_EMPTY: u64 = 1;
/// Bytes are waiting, or stdin ended: a [`crate::Hypercall::ReadStdin`] takes them (0 at the end).
pub const STDIN_READY: u64 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootInfo {
    pub magic: u64,
    pub version: u32,
    pub vcpu_count: u32,
    pub flags: u64,
    /// Bytes of guest-physical RAM, starting at physical 0.
    pub mem_size: u64,
    /// First guest-physical byte the VMM left unused; from here to `mem_size` belongs to the library OS's allocator.
    pub free_phys_start: u64,
    /// Guest-physical address of the PML4 (also the value of CR3).
    pub pml4_phys: u64,
    /// Guest-physical address of vCPU 0's [`crate::HypercallBlock`]; vCPU `i`'s is `i` pages further.
    pub hypercall_block_phys: u64,
    /// Guest-physical address and size of vCPU 0's library OS stack; vCPU `i`'s is `i` sizes further.
    pub kernel_stack_phys: u64,
    pub kernel_stack_size: u64,
    /// Where the application starts: its entry point and its initial stack pointer (argc, argv, envp, auxv).
    pub app_entry: u64,
    pub app_stack_pointer: u64,
    /// Lowest and highest address of the main thread's stack mapping.
    pub app_stack_bottom: u64,
    pub app_stack_top: u64,
    /// First address after the application's highest segment: the initial program break.
    pub brk_start: u64,
    /// End of the memory the VMM mapped, writable and zero, from `brk_start` on for the break to grow into (the rest
    /// of the 2 MiB page holding the program's data, `loader::break_window`); `brk_start` rounded up for none.
    pub brk_mapped_end: u64,
    /// Guest-virtual address and length of the executable's path, for `readlink("/proc/self/exe")`.
    pub exe_path_addr: u64,
    pub exe_path_len: u64,
    /// Guest-virtual address and length of the directory the program starts in (`kiln run -w`): an absolute path,
    /// made if missing. Length 0 for the root.
    pub workdir_addr: u64,
    pub workdir_len: u64,
    /// Time: the guest TSC counts `tsc_hz` per second and read `boot_tsc` at `boot_realtime_ns` (Unix epoch).
    pub tsc_hz: u64,
    pub boot_tsc: u64,
    pub boot_realtime_ns: u64,
    /// Seed for the library OS's random number generator (`getrandom`).
    pub random_seed: [u8; 32],
    /// Guest-physical address of the host-signal page: signals the host forwards to the program (Ctrl-C, `kill` of
    /// kiln). Word 0 is a generation the VMM bumps after bumping word `n` for signal `n` (1-63); the library OS only
    /// reads those. Word [`HOST_SIGNAL_TAKEN`] + `n` is the library OS's: the count of signal `n` it has taken
    /// (delivered, or acted on), which the VMM only compares with its own to stop a program that never takes one.
    pub host_signals_phys: u64,
    /// Guest-physical address and length of the root filesystem image (`kiln_abi::rootfs`); length 0 for none.
    pub rootfs_phys: u64,
    pub rootfs_len: u64,
    pub net: NetInfo,
    /// Volumes to mount (`kiln run -v`), in the order given; unused entries have `mmio_phys` 0.
    pub volumes: [VolumeInfo; MAX_VOLUMES],
    /// The program's syscall stub area `[start, end)` (empty for none): a syscall whose return address lies there was
    /// made by a stub's [`crate::layout::STUB_CALL_LEN`]-byte call, any other by the 2-byte `call *%rax` into page 0.
    /// The area starts with the syscall entry's address, then the offset in it of its restart table.
    pub syscall_stubs_start: u64,
    pub syscall_stubs_end: u64,
    /// The program's RLIMIT_NOFILE, soft and hard (a container's `process.rlimits`); 0 for the library OS's own.
    /// Last, so that a library OS of the previous layout reads what it knows and leaves this.
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// The XSAVE components the vCPUs have enabled (XCR0: x87, SSE, AVX, AVX-512) and the size of the standard-format
    /// area that holds them: what the library OS saves of a thread it switches away from in its code, and puts in
    /// signal frames. 0 for neither: the `fxsave` image (x87 and SSE) is then all there is.
    pub xsave_features: u64,
    pub xsave_size: u64,
    /// The card's routes besides its default ones (a pod's CNI routes, `RouteInfo`), in the order given; unused
    /// entries have family [`ROUTE_NONE`]. Last, as `nofile_soft` is.
    pub routes: [RouteInfo; MAX_ROUTES],
}

// The VMM writes the boot info into one page.
const _: () = assert!(core::mem::size_of::<BootInfo>() <= 4096);

/// Most routes [`BootInfo::routes`] holds.
pub const MAX_ROUTES: usize = 16;
/// [`RouteInfo::family`]: an unused entry.
pub const ROUTE_NONE: u8 = 0;
/// [`RouteInfo::family`]: an IPv4 route (its addresses in the first 4 bytes).
pub const ROUTE_IPV4: u8 = 4;
/// [`RouteInfo::family`]: an IPv6 route.
pub const ROUTE_IPV6: u8 = 6;

/// A route through the network card: packets to `destination`/`prefix_len` go to `gateway`, or straight to their
/// destination on the card's link when the gateway is all zero (a link-scope route, as Calico's CNI plugin makes to
/// its gateway 169.254.1.1). The most specific route wins, the card's own network and its default route included.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteInfo {
    pub family: u8,
    pub prefix_len: u8,
    pub _reserved: [u8; 6],
    pub destination: [u8; 16],
    pub gateway: [u8; 16],
}

/// The network card, if the VM has one: a virtio-net device behind a virtio-mmio register window, and the addresses
/// the library OS takes on it (no router advertisements: the VMM decides, as it decides everything else about the VM;
/// only an exported image's IPv4 address may be left to DHCP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetInfo {
    /// Guest-physical address of the register window ([`NET_MMIO_SIZE`] bytes); 0 for no card. With
    /// [`TRANSPORT_PCI`], the address of the device's [`VirtioPciWindows`] instead.
    pub mmio_phys: u64,
    pub mac: [u8; 6],
    /// Largest IP packet the link carries.
    pub mtu: u16,
    /// 0.0.0.0: the library OS asks DHCP for it, and for the prefix and gateway (an exported image booted without
    /// Linux's `ip=`; Kiln's VMM always gives one).
    pub ipv4: [u8; 4],
    /// The IPv4 default router; all zero for none (only the network and [`BootInfo::routes`] are then reachable).
    pub gateway: [u8; 4],
    pub prefix_len: u8,
    /// Prefix length of `ipv6`; 0 when the card carries no IPv6.
    pub ipv6_prefix_len: u8,
    /// How the device is reached: [`TRANSPORT_MMIO`] (Kiln's VMM always) or [`TRANSPORT_PCI`].
    pub transport: u8,
    pub _reserved: [u8; 5],
    pub ipv6: [u8; 16],
    /// The IPv6 default router; all zero for none (only the prefix is then reachable).
    pub gateway6: [u8; 16],
}

/// A device behind a virtio-mmio register window.
pub const TRANSPORT_MMIO: u8 = 0;
/// A virtio-pci device (modern: its registers in memory BARs, found from its capabilities). Only an exported image's
/// platform layer finds such devices (`kernel/pvh/pci.rs`); it describes each in a [`VirtioPciWindows`].
pub const TRANSPORT_PCI: u8 = 1;

/// Where a virtio-pci device's register structures are (guest-physical addresses, each mapped for the library OS's
/// drivers at its direct-map address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioPciWindows {
    /// The common configuration (`virtio_pci_common_cfg`).
    pub common: u64,
    /// The notification area: queue `q`'s doorbell is at `notify + queue_notify_off(q) * notify_multiplier`.
    pub notify: u64,
    /// The device's own configuration (a MAC, a capacity).
    pub device: u64,
    pub notify_multiplier: u32,
    /// The MSI-X table entry the driver gives its queues' interrupts (`queue_msix_vector`), or 0xffff for none
    /// (the driver polls; only the network card's are taken).
    pub queue_vector: u32,
}

/// Size of the card's register window.
pub const NET_MMIO_SIZE: u64 = 0x1000;

/// Most volumes one VM mounts.
pub const MAX_VOLUMES: usize = 4;
/// Longest mount path, in bytes.
pub const MOUNT_PATH_MAX: usize = 112;
/// Size of a volume's register window; volume `i`'s is `i + 1` windows above the network card's.
pub const BLK_MMIO_SIZE: u64 = 0x1000;

/// A volume: a virtio-blk device behind a virtio-mmio register window, and where the library OS mounts the ext2
/// filesystem on it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VolumeInfo {
    /// Guest-physical address of the register window ([`BLK_MMIO_SIZE`] bytes); 0 for none. With
    /// [`TRANSPORT_PCI`], the address of the device's [`VirtioPciWindows`] instead.
    pub mmio_phys: u64,
    /// Bytes on the device.
    pub capacity: u64,
    pub mount_len: u32,
    /// How the device is reached, as [`NetInfo::transport`].
    pub transport: u32,
    /// An absolute, normalised path (not "/"), `mount_len` bytes of UTF-8.
    pub mount: [u8; MOUNT_PATH_MAX],
}

impl Default for VolumeInfo {
    fn default() -> Self {
        VolumeInfo { mmio_phys: 0, capacity: 0, mount_len: 0, transport: 0, mount: [0; MOUNT_PATH_MAX] }
    }
}

impl VolumeInfo {
    pub fn mount_path(&self) -> Option<&str> {
        let len = (self.mount_len as usize).min(MOUNT_PATH_MAX);
        core::str::from_utf8(&self.mount[..len]).ok()
    }
}

impl BootInfo {
    pub fn is_valid(&self) -> bool {
        self.magic == BOOT_MAGIC && self.version == BOOT_VERSION
    }

    pub fn traces_syscalls(&self) -> bool {
        self.flags & BOOT_FLAG_TRACE_SYSCALLS != 0
    }
}
